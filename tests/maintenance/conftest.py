"""Maintenance fixtures: the BigQuery emulator as a real subprocess (one per session)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from dev.bigquery_emulator import EMULATOR_HOST_ENV, Emulator, bigquery_emulator

QUOTA_SCHEMA = [
    bigquery.SchemaField("org_slug", "STRING"),
    bigquery.SchemaField("usage_date", "DATE"),
    bigquery.SchemaField("requests", "INT64"),
]


@pytest.fixture(scope="session")
def bq_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """``bqemulator`` on free loopback ports, spatial extension placed by our own code."""
    with bigquery_emulator(tmp_path_factory.mktemp("bqemulator")) as emulator:
        yield emulator


@pytest.fixture
def bq_env(monkeypatch: pytest.MonkeyPatch, bq_emulator: Emulator) -> Emulator:
    monkeypatch.setenv(EMULATOR_HOST_ENV, bq_emulator.host)
    return bq_emulator


def emulator_client(emulator: Emulator) -> bigquery.Client:
    return bigquery.Client(
        project=emulator.project,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": emulator.endpoint},
    )


@pytest.fixture
def bq_client(bq_emulator: Emulator) -> Iterator[bigquery.Client]:
    client = emulator_client(bq_emulator)
    yield client
    client.close()


@pytest.fixture
def quota_dataset(bq_client: bigquery.Client) -> str:
    """A fresh dataset of its own holding an empty ``org_quota_usage`` table."""
    dataset = f"quota_{uuid.uuid4().hex[:10]}"
    bq_client.create_dataset(dataset)
    table = bigquery.Table(f"{bq_client.project}.{dataset}.org_quota_usage", schema=QUOTA_SCHEMA)
    bq_client.create_table(table)
    return dataset


def insert_usage(
    client: bigquery.Client, dataset: str, slot: dt.date, ages_days: list[int]
) -> None:
    """One row per age: row ``o<i>`` dated ``slot - age`` days (DML, as the emulator prefers)."""
    values = ", ".join(
        f"('o{i}-{age}', DATE '{(slot - dt.timedelta(days=age)).isoformat()}', {i})"
        for i, age in enumerate(ages_days)
    )
    client.query(
        f"INSERT INTO `{client.project}.{dataset}.org_quota_usage` "
        f"(org_slug, usage_date, requests) VALUES {values}"
    ).result()


def remaining_dates(client: bigquery.Client, dataset: str) -> list[dt.date]:
    rows = client.query(
        f"SELECT usage_date FROM `{client.project}.{dataset}.org_quota_usage` ORDER BY usage_date"
    ).result()
    return [row["usage_date"] for row in rows]
