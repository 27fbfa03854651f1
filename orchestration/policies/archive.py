"""Run-history archive: export old runs (record + event log) to compressed JSONL, verify, delete.

Open-source Dagster has no run retention, so the instance grows forever. Each run becomes one
``<dir>/runs/YYYY/MM/<run_id>.jsonl.gz`` (serialized with Dagster's own serdes, so it reads back
as the same objects), written to a temporary name, fsynced and renamed; it is read back and
checked before the run is deleted. A crash anywhere leaves the run either untouched or exported
and still present, and the next pass exports it again (idempotent overwrite) and deletes it:
nothing is lost, nothing is deleted unverified.
"""

import glob
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg

from orchestration.policies import checked_jsonl

FINISHED = [
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
]
FORMAT = "platform-ops-run-archive/1"
ARCHIVE_DIR_ENV = "PLATFORM_OPS_ARCHIVE_DIR"


def default_archive_dir() -> str:
    """Where archives go unless told: ``$PLATFORM_OPS_ARCHIVE_DIR``, else ``$DAGSTER_HOME/archive``.

    One answer for the archive job's default config and ``platform-ops archive`` reading back.
    """
    if os.environ.get(ARCHIVE_DIR_ENV):
        return os.environ[ARCHIVE_DIR_ENV]
    return str(Path(os.environ.get("DAGSTER_HOME", ".dagster_home")) / "archive")


class ArchiveError(Exception):
    """An export that did not verify; the run stays in the instance."""


@dataclass
class ArchivedRun:
    run: dg.DagsterRun
    events: list[dg.EventLogEntry]
    storage_ids: list[int]


@dataclass
class ArchiveReport:
    archived: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    bytes_written: int = 0


def archive_path(root: Path, run_id: str, created: datetime) -> Path:
    return root / "runs" / f"{created:%Y}" / f"{created:%m}" / f"{run_id}.jsonl.gz"


def _lines(run: dg.DagsterRun, records: list) -> Iterator[str]:
    yield json.dumps({"kind": "header", "format": FORMAT, "run_id": run.run_id})
    yield json.dumps({"kind": "run", "run": dg.serialize_value(run)})
    for record in records:
        yield json.dumps(
            {
                "kind": "event",
                "storage_id": record.storage_id,
                "entry": dg.serialize_value(record.event_log_entry),
            }
        )


def export_run(instance: dg.DagsterInstance, run_id: str, root: Path) -> tuple[Path, int]:
    """Write one run's archive atomically; returns its path and event count."""
    record = instance.get_run_record_by_id(run_id)
    if record is None:
        raise ArchiveError(f"run {run_id} not found")
    records = list(instance.get_records_for_run(run_id, ascending=True).records)
    created = record.create_timestamp.astimezone(UTC)
    path = archive_path(root, run_id, created)
    path.parent.mkdir(parents=True, exist_ok=True)
    checked_jsonl.write(path, _lines(record.dagster_run, records), "events", len(records))
    return path, len(records)


def read_archive(path: Path) -> ArchivedRun:
    """Read an archive back, checking its trailer (count and checksum).

    Any damage is an ``ArchiveError`` naming the file (``checked_jsonl.read``), and so is a
    record that passes the checksum but does not deserialize (an edited file): a reader gets one
    clear error, never a bare ``EOFError`` or ``DeserializationError``. The run archive has no
    ``.pending`` stage to resume (a run is exported straight to its final name and deleted from
    the instance only after this read succeeded), so nothing here is quarantined: a damaged
    file of a run still in the instance is overwritten by the next pass's export.
    """
    # Imported here, not at module level: dagster_internals loads Dagster's SQLite storage (with
    # Alembic), which the code location does not otherwise need at load (test_import_cost.py).
    from orchestration.dagster_internals import DeserializationError

    items = checked_jsonl.read(path, FORMAT, "event", "events", ArchiveError)
    try:
        runs = [dg.deserialize_value(i["run"], dg.DagsterRun) for i in items if i["kind"] == "run"]
        events = [i for i in items if i["kind"] == "event"]
        entries = [dg.deserialize_value(i["entry"], dg.EventLogEntry) for i in events]
        storage_ids = [i["storage_id"] for i in events]
    except (DeserializationError, ValueError, KeyError, TypeError, RecursionError) as exc:
        # RecursionError: a serialized value nested deeper than the decoder goes (an edited file)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ArchiveError(f"{path}: a record does not read back as Dagster data: {first}") from exc
    if len(runs) != 1:
        raise ArchiveError(f"{path}: {len(runs)} run records in one archive")
    return ArchivedRun(runs[0], entries, storage_ids)


