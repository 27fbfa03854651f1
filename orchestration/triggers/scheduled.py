"""Scheduled actions: work that is not per record (cron + a plain function + its input).

Each ``ScheduledAction`` becomes a one-op job whose config is the action's input (the schedule
passes the declared input; the launchpad can change it) and a schedule on its cron: the op in
``ops.build_action_op``, the job in ``jobs.build_action_job``, the schedule in
``schedules.build_action_schedule``. This module is plain Python: the declarations and actions.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from croniter import croniter

from orchestration.triggers.spec import TriggerDeclarationError
from resources.notifier import OutboxDelivery


@dataclass
class ScheduledContext:
    """What an action gets besides its input: the record store, outbox delivery, the run log."""

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
    # The job's recipe (``policies.recipes``): its steps are retried, so an action must be
    # idempotent; one that is not needs a recipe with attempts=1.
    recipe: str = "maintenance"

    def __post_init__(self) -> None:
        if not croniter.is_valid(self.cron):
            raise TriggerDeclarationError(
                f"scheduled action {self.name!r}: invalid cron expression {self.cron!r}"
            )


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
        # Housekeeping of the record store, failures to ops. Retrying the sweep is safe: each row
        # is claimed and marked delivered in one transaction, a retry sends only rows still
        # pending, and a repeated POST carries the row's Idempotency-Key.
        recipe="maintenance",
    )
]
