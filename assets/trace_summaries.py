"""The ``trace_summaries`` asset: one summary row per trace, refreshed by its trigger.

Materialized by the ``refresh_trace_summaries`` job that the trigger's schedule (the legacy
*/5 cron) starts with the stale trace ids; each materialization records which traces it refreshed.

The asset is built by :func:`build_trace_summaries_asset` because what rebuilds the summaries is
the trigger worker, which lives in ``orchestration.triggers``: ``assets`` builds on ``resources``
only (the import-linter contract in ``pyproject.toml``), so the triggers area passes its worker
function, config class and pool in, and keeps the asset job beside its other jobs.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg

from resources.notifier import TriggersNotifierResource
from resources.record_store import RecordStoreResource

ASSET_NAME = "trace_summaries"
GROUP_NAME = "triggers"
DESCRIPTION = (
    "Per-trace summary (span count, errors, total duration, trace version), "
    "rebuilt for traces whose summary is stale."
)
METADATA_IDS_SHOWN = 1000  # metadata lists at most this many trace ids


@dataclass(frozen=True)
class Refresh:
    """What one refresh did: the worker's run metadata, and the ids of the traces rebuilt."""

    metadata: Mapping[str, Any]
    refreshed_ids: list[int]


# (op context, run config, record store, notifier) -> what the refresh did.
RefreshFn = Callable[
    [dg.OpExecutionContext, Any, RecordStoreResource, TriggersNotifierResource], Refresh
]


def build_trace_summaries_asset(
    *, refresh: RefreshFn, config_type: type[dg.Config], pool: str | None
) -> dg.AssetsDefinition:
    """The asset, materialized by ``refresh`` with the run's ``config_type`` config (its record
    ids, which the launchpad also takes) in op concurrency ``pool``."""

    @dg.asset(name=ASSET_NAME, description=DESCRIPTION, pool=pool, group_name=GROUP_NAME)
    def trace_summaries(
        context: dg.AssetExecutionContext,
        config: config_type,  # type: ignore[valid-type]  # Dagster reads the config schema here
        record_store: RecordStoreResource,
        triggers_notifier: TriggersNotifierResource,
    ) -> dg.MaterializeResult:
        done = refresh(context.op_execution_context, config, record_store, triggers_notifier)
        return dg.MaterializeResult(
            metadata={
                **done.metadata,
                "refreshed_count": len(done.refreshed_ids),
                "refreshed_trace_ids": dg.MetadataValue.json(
                    done.refreshed_ids[:METADATA_IDS_SHOWN]
                ),
            }
        )

    return trace_summaries
