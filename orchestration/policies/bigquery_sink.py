"""Optional BigQuery copy of archived history: one table, loaded and counted before any delete.

When ``ArchiveConfig.bigquery_dataset`` is set, every batch the archive exports (a Dagster run
with its event log, or a batch of trigger-history / command-run rows) is also inserted into
``<dataset>.<prefix>records`` with the official client, and the ids are counted there before the
source rows are deleted. One generic table (source, key, finished_at, payload JSON) keeps the
archive's schema out of BigQuery's way: the payload is exactly the row the JSONL file holds.

Idempotent for re-runs after a crash: a batch whose keys are all present already is not inserted
again; a partly present batch (a streaming insert that half failed) has those keys deleted with
DML first. Uses streaming ``insert_rows_json`` (what the emulator supports) in chunks well below
the 10 MB request limit.

A document larger than ``PART_BYTES`` (a run with a long event log: BigQuery refuses a streamed
row over 10 MB) is stored as parts keyed ``<id>:<n>/<total>``, each holding the next slice of the
JSON text; concatenating ``payload`` in ``n`` order gives the document back (``read_back``).
"""

import json
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from google.cloud import bigquery

from orchestration.policies.record_archive import RecordArchiveError

SCHEMA = [
    bigquery.SchemaField("source", "STRING", mode="REQUIRED"),
    bigquery.SchemaField("key", "STRING", mode="REQUIRED"),
    bigquery.SchemaField("finished_at", "TIMESTAMP"),
    bigquery.SchemaField("archived_at", "TIMESTAMP", mode="REQUIRED"),
    bigquery.SchemaField("payload", "STRING", mode="REQUIRED"),
]
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,1000}")
CHUNK_BYTES = 4_000_000
CHUNK_ROWS = 500
PART_BYTES = 2_000_000  # json.dumps output is ASCII: characters are bytes


class BigQuerySink:
    """Insert-then-count into ``<project>.<dataset>.<prefix>records``."""

    def __init__(self, client: bigquery.Client, dataset: str, table_prefix: str = "archive_"):
        for name in (dataset, f"{table_prefix}records"):
            if not _NAME.fullmatch(name):
                raise RecordArchiveError(f"invalid BigQuery dataset/table name {name!r}")
        self.client = client
        self.table_id = f"{client.project}.{dataset}.{table_prefix}records"
        self.dataset = dataset
        self._ready = False
        self.rows_loaded = 0

    def ensure_table(self) -> None:
        if self._ready:
            return
        self.client.create_dataset(self.dataset, exists_ok=True)
        self.client.create_table(bigquery.Table(self.table_id, schema=SCHEMA), exists_ok=True)
        self._ready = True

    def count(self, source: str, keys: Sequence[str]) -> int:
        job = self.client.query(
            f"SELECT COUNT(*) AS n FROM `{self.table_id}` WHERE source = @source "
            "AND key IN UNNEST(@keys)",
            job_config=_params(source, keys),
        )
        return int(next(iter(job.result()))["n"])

    def _delete(self, source: str, keys: Sequence[str]) -> None:
        self.client.query(
            f"DELETE FROM `{self.table_id}` WHERE source = @source AND key IN UNNEST(@keys)",
            job_config=_params(source, keys),
        ).result()

    def load(self, source: str, rows: Sequence[dict[str, Any]]) -> None:
        """Make BigQuery hold exactly ``rows`` for their keys, or raise (nothing is deleted)."""
        if not rows:
            return
        self.ensure_table()
        now = datetime.now(UTC).isoformat()
        records = [
            {
                "source": source,
                "key": key,
                "finished_at": row.get("finished_at"),
                "archived_at": now,
                "payload": part,
            }
            for row in rows
            for key, part in _parts(str(row["id"]), json.dumps(row, sort_keys=True))
        ]
        keys = [r["key"] for r in records]
        present = self.count(source, keys)
        if present == len(keys):
            return  # loaded by an interrupted pass already
        if present:
            self._delete(source, keys)
        for chunk in _chunks(records):
            errors = self.client.insert_rows_json(self.table_id, chunk)
            if errors:
                raise RecordArchiveError(f"BigQuery refused rows of {source}: {errors[:3]}")
        loaded = self.count(source, keys)
        if loaded != len(keys):
            raise RecordArchiveError(
                f"BigQuery holds {loaded} of {len(keys)} {source} rows after loading; "
                "nothing deleted"
            )
        self.rows_loaded += len(rows)

    def read_back(self, source: str, key: str) -> Any:
        """The document archived under ``key``, its parts joined (None when absent)."""
        job = self.client.query(
            f"SELECT key, payload FROM `{self.table_id}` WHERE source = @source "
            "AND (key = @key OR STARTS_WITH(key, CONCAT(@key, ':')))",
            job_config=bigquery.QueryJobConfig(
                query_parameters=[
                    bigquery.ScalarQueryParameter("source", "STRING", source),
                    bigquery.ScalarQueryParameter("key", "STRING", key),
                ]
            ),
        )
        found = {row["key"]: row["payload"] for row in job.result()}
        if not found:
            return None
        if key in found:
            return json.loads(found[key])
        order = sorted(found, key=lambda k: int(k.rsplit(":", 1)[1].split("/")[0]))
        return json.loads("".join(found[k] for k in order))


def _params(source: str, keys: Sequence[str]) -> bigquery.QueryJobConfig:
    return bigquery.QueryJobConfig(
        query_parameters=[
            bigquery.ScalarQueryParameter("source", "STRING", source),
            bigquery.ArrayQueryParameter("keys", "STRING", list(keys)),
        ]
    )


def _parts(key: str, text: str) -> list[tuple[str, str]]:
    """``[(key, text)]``, or ``PART_BYTES`` slices keyed ``<key>:<n>/<total>`` when larger."""
    if len(text) <= PART_BYTES:
        return [(key, text)]
    slices = [text[i : i + PART_BYTES] for i in range(0, len(text), PART_BYTES)]
    return [(f"{key}:{n}/{len(slices)}", part) for n, part in enumerate(slices, 1)]


def _chunks(records: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    size = 0
    for record in records:
        length = len(record["payload"]) + 200
        if chunk and (size + length > CHUNK_BYTES or len(chunk) >= CHUNK_ROWS):
            yield chunk
            chunk, size = [], 0
        chunk.append(record)
        size += length
    if chunk:
        yield chunk
