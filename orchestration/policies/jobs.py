"""The daily run-history archive job and its schedule (on by default, 30-day retention).

The schedule lives beside its job: ``policies/schedules.py`` is the code location's one way to
declare a schedule (``cron_schedule``, ``partitioned_schedule``), used here like everywhere else.
"""

import dagster as dg

from orchestration.policies.ops import archive_old_records, archive_old_runs
from orchestration.policies.recipes import job_settings
from orchestration.policies.schedules import cron_schedule


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


archive_schedule = cron_schedule(
    archive_run_history,
    cron="30 3 * * *",
    description="Daily at 03:30 UTC: archive runs older than 30 days.",
)
