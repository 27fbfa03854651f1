"""One RUNNING-by-default UTC schedule per maintenance job, built from its partitions.

Each tick launches the run for the partition that begins at (or before) the tick (``end_offset=1``,
see ``partitions.py``) with the partition key as run key, so a re-evaluated tick never launches
a second run for the same slot.

Catch-up after downtime launches only the latest missed slot: every shipped instance file sets
``scheduler.config.max_catchup_runs: 1`` (Dagster's default, 5, would launch up to five
partitions of a schedule that fell behind). A daily reset/alert pass for days already past would
be stale; an operator backfills missed days from the partition view if they are wanted.
"""

from orchestration.maintenance import jobs
from orchestration.policies.scheduling import partitioned_schedule

SCHEDULES = [
    partitioned_schedule(
        jobs.quota_reset_job, hour=0, description="quota_reset at 00:00 UTC for that day."
    ),
    partitioned_schedule(
        jobs.quota_cleanup_job, hour=1, description="quota_cleanup at 01:00 UTC for that day."
    ),
    partitioned_schedule(
        jobs.stale_cleanup_job, hour=2, description="stale_cleanup at 02:00 UTC for that day."
    ),
    partitioned_schedule(jobs.alerts_job, hour=8, description="alerts at 08:00 UTC for that day."),
    partitioned_schedule(
        jobs.quota_monthly_job,
        hour=0,
        minute=5,
        day_of_month=1,
        description="quota_monthly at 00:05 UTC on the 1st for the month that begins.",
    ),
]
