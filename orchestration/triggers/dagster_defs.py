"""From one ``TriggerSpec``: its worker job, and its sensor (interval) or schedule (cron).

The sensor runs ``scan.scan`` from its cursor and asks for one run per batch of ids, each with a
``run_key``; with ``trigger_once`` it first collects the ids of the trigger's unfinished runs from
the Dagster instance (their run config) and leaves them out. The job's one op is the worker
(``worker.process_batch``); the launchpad takes ``record_ids`` to run the trigger for given records.
"""

from typing import Any, Optional

import dagster as dg
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES
from pydantic import Field

from orchestration.policies.progress import Progress
from orchestration.policies.recipes import recipe
from orchestration.tags import KIND_TAG
from orchestration.triggers import scan as scan_lib
from orchestration.triggers.spec import TriggerSpec
from orchestration.triggers.worker import BatchResult, process_batch
from resources.notifier import TriggersNotifierResource
from resources.record_store import RecordStoreResource

WORKER_RECIPE = recipe("bulk_fanout")

TRIGGER_TAG = "platform/trigger"
TENANT_TAG = "platform/tenant"
ACTOR_TAG = "platform/trigger-actor"
QUEUE_TAG = "platform/trigger-queue"
NOTIFIER_KEY = "triggers_notifier"


class TriggerRunConfig(dg.Config):
    record_ids: list[int] = Field(
        description="Record ids to run the trigger for. Records that no longer match the "
        "trigger's condition are skipped."
    )
    actor: Optional[str] = Field(  # noqa: UP045 - Dagster config needs Optional
        default=None, description="Who the action runs as (defaults to the trigger's actor)."
    )


def worker_op_name(spec: TriggerSpec) -> str:
    return f"{spec.name}_worker"


def run_tags(spec: TriggerSpec, tenant: str | None = None) -> dict[str, str]:
    tags = {KIND_TAG: "trigger", TRIGGER_TAG: spec.name}
    if spec.actor:
        tags[ACTOR_TAG] = spec.actor
    if spec.queue:
        tags[QUEUE_TAG] = spec.queue
    if tenant is not None:
        tags[TENANT_TAG] = tenant
    return tags


def execute_trigger_batch(
    context: dg.OpExecutionContext,
    spec: TriggerSpec,
    config: TriggerRunConfig,
    record_store: RecordStoreResource,
    notifier: TriggersNotifierResource,
) -> BatchResult:
    """Shared by the op and asset workers: run the batch, log it, return the outcome."""
    actor = config.actor or context.run.tags.get(ACTOR_TAG) or spec.actor
    if actor and context.run.tags.get(ACTOR_TAG) != actor:
        context.instance.add_run_tags(context.run_id, {ACTOR_TAG: actor})
    delivery = notifier.delivery(log=context.log.info)
    engine = record_store.engine()
    delivery.deliver_pending(engine, limit=500)  # leftovers of a killed or failed run
    # A line per committed chunk: chunks are hundreds to thousands of records, so a few lines.
    progress = Progress(
        len(set(config.record_ids)), context.log.info, f"trigger {spec.name}", every_seconds=0
    )
    result = process_batch(
        spec,
        engine,
        config.record_ids,
        run_id=context.run_id,
        actor=actor,
        deliver=lambda eng, keys: delivery.deliver_pending(eng, keys),
        log=context.log.info,
        progress=progress.tick,
    )
    result.progress = progress.metadata()
    return result


def result_metadata(result: BatchResult) -> dict[str, Any]:
    counts = result.counts()
    return {
        **counts,
        **{k: result.progress[k] for k in ("seconds", "rate_per_second") if k in result.progress},
        "transitioned_ids": dg.MetadataValue.json(result.ids("succeeded")[:1000]),
        "notifications": len(result.notification_keys),
        "errors": dg.MetadataValue.json(
            {str(o.record_id): o.error for o in result.outcomes if o.error}
        ),
    }


