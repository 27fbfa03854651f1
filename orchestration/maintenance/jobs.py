"""The five maintenance jobs: one op each, in-process (one HTTP/BigQuery call per run)."""

import dagster as dg

from orchestration.maintenance.ops import (
    cleanup_stale_counters,
    delete_expired_quota_records,
    process_daily_alerts,
    reset_daily_quota,
    reset_monthly_quota,
)
from orchestration.policies.recipes import recipe
from orchestration.tags import KIND_TAG

EXECUTOR = dg.in_process_executor


@dg.job(
    name="quota_reset",
    description="Daily quota reset for a UTC date (POST /admin/quota/reset-daily).",
    **recipe("maintenance").job_kwargs(**{KIND_TAG: "quota_reset"}),
    executor_def=EXECUTOR,
)
def quota_reset_job() -> None:
    reset_daily_quota()


@dg.job(
    name="quota_cleanup",
    description="Deletes BigQuery quota records older than the retention window (default 90d).",
    **recipe("maintenance").job_kwargs(**{KIND_TAG: "quota_cleanup"}),
    executor_def=EXECUTOR,
)
def quota_cleanup_job() -> None:
    delete_expired_quota_records()


@dg.job(
    name="stale_cleanup",
    description="Fixes stuck concurrent-usage counters (POST /admin/quota/cleanup-stale).",
    **recipe("maintenance").job_kwargs(**{KIND_TAG: "stale_cleanup"}),
    executor_def=EXECUTOR,
)
def stale_cleanup_job() -> None:
    cleanup_stale_counters()


@dg.job(
    name="alerts",
    description="Cost alerts of every org for a UTC date (POST /admin/alerts/process-all).",
    **recipe("maintenance").job_kwargs(**{KIND_TAG: "alerts"}),
    executor_def=EXECUTOR,
)
def alerts_job() -> None:
    process_daily_alerts()


@dg.job(
    name="quota_monthly",
    description="Monthly quota reset for a UTC month (POST /admin/quota/reset-monthly).",
    **recipe("maintenance").job_kwargs(**{KIND_TAG: "quota_monthly"}),
    executor_def=EXECUTOR,
)
def quota_monthly_job() -> None:
    reset_monthly_quota()


JOBS = [quota_reset_job, quota_cleanup_job, stale_cleanup_job, alerts_job, quota_monthly_job]
