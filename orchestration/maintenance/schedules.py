"""One RUNNING-by-default UTC schedule per maintenance job.

Each tick puts its slot (the scheduled day, or month for the monthly reset) in the run config and
the ``platform/slot`` tag, and uses it as the run key, so a re-evaluated tick never launches a
second run for the same slot.

Catch-up is deliberate: these are plain (non-partitioned) schedules, and the Dagster daemon
evaluates only the *latest* missed tick of such a schedule after downtime ("has no partition set,
so not trying to catch up"), whatever ``max_catchup_runs`` says. A daemon down over several slots
therefore launches one run, for the most recent slot: a daily reset/alert pass for days already
past would be stale, and the idempotency key makes even that one run harmless if the slot had
already been applied. An operator can still run any past slot from the launchpad.
"""

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg

from orchestration.maintenance import jobs
from orchestration.maintenance.slots import SLOT_TAG, day_slot, month_slot, utc_now

TIMEZONE = "UTC"


@dataclass(frozen=True)
class ScheduleSpec:
    job: dg.JobDefinition
    cron: str
    op: str
    field: str  # "date" or "month"
    slot_of: Callable[[dt.datetime], str]


SPECS = [
    ScheduleSpec(jobs.quota_reset_job, "0 0 * * *", "reset_daily_quota", "date", day_slot),
    ScheduleSpec(
        jobs.quota_cleanup_job, "0 1 * * *", "delete_expired_quota_records", "date", day_slot
    ),
    ScheduleSpec(jobs.stale_cleanup_job, "0 2 * * *", "cleanup_stale_counters", "date", day_slot),
    ScheduleSpec(jobs.alerts_job, "0 8 * * *", "process_daily_alerts", "date", day_slot),
    ScheduleSpec(jobs.quota_monthly_job, "5 0 1 * *", "reset_monthly_quota", "month", month_slot),
]


def run_request_for(spec: ScheduleSpec, slot: str) -> dg.RunRequest:
    """The run for one slot: slot in config and tags, and as the run key."""
    return dg.RunRequest(
        run_key=slot,
        run_config={"ops": {spec.op: {"config": {spec.field: slot}}}},
        tags={SLOT_TAG: slot},
    )


def build_schedule(spec: ScheduleSpec) -> dg.ScheduleDefinition:
    def evaluate(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        moment = context.scheduled_execution_time or utc_now()
        return run_request_for(spec, spec.slot_of(moment))

    return dg.ScheduleDefinition(
        name=f"{spec.job.name}_schedule",
        job=spec.job,
        cron_schedule=spec.cron,
        execution_timezone=TIMEZONE,
        execution_fn=evaluate,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"{spec.job.name} at `{spec.cron}` UTC for the scheduled {spec.field}.",
    )


SCHEDULES = [build_schedule(spec) for spec in SPECS]
