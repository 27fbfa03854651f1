"""The one way to declare a schedule: UTC, named ``<job>_schedule``, running by default.

A time-partitioned job gets its schedule from its partitions (:func:`partitioned_schedule`, over
Dagster's ``build_schedule_from_partitioned_job``): the run key is the partition key, so a tick
evaluated twice launches one run, and the UI's partition view shows each slot's status. Any other
scheduled job uses :func:`cron_schedule`: a fixed cron with static run config, or an evaluation
function (which may take resources, as ``@dg.schedule`` allows).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import dagster as dg

TIMEZONE = "UTC"

# A job or an asset job (``dg.define_asset_job`` returns a type Dagster does not export).
ScheduledJob = Any


def schedule_name(job_name: str) -> str:
    return f"{job_name}_schedule"


def partitioned_schedule(
    job: ScheduledJob,
    *,
    description: str,
    hour: int = 0,
    minute: int = 0,
    day_of_month: int | None = None,
) -> dg.ScheduleDefinition:
    """The schedule of a time-partitioned job: one run per partition, keyed by the partition."""
    return dg.build_schedule_from_partitioned_job(
        job,
        name=schedule_name(job.name),
        description=description,
        hour_of_day=hour,
        minute_of_hour=minute,
        day_of_month=day_of_month,
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )


def cron_schedule(
    job: ScheduledJob,
    *,
    cron: str,
    description: str,
    name: str | None = None,
    run_config: Mapping[str, Any] | None = None,
    execution_fn: Callable[..., Any] | None = None,
) -> dg.ScheduleDefinition:
    """A schedule on ``cron`` (UTC) with static ``run_config`` or an ``execution_fn``."""
    if execution_fn is not None and run_config is not None:
        raise ValueError("give run_config or execution_fn, not both")
    common: dict[str, Any] = {
        "name": name or schedule_name(job.name),
        "job": job,
        "cron_schedule": cron,
        "execution_timezone": TIMEZONE,
        "default_status": dg.DefaultScheduleStatus.RUNNING,
        "description": description,
    }
    if execution_fn is not None:
        return dg.schedule(**common)(execution_fn)
    return dg.ScheduleDefinition(**common, run_config=dict(run_config or {}))
