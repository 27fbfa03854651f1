"""Scheduled actions: work that is not per record (cron + a plain function + its input).

Each ``ScheduledAction`` becomes a one-op job whose config is the action's input (the schedule
passes the declared input; the launchpad can change it) and a schedule on its cron.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import sqlalchemy as sa
from croniter import croniter
from pydantic import Field

from orchestration.tags import KIND_TAG
from orchestration.triggers.spec import TriggerDeclarationError
from resources.notifier import OutboxDelivery, TriggersNotifierResource
from resources.record_store import RecordStoreResource


@dataclass
class ScheduledContext:
    engine: sa.Engine
    delivery: OutboxDelivery
    log: Callable[[str], None]


@dataclass(frozen=True)
class ScheduledAction:
    name: str
    cron: str
    action: Callable[[dict[str, Any], ScheduledContext], dict[str, Any]]
    input: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if not croniter.is_valid(self.cron):
            raise TriggerDeclarationError(
                f"scheduled action {self.name!r}: invalid cron expression {self.cron!r}"
            )


class ScheduledActionConfig(dg.Config):
    input: dict[str, Any] = Field(default_factory=dict, description="The action's input.")


def _metadata(value: Any) -> Any:
    """Numbers and text as they are (the UI plots them); containers as JSON."""
    return dg.MetadataValue.json(value) if isinstance(value, dict | list) else value


def build_scheduled_action(item: ScheduledAction) -> dg.Definitions:
    @dg.op(name=f"{item.name}_action", description=item.description or item.name)
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

    @dg.job(
        name=item.name,
        description=item.description or item.name,
        tags={KIND_TAG: "scheduled_action"},
        executor_def=dg.in_process_executor,
    )
    def action_job() -> None:
        action_op()

    schedule = dg.ScheduleDefinition(
        name=f"{item.name}_schedule",
        job=action_job,
        cron_schedule=item.cron,
        execution_timezone="UTC",
        run_config={"ops": {f"{item.name}_action": {"config": {"input": item.input}}}},
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"{item.description or item.name} ({item.cron})",
    )
    return dg.Definitions(jobs=[action_job], schedules=[schedule])


def deliver_notifications(inp: dict[str, Any], ctx: ScheduledContext) -> dict[str, Any]:
    """Sweep the outbox: anything a worker committed but could not deliver is sent now."""
    report = ctx.delivery.deliver_pending(ctx.engine, limit=int(inp.get("limit", 1000)))
    return {"delivered": len(report.delivered), "failed": report.failed}


SCHEDULED_ACTIONS = [
    ScheduledAction(
        name="deliver_trigger_notifications",
        cron="* * * * *",
        action=deliver_notifications,
        input={"limit": 1000},
        description="Delivers notifications left pending in the outbox (failed or interrupted).",
    )
]
