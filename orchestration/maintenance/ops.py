"""Maintenance ops: one per job, thin wiring over ``platform_calls`` and ``quota_cleanup``.

Every op resolves its slot (``partitions.resolve_day`` / ``resolve_month``): the run's partition
(schedules and backfills always set one), else the op config's ``date`` / ``month`` (a run launched
without a partition), else today / this month; a config that contradicts the partition fails
before any call. The op tags the run with the slot, makes one idempotent call and records what
the platform reported as metadata.
"""

import dagster as dg
from pydantic import Field

from orchestration.maintenance import platform_calls, quota_cleanup
from orchestration.maintenance.partitions import (
    SLOT_TAG,
    parse_day,
    resolve_day,
    resolve_month,
)
from orchestration.maintenance.partitions import utc_now as _utc_now
from orchestration.tags import ENVIRONMENT_TAG
from resources.bigquery import PlatformBigQueryResource
from resources.environment import PlatformEnvironment
from resources.platform_api import PlatformApiResource


class DaySlotConfig(dg.Config):
    date: str | None = Field(
        default=None,
        description="UTC day (YYYY-MM-DD) of a run launched without a partition; empty: today. "
        "A partitioned run's day is its partition (leave this empty, or equal to it).",
    )


class MonthSlotConfig(dg.Config):
    month: str | None = Field(
        default=None,
        description="UTC month (YYYY-MM) of a run launched without a partition; empty: this "
        "month. A partitioned run's month is its partition (leave this empty, or equal to it).",
    )


class QuotaCleanupConfig(DaySlotConfig):
    retention_days: int = Field(
        default=quota_cleanup.DEFAULT_RETENTION_DAYS,
        description=f"Keep this many days before the slot; below "
        f"{quota_cleanup.MIN_RETENTION_DAYS} is refused.",
    )
    dataset: str = Field(default=quota_cleanup.DEFAULT_DATASET, description="BigQuery dataset.")
    table: str = Field(default=quota_cleanup.DEFAULT_TABLE, description="BigQuery table.")
    date_column: str = Field(
        default=quota_cleanup.DEFAULT_DATE_COLUMN, description="DATE column the window applies to."
    )


def _partition(context: dg.OpExecutionContext) -> str | None:
    return context.partition_key if context.has_partition_key else None


def _tag_run(context: dg.OpExecutionContext, slot: str, environment: str) -> None:
    """Put slot and environment on the run (``platform/slot`` equals ``dagster/partition`` when
    the run has one, and is the only record of the slot when it has none)."""
    wanted = {SLOT_TAG: slot, ENVIRONMENT_TAG: environment}
    missing = {k: v for k, v in wanted.items() if context.run.tags.get(k) != v}
    if missing:
        context.instance.add_run_tags(context.run_id, missing)


def _call_platform(
    context: dg.OpExecutionContext,
    call: platform_calls.PlatformCall,
    slot: str,
    environment: PlatformEnvironment,
    platform_api: PlatformApiResource,
) -> None:
    env = environment.environment
    _tag_run(context, slot, env.name)
    context.log.info(f"{call.job}: {call.endpoint} for {slot} on environment '{env.name}'")
    with platform_api.client(on_retry=context.log.warning) as client:
        body = platform_calls.run_call(client, call, slot)
    counts = {k: v for k, v in body.items() if isinstance(v, int) and not isinstance(v, bool)}
    context.log.info(f"{call.job} for {slot}: {counts}")
    context.add_output_metadata({"slot": slot, "environment": env.name, **counts})


@dg.op(description="POST /admin/quota/reset-daily for the slot's date.")
def reset_daily_quota(
    context: dg.OpExecutionContext,
    config: DaySlotConfig,
    environment: PlatformEnvironment,
    platform_api: PlatformApiResource,
) -> None:
    slot = resolve_day(_partition(context), config.date)
    _call_platform(context, platform_calls.QUOTA_RESET, slot, environment, platform_api)


@dg.op(description="POST /admin/quota/cleanup-stale: zero stuck concurrent-usage counters.")
def cleanup_stale_counters(
    context: dg.OpExecutionContext,
    config: DaySlotConfig,
    environment: PlatformEnvironment,
    platform_api: PlatformApiResource,
) -> None:
    slot = resolve_day(_partition(context), config.date)
    _call_platform(context, platform_calls.STALE_CLEANUP, slot, environment, platform_api)


@dg.op(description="POST /admin/alerts/process-all for the slot's date.")
def process_daily_alerts(
    context: dg.OpExecutionContext,
    config: DaySlotConfig,
    environment: PlatformEnvironment,
    platform_api: PlatformApiResource,
) -> None:
    slot = resolve_day(_partition(context), config.date)
    _call_platform(context, platform_calls.ALERTS, slot, environment, platform_api)


@dg.op(description="POST /admin/quota/reset-monthly for the slot's month.")
def reset_monthly_quota(
    context: dg.OpExecutionContext,
    config: MonthSlotConfig,
    environment: PlatformEnvironment,
    platform_api: PlatformApiResource,
) -> None:
    slot = resolve_month(_partition(context), config.month)
    _call_platform(context, platform_calls.QUOTA_MONTHLY, slot, environment, platform_api)


@dg.op(description="BigQuery DML DELETE of quota records older than the retention window.")
def delete_expired_quota_records(
    context: dg.OpExecutionContext,
    config: QuotaCleanupConfig,
    environment: PlatformEnvironment,
    maintenance_bigquery: PlatformBigQueryResource,
) -> None:
    env = environment.environment
    now = _utc_now()
    slot = resolve_day(_partition(context), config.date, now)
    _tag_run(context, slot, env.name)
    project = maintenance_bigquery.project_for(env)
    target = "emulator" if maintenance_bigquery.emulator_endpoint() else "GCP"
    with maintenance_bigquery.get_client(env) as client:
        result = quota_cleanup.delete_old_records(
            client,
            project=project,
            dataset=config.dataset,
            table=config.table,
            date_column=config.date_column,
            slot=parse_day(slot),
            retention_days=config.retention_days,
            today=now.date(),
        )
    context.log.info(
        f"quota_cleanup for {slot}: deleted {result.rows_deleted} row(s) from {result.table} "
        f"with {config.date_column} < {result.cutoff.isoformat()} ({target})"
    )
    context.add_output_metadata(
        {
            "slot": slot,
            "environment": env.name,
            "bigquery": target,
            "table": result.table,
            "retention_days": result.retention_days,
            "cutoff": result.cutoff.isoformat(),
            "rows_deleted": result.rows_deleted,
            "bigquery_job_id": result.job_id or "",
        }
    )
