"""The daily run-history archive job and its schedule (on by default, 30-day retention)."""

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
from pydantic import Field

from orchestration.policies import archive
from orchestration.policies.progress import Progress
from orchestration.policies.recipes import recipe

ARCHIVE_DIR_ENV = "PLATFORM_OPS_ARCHIVE_DIR"


def default_archive_dir() -> str:
    """``$PLATFORM_OPS_ARCHIVE_DIR``, else ``$DAGSTER_HOME/archive``."""
    if os.environ.get(ARCHIVE_DIR_ENV):
        return os.environ[ARCHIVE_DIR_ENV]
    return str(Path(os.environ.get("DAGSTER_HOME", ".dagster_home")) / "archive")


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


def cutoff_of(config: ArchiveConfig, now: datetime | None = None) -> datetime:
    if config.cutoff:
        cutoff = datetime.fromisoformat(config.cutoff)
        return cutoff if cutoff.tzinfo else cutoff.replace(tzinfo=UTC)
    return (now or datetime.now(UTC)) - timedelta(days=config.retention_days)


@dg.op(description="Exports finished runs older than the retention, verifies, then deletes them.")
def archive_old_runs(context: dg.OpExecutionContext, config: ArchiveConfig) -> None:
    cutoff = cutoff_of(config)
    root = Path(config.archive_dir)
    candidates = archive.archivable_runs(context.instance, cutoff, config.max_runs)
    context.log.info(f"{len(candidates)} run(s) finished before {cutoff.isoformat()} to archive")
    progress = Progress(len(candidates), context.log.info, "archive")
    report = archive.archive_runs(
        context.instance, root, cutoff, limit=config.max_runs, on_progress=progress.tick
    )
    context.add_output_metadata(
        {
            "archived": len(report.archived),
            "failed": dg.MetadataValue.json(report.failed),
            "bytes_written": report.bytes_written,
            "archive_dir": dg.MetadataValue.path(str(root)),
            "cutoff": cutoff.isoformat(),
            **progress.metadata(),
        }
    )
    if report.failed:
        raise dg.Failure(
            description=f"{len(report.failed)} run(s) did not verify and were kept: "
            + ", ".join(sorted(report.failed)),
            metadata={"failed": dg.MetadataValue.json(report.failed)},
        )


@dg.job(
    name="archive_run_history",
    description="Moves finished runs older than the retention (30 days) out of the Dagster "
    "instance into verified compressed JSONL files; read one back with "
    "`platform-ops archive show RUN_ID`.",
    executor_def=dg.in_process_executor,
    **recipe("maintenance").job_kwargs(),
)
def archive_run_history() -> None:
    archive_old_runs()


archive_schedule = dg.ScheduleDefinition(
    name="archive_run_history_schedule",
    job=archive_run_history,
    cron_schedule="30 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 03:30 UTC: archive runs older than 30 days.",
)
