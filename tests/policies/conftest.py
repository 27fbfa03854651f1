"""Policies fixtures: BigQuery emulator (shared by import), Dagster instances on both storages."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

from tests.maintenance.conftest import bq_client, bq_emulator, bq_env  # noqa: F401
from tests.support.postgres import admin_engine, fresh_database


@pytest.fixture(scope="module")
def dagster_pg_url(pg_url: str) -> Iterator[str]:
    """A fresh database for this module's Dagster instances (wiped per test), dropped after."""
    with fresh_database(pg_url, "dagster_policies") as url:
        yield url


@dataclass
class DagsterStorage:
    """A Dagster instance under test and what its storage keeps of a run outside Dagster's API.

    ``pg_url`` is None on SQLite storage. ``leftovers`` answers "is anything of this run still
    stored?" from the storage itself, so a deletion that Dagster's API merely hides is caught.
    """

    instance: dg.DagsterInstance
    pg_url: str | None

    @property
    def kind(self) -> str:
        return "sqlite" if self.pg_url is None else "postgres"

    def leftovers(self, run_id: str) -> dict[str, int]:
        """Rows (PostgreSQL: runs, run_tags, event_logs) or files (SQLite: the event-log shard)."""
        if self.pg_url is None:
            shard = Path(self.instance.event_log_storage.path_for_shard(run_id))
            return {"shard_file": int(shard.exists())}
        engine = admin_engine(self.pg_url)
        try:
            with engine.connect() as conn:
                return {
                    table: conn.execute(
                        sa.text(f"SELECT count(*) FROM {table} WHERE run_id = :run_id"),
                        {"run_id": run_id},
                    ).scalar_one()
                    for table in ("runs", "run_tags", "event_logs")
                }
        finally:
            engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def dagster_storage(request: pytest.FixtureRequest) -> Iterator[DagsterStorage]:
    """A Dagster instance on SQLite (the local default) and on PostgreSQL (production's
    ``storage: postgres`` from deploy/dagster.yaml), each starting with no runs."""
    if request.param == "sqlite":
        with dg.instance_for_test() as instance:
            yield DagsterStorage(instance, None)
        return
    url = request.getfixturevalue("dagster_pg_url")
    overrides = {"storage": {"postgres": {"postgres_url": url}}}
    with dg.instance_for_test(overrides=overrides) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        instance.wipe()  # the module shares one database; each test starts from no runs
        yield DagsterStorage(instance, url)
