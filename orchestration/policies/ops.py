"""The archive job's ops and their config: thin wiring over ``archive`` (Dagster runs) and
``record_archive`` (record-store history), with progress and results shown as step metadata."""

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from orchestration.policies import archive, record_archive
from orchestration.policies.archive import default_archive_dir
from orchestration.policies.progress import Progress
from orchestration.policies.record_archive import TABLES
from resources.bigquery import PlatformBigQueryResource
from resources.db import as_utc
from resources.environments import DEFAULT_ENVIRONMENT, resolve_environment
from resources.record_store import RecordStoreResource


class ArchiveConfig(dg.Config):
    retention_days: int = Field(default=30, ge=1, description="Keep runs newer than this.")
    archive_dir: str = Field(
        default_factory=default_archive_dir,
        description="Where compressed JSONL archives go ($PLATFORM_OPS_ARCHIVE_DIR).",
    )
    cutoff: str | None = Field(
        default=None,
        description="Archive runs last updated before this UTC ISO time instead of "
        "now - retention_days (e.g. to catch up after a long outage).",
    )
    max_runs: int = Field(default=10_000, ge=1, description="Runs archived per pass at most.")
    batch_size: int = Field(
        default=1000, ge=1, le=10_000, description="Record-store rows per exported file."
    )
    bigquery_dataset: str | None = Field(
        default=None,
        description="Also load everything archived into <dataset>.<prefix>records in BigQuery "
        "(verified by counting there before deleting). Unset: local files only.",
    )
    bigquery_table_prefix: str = Field(default="archive_", description="BigQuery table prefix.")
    bigquery_environment: str = Field(
        default=DEFAULT_ENVIRONMENT,
        description="Environment whose GCP project holds the dataset (the emulator when "
        "BIGQUERY_EMULATOR_HOST is set).",
    )


def cutoff_of(config: ArchiveConfig, now: datetime | None = None) -> datetime:
    if config.cutoff:
        cutoff = datetime.fromisoformat(config.cutoff)
        return as_utc(cutoff)
    return (now or datetime.now(UTC)) - timedelta(days=config.retention_days)


@contextlib.contextmanager
def _sink(config: ArchiveConfig, bq: PlatformBigQueryResource) -> Iterator[Any]:
    """The BigQuery sink when a dataset is configured, else None."""
    if not config.bigquery_dataset:
        yield None
        return
    from orchestration.policies.bigquery_sink import BigQuerySink

    environment = resolve_environment(config.bigquery_environment, confirm_prod=True)
    with bq.get_client(environment) as client:  # insert-only: no prod confirmation needed
        yield BigQuerySink(client, config.bigquery_dataset, config.bigquery_table_prefix)


@dg.op(description="Exports finished runs older than the retention, verifies, then deletes them.")
def archive_old_runs(
    context: dg.OpExecutionContext,
    config: ArchiveConfig,
    policies_bigquery: PlatformBigQueryResource,
) -> None:
    cutoff = cutoff_of(config)
    root = Path(config.archive_dir)
    candidates = archive.archivable_runs(context.instance, cutoff, config.max_runs)
    context.log.info(f"{len(candidates)} run(s) finished before {cutoff.isoformat()} to archive")
    progress = Progress(len(candidates), context.log.info, "archive")
    with _sink(config, policies_bigquery) as sink:
        report = archive.archive_runs(
            context.instance, root, cutoff, limit=config.max_runs, on_progress=progress.tick,
            sink=sink,
        )  # fmt: skip
    context.add_output_metadata(
        {
            "archived": len(report.archived),
            "failed": dg.MetadataValue.json(report.failed),
            "bytes_written": report.bytes_written,
            "archive_dir": dg.MetadataValue.path(str(root)),
            "cutoff": cutoff.isoformat(),
            "bigquery_rows": sink.rows_loaded if sink else 0,
            **progress.metadata(),
        }
    )
    if report.failed:
        raise dg.Failure(
            description=f"{len(report.failed)} run(s) did not verify and were kept: "
            + ", ".join(sorted(report.failed)),
            metadata={"failed": dg.MetadataValue.json(report.failed)},
        )


@dg.op(
    description="Exports final trigger-history and command-run rows older than the retention "
    "from the record store in id batches, verifies each file, then deletes exactly those rows."
)
def archive_old_records(
    context: dg.OpExecutionContext,
    config: ArchiveConfig,
    record_store: RecordStoreResource,
    policies_bigquery: PlatformBigQueryResource,
) -> None:
    cutoff = cutoff_of(config)
    root = Path(config.archive_dir)
    engine = record_store.engine()
    counts = {t.name: record_archive.count_archivable(engine, t, cutoff) for t in TABLES}
    context.log.info(f"record rows finished before {cutoff.isoformat()} to archive: {counts}")
    progress = Progress(sum(counts.values()), context.log.info, "archive records")
    try:
        with _sink(config, policies_bigquery) as sink:
            report = record_archive.archive_records(
                engine, root, cutoff, batch_size=config.batch_size, sink=sink,
                on_progress=progress.tick,
                on_quarantine=lambda q: context.log.warning(q.message()),
            )  # fmt: skip
    except record_archive.RecordArchiveError as exc:
        raise dg.Failure(
            description=f"record archive stopped, nothing unverified was deleted: {exc}",
            allow_retries=False,
        ) from exc
    context.add_output_metadata(
        {
            "archived": report.archived,
            "tables": dg.MetadataValue.json({n: t.summary() for n, t in report.tables.items()}),
            "bytes_written": report.bytes_written,
            "archive_dir": dg.MetadataValue.path(str(root / "records")),
            "cutoff": cutoff.isoformat(),
            "bigquery_rows": sink.rows_loaded if sink else 0,
            # damaged .pending files moved to <archive_dir>/quarantine (see docs/policies.md)
            "quarantined": len(report.quarantined),
            "quarantined_files": dg.MetadataValue.json([q.as_dict() for q in report.quarantined]),
            **progress.metadata(),
        }
    )
