"""The five maintenance jobs: one op each, one HTTP/BigQuery call per run, partitioned by slot.

Daily jobs are partitioned by UTC day and ``quota_monthly`` by UTC month (see ``partitions.py``),
so the UI's partition view shows each slot's status and a missed slot is re-run or backfilled
from there. Declared through ``recipes.job_settings`` (maintenance recipe: three step attempts;
every call is idempotent per slot, so a retried step cannot apply a slot twice).
"""

import dagster as dg

from orchestration.maintenance.ops import (
    cleanup_stale_counters,
    delete_expired_quota_records,
    process_daily_alerts,
    reset_daily_quota,
    reset_monthly_quota,
)
from orchestration.maintenance.partitions import DAILY, MONTHLY
from orchestration.policies.recipes import job_settings


def _settings(
    name: str, description: str, partitions_def: dg.PartitionsDefinition
) -> dict[str, object]:
    return job_settings(
        name,
        description=description,
        recipe="maintenance",
        kind=name,
        partitions_def=partitions_def,
    )


@dg.job(
    **_settings(
        "quota_reset",
        "Daily quota reset for a UTC day (POST /admin/quota/reset-daily).",
        DAILY,
    )
)
def quota_reset_job() -> None:
    reset_daily_quota()


@dg.job(
    **_settings(
        "quota_cleanup",
        "Deletes BigQuery quota records older than the retention window (default 90d) before "
        "the UTC day.",
        DAILY,
    )
)
def quota_cleanup_job() -> None:
    delete_expired_quota_records()


@dg.job(
    **_settings(
        "stale_cleanup",
        "Fixes stuck concurrent-usage counters, once per UTC day "
        "(POST /admin/quota/cleanup-stale).",
        DAILY,
    )
)
def stale_cleanup_job() -> None:
    cleanup_stale_counters()


@dg.job(
    **_settings(
        "alerts",
        "Cost alerts of every org for a UTC day (POST /admin/alerts/process-all).",
        DAILY,
    )
)
def alerts_job() -> None:
    process_daily_alerts()


@dg.job(
    **_settings(
        "quota_monthly",
        "Monthly quota reset for a UTC month (POST /admin/quota/reset-monthly).",
        MONTHLY,
    )
)
def quota_monthly_job() -> None:
    reset_monthly_quota()


JOBS = [quota_reset_job, quota_cleanup_job, stale_cleanup_job, alerts_job, quota_monthly_job]
