"""The policies area's schedule: the daily run-history archive, on by default."""

from orchestration.policies.jobs import archive_run_history
from orchestration.policies.scheduling import cron_schedule

archive_schedule = cron_schedule(
    archive_run_history,
    cron="30 3 * * *",
    description="Daily at 03:30 UTC: archive runs older than 30 days.",
)
