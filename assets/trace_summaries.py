"""The ``trace_summaries`` asset: one summary row per trace, refreshed by its trigger.

Materialized by the ``refresh_trace_summaries`` job that the trigger's schedule (the legacy
*/5 cron) starts with the stale trace ids; each materialization records which traces it refreshed.
"""

import dagster as dg

from orchestration.triggers.catalog import REFRESH_TRACE_SUMMARIES
from orchestration.triggers.dagster_defs import (
    WORKER_RECIPE,
    TriggerRunConfig,
    execute_trigger_batch,
    result_metadata,
    run_tags,
)
from resources.notifier import TriggersNotifierResource
from resources.record_store import RecordStoreResource

ASSET_NAME = "trace_summaries"


@dg.asset(
    name=ASSET_NAME,
    description="Per-trace summary (span count, errors, total duration, trace version), "
    "rebuilt for traces whose summary is stale.",
    pool=REFRESH_TRACE_SUMMARIES.pool,
    group_name="triggers",
)
def trace_summaries(
    context: dg.AssetExecutionContext,
    config: TriggerRunConfig,
    record_store: RecordStoreResource,
    triggers_notifier: TriggersNotifierResource,
) -> dg.MaterializeResult:
    result = execute_trigger_batch(
        context.op_execution_context, REFRESH_TRACE_SUMMARIES, config, record_store,
        triggers_notifier,
    )  # fmt: skip
    refreshed = result.ids("succeeded")
    return dg.MaterializeResult(
        metadata={
            **result_metadata(result),
            "refreshed_count": len(refreshed),
            "refreshed_trace_ids": dg.MetadataValue.json(refreshed[:1000]),
        }
    )


refresh_trace_summaries_job = dg.define_asset_job(
    name=REFRESH_TRACE_SUMMARIES.job_name,
    selection=[trace_summaries],
    description=REFRESH_TRACE_SUMMARIES.description,
    tags={**WORKER_RECIPE.run_tags(), **run_tags(REFRESH_TRACE_SUMMARIES)},
    op_retry_policy=WORKER_RECIPE.retry_policy(),
    executor_def=dg.in_process_executor,
)
