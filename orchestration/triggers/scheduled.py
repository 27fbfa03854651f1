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
from resources.errors import FinalFailure
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
    """Sweep the outbox: anything a worker committed but could not deliver is sent now (oldest
    first, at most ``limit`` rows a run; 0 or no limit: every pending row)."""
    raw = inp.get("limit") or 0
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise FinalFailure(
            f"deliver_trigger_notifications input limit={raw!r:.20} is not valid: set a whole "
            "number of rows >= 0 (0: every pending row); nothing was sent"
        )
    limit = raw or None
    report = ctx.delivery.deliver_pending(ctx.engine, limit=limit, what="outbox sweep")
    return {
        "delivered": len(report.delivered),
        "failed": len(report.failed),
        "first_errors": report.first_errors(),
        "seconds": round(report.seconds, 3),
    }


SCHEDULED_ACTIONS = [
    ScheduledAction(
        name="deliver_trigger_notifications",
        cron="* * * * *",
        action=deliver_notifications,
        # At >= 2,000/s (docs/triggers.md) a minute's run clears 20,000 leftovers.
        input={"limit": 20000},
        description="Delivers notifications left pending in the outbox (failed or interrupted).",
        # Housekeeping of the record store, failures to ops. Retrying the sweep is safe: each
        # batch of rows is claimed and marked delivered in one transaction, a retry sends only
        # rows still pending, and a repeated POST carries the row's Idempotency-Key.
        recipe="maintenance",
    )
]