RUN_ID_RULE = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$"


def is_run_id(value: str) -> bool:
    """Whether ``value`` can be a run id (Dagster's are UUIDs): no path or glob character."""
    return re.fullmatch(RUN_ID_RULE, value) is not None


def find_archive(root: Path, run_id: str) -> Path | None:
    """The archive file of ``run_id``; the id is matched literally, never as a pattern."""
    if not is_run_id(run_id):
        return None
    matches = sorted((root / "runs").glob(f"*/*/{glob.escape(run_id)}.jsonl.gz"))
    return matches[0] if matches else None


def _sink_row(instance: dg.DagsterInstance, back: ArchivedRun) -> dict[str, Any]:
    """The run as one JSON document for the BigQuery copy (the same content as the file)."""
    record = instance.get_run_record_by_id(back.run.run_id)
    finished = record.update_timestamp.astimezone(UTC).isoformat() if record else None
    return {
        "id": back.run.run_id,
        "finished_at": finished,
        "run": dg.serialize_value(back.run),
        "events": [
            {"storage_id": sid, "entry": dg.serialize_value(entry)}
            for sid, entry in zip(back.storage_ids, back.events, strict=True)
        ],
    }


def archivable_runs(instance: dg.DagsterInstance, cutoff: datetime, limit: int) -> list[str]:
    """Finished runs last updated before ``cutoff``, oldest first."""
    records = instance.get_run_records(
        dg.RunsFilter(statuses=FINISHED, updated_before=cutoff), limit=limit, ascending=True
    )
    return [r.dagster_run.run_id for r in records]


def release_sqlite_shard(instance: dg.DagsterInstance, run_id: str) -> int:
    """Remove a deleted run's event-log file on SQLite storage; returns the bytes freed.

    Dagster's SQLite event log keeps one database file per run (``storage/<run_id>.db``, ~100 KB
    even when nearly empty) and ``delete_run`` empties it but leaves it on disk: without this an
    archived instance would not shrink at all. PostgreSQL storage has no such files.
    """
    from orchestration.dagster_internals import forget_sqlite_shard  # see read_archive

    freed = 0
    for path in forget_sqlite_shard(instance, run_id):
        if path.exists():
            freed += path.stat().st_size
            path.unlink()
    return freed


def archive_runs(
    instance: dg.DagsterInstance,
    root: Path,
    cutoff: datetime,
    *,
    limit: int = 1000,
    on_progress: Callable[[int], None] | None = None,
    after_export: Callable[[str], None] | None = None,
    sink: Any = None,
) -> ArchiveReport:
    """Export, verify and delete up to ``limit`` runs older than ``cutoff``.

    ``sink`` (``bigquery_sink.BigQuerySink``) also receives each verified run before the delete.
    """
    report = ArchiveReport()
    for run_id in archivable_runs(instance, cutoff, limit):
        try:
            path, count = export_run(instance, run_id, root)
            back = read_archive(path)
            if back.run.run_id != run_id or len(back.events) != count:
                raise ArchiveError(f"{path}: read back {len(back.events)} events, wrote {count}")
            if sink is not None:
                sink.load("dagster_runs", [_sink_row(instance, back)])
            if after_export:
                after_export(run_id)  # test hook: a crash between export and delete
            instance.delete_run(run_id)
            release_sqlite_shard(instance, run_id)
            report.archived.append(run_id)
            report.bytes_written += path.stat().st_size
        except ArchiveError as exc:
            report.failed[run_id] = str(exc)
        if on_progress:
            on_progress(1)
    return report
