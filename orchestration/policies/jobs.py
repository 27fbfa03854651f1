"""The daily run-history archive job (30-day retention); its schedule is in ``schedules.py``."""

import dagster as dg

from orchestration.policies.ops import archive_old_records, archive_old_runs
from orchestration.policies.recipes import job_settings


@dg.job(
    **job_settings(
        "archive_run_history",
        description="Moves finished runs older than the retention (30 days) out of the Dagster "
        "instance, and final trigger-history / command-run rows out of the record store, into "
        "verified compressed JSONL files (and BigQuery when configured); read a run back with "
        "`platform-ops archive show RUN_ID`. Set the same config on both ops.",
        # Safe to retry a step: an export overwrites its file and nothing unverified is deleted.
        recipe="maintenance",
        kind="archive",
    )
)
def archive_run_history() -> None:
    archive_old_runs()
    archive_old_records()
