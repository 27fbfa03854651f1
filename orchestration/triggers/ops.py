"""The triggers' ops: thin wiring from a run's config and resources to the plain functions.

- a worker op per trigger (:func:`build_worker_op`): ``worker.process_batch`` on the run's
  ``record_ids``; the ``trace_summaries`` asset is the worker of ``refresh_trace_summaries``,
  built by ``assets.trace_summaries`` over the same :func:`execute_trigger_batch`;
- an op per scheduled action (:func:`build_action_op`): the action's plain function on its input.
"""

from typing import Any, Optional

import dagster as dg
from pydantic import Field

from assets.trace_summaries import Refresh, build_trace_summaries_asset
from orchestration.policies.progress import Progress
from orchestration.triggers.catalog import REFRESH_TRACE_SUMMARIES
from orchestration.triggers.lineage import done_earlier, lineage
from orchestration.triggers.runs import ACTOR_TAG
from orchestration.triggers.scheduled import ScheduledAction, ScheduledContext
from orchestration.triggers.spec import TriggerSpec
from orchestration.triggers.worker import EARLIER, BatchResult, process_batch_delivering
from resources.notifier import DeliveryPipeline, Selection, TriggersNotifierResource
from resources.record_store import RecordStoreResource

# The notifier's resource key: the parameter name of every op here and of the asset.
NOTIFIER_KEY = "triggers_notifier"


class TriggerRunConfig(dg.Config):
    record_ids: list[int] = Field(
        description="Record ids to run the trigger for. Records that no longer match the "
        "trigger's condition are skipped."
    )
    actor: Optional[str] = Field(  # noqa: UP045 - Dagster config needs Optional
        default=None, description="Who the action runs as (defaults to the trigger's actor)."
    )


class ScheduledActionConfig(dg.Config):
    input: dict[str, Any] = Field(default_factory=dict, description="The action's input.")


def worker_op_name(spec: TriggerSpec) -> str:
    return f"{spec.name}_worker"


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
    log = context.log.info
    engine = record_store.engine()
    ids = config.record_ids
    # A retry or re-execution: what its earlier attempts did, and every notification they left
    # pending (not a page of it), delivered first.
    earlier = leftovers = None
    before = lineage(context)
    if before is not None:
        earlier = done_earlier(engine, spec.name, before.run_ids, ids, log)
        leftovers = Selection(since=before.started_at - DeliveryPipeline.SINCE_MARGIN)
        log(
            f"trigger {spec.name}: attempt {before.retry_number + 1}; {len(earlier)} of the "
            f"batch's record(s) already done by an earlier attempt (runs "
            f"{', '.join(r[:8] for r in before.run_ids)})"
        )
    # A line per committed chunk: chunks are hundreds to thousands of records, so a few lines.
    progress = Progress(len(set(ids)), log, f"trigger {spec.name}", every_seconds=0)
    result = process_batch_delivering(
        spec,
        engine,
        ids,
        notifier.delivery(log=log),
        leftovers=leftovers,
        run_id=context.run_id,
        actor=actor,
        log=log,
        progress=progress.tick,
        earlier=earlier,
    )
    result.progress = progress.metadata()
    return result


def result_metadata(result: BatchResult) -> dict[str, Any]:
    """This attempt's counts (with ``already_done_by_earlier_attempt`` apart from ``skipped``),
    its rate, and what its deliveries did (earlier attempts' leftovers included)."""
    counts = result.counts()
    counts.setdefault(EARLIER, 0)
    delivery = result.delivery
    return {
        **counts,
        **{k: result.progress[k] for k in ("seconds", "rate_per_second") if k in result.progress},
        "transitioned_ids": dg.MetadataValue.json(result.ids("succeeded")[:1000]),
        "notifications": len(result.notification_keys),
        "notifications_delivered": len(delivery.delivered) if delivery else 0,
        "notifications_failed": len(delivery.failed) if delivery else 0,
        "delivery_errors": dg.MetadataValue.json(delivery.first_errors() if delivery else {}),
        "errors": dg.MetadataValue.json(
            {str(o.record_id): o.error for o in result.outcomes if o.error}
        ),
    }


def build_worker_op(spec: TriggerSpec) -> dg.OpDefinition:
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

    return worker


def refresh_trace_summaries(
    context: dg.OpExecutionContext,
    config: TriggerRunConfig,
    record_store: RecordStoreResource,
    notifier: TriggersNotifierResource,
) -> Refresh:
    """The ``trace_summaries`` asset's work: the ``refresh_trace_summaries`` trigger's batch."""
    result = execute_trigger_batch(context, REFRESH_TRACE_SUMMARIES, config, record_store, notifier)
    return Refresh(metadata=result_metadata(result), refreshed_ids=result.ids("succeeded"))


trace_summaries = build_trace_summaries_asset(
    refresh=refresh_trace_summaries,
    config_type=TriggerRunConfig,
    pool=REFRESH_TRACE_SUMMARIES.pool,
)


def _metadata(value: Any) -> Any:
    """Numbers and text as they are (the UI plots them); containers as JSON."""
    return dg.MetadataValue.json(value) if isinstance(value, dict | list) else value


def action_op_name(item: ScheduledAction) -> str:
    return f"{item.name}_action"


def build_action_op(item: ScheduledAction) -> dg.OpDefinition:
    @dg.op(name=action_op_name(item), description=item.description or item.name)
    def action_op(
        context: dg.OpExecutionContext,
        config: ScheduledActionConfig,
        record_store: RecordStoreResource,
        triggers_notifier: TriggersNotifierResource,
    ) -> None:
        ctx = ScheduledContext(
            record_store.engine(), triggers_notifier.delivery(context.log.info), context.log.info
        )
        summary = item.action({**item.input, **config.input}, ctx)
        context.add_output_metadata({k: _metadata(v) for k, v in summary.items()})

    return action_op
