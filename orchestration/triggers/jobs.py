"""The triggers' jobs, each declared through ``recipes.job_settings``.

- a worker job per trigger (recipe ``bulk_fanout``): one op, ``ops.build_worker_op``; workers are
  compare-and-set, so a step retry re-checks each record and never applies a transition twice;
- ``refresh_trace_summaries``: an asset job over the ``trace_summaries`` asset, which is that
  trigger's worker (same recipe, same tags);
- a job per scheduled action (the action's ``recipe``, ``maintenance`` by default).

:data:`TRIGGER_JOBS` gives each trigger's job with the node whose config carries the record ids,
which its sensor or schedule puts in each run request.
"""

from typing import Any

import dagster as dg

from assets.trace_summaries import ASSET_NAME
from orchestration.policies.recipes import job_settings
from orchestration.triggers.catalog import REFRESH_TRACE_SUMMARIES, TRIGGERS
from orchestration.triggers.ops import (
    build_action_op,
    build_worker_op,
    trace_summaries,
    worker_op_name,
)
from orchestration.triggers.runs import run_tags
from orchestration.triggers.scheduled import SCHEDULED_ACTIONS, ScheduledAction
from orchestration.triggers.spec import TriggerSpec

WORKER_RECIPE = "bulk_fanout"

# A ``dg.JobDefinition``, or the asset job ``dg.define_asset_job`` returns (resolved by
# ``Definitions``; its class is not public API, hence ``Any``).
TriggerJob = Any


def worker_job_settings(spec: TriggerSpec) -> dict:
    """Name, description, recipe and tags of a trigger's job (op job or asset job alike)."""
    return job_settings(
        spec.job_name,
        description=spec.description or f"Worker of trigger {spec.name}.",
        recipe=WORKER_RECIPE,
        kind="trigger",
        tags=run_tags(spec),
    )


def build_worker_job(spec: TriggerSpec) -> dg.JobDefinition:
    worker = build_worker_op(spec)

    @dg.job(**worker_job_settings(spec))
    def trigger_job() -> None:
        worker()

    return trigger_job


refresh_trace_summaries_job = dg.define_asset_job(
    selection=[trace_summaries], **worker_job_settings(REFRESH_TRACE_SUMMARIES)
)


def build_action_job(item: ScheduledAction) -> dg.JobDefinition:
    action = build_action_op(item)

    @dg.job(
        **job_settings(
            item.name,
            description=item.description or item.name,
            recipe=item.recipe,
            kind="scheduled_action",
        )
    )
    def action_job() -> None:
        action()

    return action_job


def _trigger_job(spec: TriggerSpec) -> tuple[TriggerJob, str]:
    if spec.name == REFRESH_TRACE_SUMMARIES.name:
        return refresh_trace_summaries_job, ASSET_NAME
    return build_worker_job(spec), worker_op_name(spec)


# Per trigger: its job, and the op (or asset) whose config takes ``record_ids``.
TRIGGER_JOBS: dict[str, tuple[TriggerJob, str]] = {
    name: _trigger_job(spec) for name, spec in TRIGGERS.items()
}

ACTION_JOBS: dict[str, dg.JobDefinition] = {
    item.name: build_action_job(item) for item in SCHEDULED_ACTIONS
}
