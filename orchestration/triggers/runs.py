"""What a trigger's runs look like: their tags, their run requests, and which are still in flight.

Shared by the jobs (tags), the sensors and the schedules (run requests; ``trigger_once`` leaves
out the ids that unfinished runs already carry).
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from orchestration.tags import KIND_TAG
from orchestration.triggers.scan import Batch
from orchestration.triggers.spec import TriggerSpec

TRIGGER_TAG = "platform/trigger"
TENANT_TAG = "platform/tenant"
ACTOR_TAG = "platform/trigger-actor"
QUEUE_TAG = "platform/trigger-queue"

# Run statuses of a run that has not finished (queued, starting, running, suspended, canceling):
# its record ids may still move. Dagster's own list is private (``dagster._core.storage.
# dagster_run.NOT_FINISHED_STATUSES``); tests/triggers/test_sensor_and_jobs.py checks this equals
# it, so a Dagster upgrade that adds a status is noticed.
UNFINISHED_RUN_STATUSES: tuple[dg.DagsterRunStatus, ...] = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.SUSPENDED,
    dg.DagsterRunStatus.CANCELING,
)


def run_tags(spec: TriggerSpec, tenant: str | None = None) -> dict[str, str]:
    """The tags of the trigger's job and runs (the queue tag: tag_concurrency_limits)."""
    tags = {KIND_TAG: "trigger", TRIGGER_TAG: spec.name}
    if spec.actor:
        tags[ACTOR_TAG] = spec.actor
    if spec.queue:
        tags[QUEUE_TAG] = spec.queue
    if tenant is not None:
        tags[TENANT_TAG] = tenant
    return tags


def in_flight_ids(instance: dg.DagsterInstance, spec: TriggerSpec, op_name: str) -> set[int]:
    """Record ids named by the trigger's runs that have not finished (queued or running)."""
    ids: set[int] = set()
    runs = instance.get_runs(
        dg.RunsFilter(tags={TRIGGER_TAG: spec.name}, statuses=list(UNFINISHED_RUN_STATUSES))
    )
    for run in runs:
        cfg = (run.run_config or {}).get("ops", {}).get(op_name, {}).get("config", {})
        ids.update(int(i) for i in cfg.get("record_ids", []))
    return ids


def run_requests(spec: TriggerSpec, op_name: str, batches: Sequence[Batch]) -> list[dg.RunRequest]:
    """One run per batch, keyed by the batch (a tick evaluated twice asks for each run once)."""
    return [
        dg.RunRequest(
            run_key=b.run_key,
            run_config={"ops": {op_name: {"config": {"record_ids": b.ids}}}},
            tags=run_tags(spec, b.tenant),
        )
        for b in batches
    ]