def build_worker_job(spec: TriggerSpec) -> dg.JobDefinition:
    @dg.op(
        name=worker_op_name(spec),
        description=f"Applies trigger {spec.name!r} to the given records (compare-and-set).",
        pool=spec.pool,
    )
    def worker(
        context: dg.OpExecutionContext,
        config: TriggerRunConfig,
        record_store: RecordStoreResource,
        triggers_notifier: TriggersNotifierResource,
    ) -> None:
        result = execute_trigger_batch(context, spec, config, record_store, triggers_notifier)
        context.add_output_metadata(result_metadata(result))

    @dg.job(
        name=spec.job_name,
        description=spec.description or f"Worker of trigger {spec.name}.",
        # Workers are compare-and-set: a step retry re-checks each record, never applies twice.
        tags={**WORKER_RECIPE.run_tags(), **run_tags(spec)},
        op_retry_policy=WORKER_RECIPE.retry_policy(),
        executor_def=dg.in_process_executor,
    )
    def trigger_job() -> None:
        worker()

    return trigger_job


def in_flight_ids(instance: dg.DagsterInstance, spec: TriggerSpec, op_name: str) -> set[int]:
    """Record ids named by the trigger's runs that have not finished (queued or running)."""
    ids: set[int] = set()
    runs = instance.get_runs(
        dg.RunsFilter(tags={TRIGGER_TAG: spec.name}, statuses=NOT_FINISHED_STATUSES)
    )
    for run in runs:
        cfg = (run.run_config or {}).get("ops", {}).get(op_name, {}).get("config", {})
        ids.update(int(i) for i in cfg.get("record_ids", []))
    return ids


def run_requests(spec: TriggerSpec, op_name: str, batches: list[scan_lib.Batch]):
    return [
        dg.RunRequest(
            run_key=b.run_key,
            run_config={"ops": {op_name: {"config": {"record_ids": b.ids}}}},
            tags=run_tags(spec, b.tenant),
        )
        for b in batches
    ]


def build_sensor(spec: TriggerSpec, job, op_name: str) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{spec.name}_sensor",
        job=job,
        minimum_interval_seconds=spec.interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Finds records matching trigger {spec.name!r} (keyset scan from the cursor, "
        f"at most {spec.max_per_tick} per tick) and requests one run per {spec.batch_size}.",
    )
    def trigger_sensor(context: dg.SensorEvaluationContext, record_store: RecordStoreResource):
        busy = in_flight_ids(context.instance, spec, op_name) if spec.trigger_once else set()
        # An outage mid-tick: "record store unreachable at <host:port/db>" is the tick's headline.
        with record_store.clear_errors(), record_store.engine().connect() as conn:
            found = scan_lib.scan(spec, conn, context.cursor, busy)
        if not found.batches:
            return dg.SensorResult(
                skip_reason=f"nothing due ({found.skipped_in_flight} in flight)",
                cursor=found.cursor,
            )
        return dg.SensorResult(
            run_requests=run_requests(spec, op_name, found.batches), cursor=found.cursor
        )

    return trigger_sensor


def build_schedule(spec: TriggerSpec, job, op_name: str) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=f"{spec.name}_schedule",
        job=job,
        cron_schedule=spec.cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Runs trigger {spec.name!r} on cron {spec.cron!r}: every matching record, "
        f"in runs of {spec.batch_size}.",
    )
    def trigger_schedule(context: dg.ScheduleEvaluationContext, record_store: RecordStoreResource):
        busy = in_flight_ids(context.instance, spec, op_name) if spec.trigger_once else set()
        tick = int(context.scheduled_execution_time.timestamp())
        with record_store.clear_errors(), record_store.engine().connect() as conn:
            found = scan_lib.scan(spec, conn, None, busy, pass_no=tick)
        if not found.batches:
            return dg.SkipReason("nothing due")
        return run_requests(spec, op_name, found.batches)

    return trigger_schedule


def build_trigger_defs(spec: TriggerSpec, job=None, op_name: str | None = None) -> dg.Definitions:
    """The job (or a given asset job whose op is ``op_name``) plus its sensor or schedule."""
    if job is None:
        job = build_worker_job(spec)
        op_name = worker_op_name(spec)
    assert op_name is not None
    starter = build_schedule(spec, job, op_name) if spec.cron else build_sensor(spec, job, op_name)
    if spec.cron:
        return dg.Definitions(jobs=[job], schedules=[starter])
    return dg.Definitions(jobs=[job], sensors=[starter])
