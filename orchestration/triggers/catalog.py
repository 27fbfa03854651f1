"""The declared triggers and scheduled actions of the platform (the only place to add one)."""

from __future__ import annotations

from orchestration.triggers import actions
from orchestration.triggers.models import alerts, edge_packages, traces
from orchestration.triggers.spec import TriggerSpec, older_than, past

# The legacy crontab line of the trace-summary job this trigger replaces; the schedule keeps it.
LEGACY_TRACE_SUMMARY_CRON = "*/5 * * * *"

ESCALATE_ALERTS = TriggerSpec(
    name="escalate_alerts",
    description="Alerts pending for more than 30 minutes become escalated; one notification each.",
    table=alerts,
    where={"state": "pending", "created_at": older_than(minutes=30)},
    action=actions.escalate_alert,
    pure_action=True,
    sql_action=actions.ESCALATE_ALERT_SQL,
    commit_every=500,
    interval_seconds=30,
    batch_size=500,
    max_per_tick=10_000,
    max_attempts=3,
    actor="system:alert-escalation",
    pool="triggers",
    queue="alerts",
)

EXPIRE_PACKAGES = TriggerSpec(
    name="expire_packages",
    description="Edge packages past expires_at become expired; their download token stops working.",
    table=edge_packages,
    where={"state": "active", "expires_at": past()},
    action=actions.expire_package,
    pure_action=True,
    sql_action=actions.EXPIRE_PACKAGE_SQL,
    commit_every=500,
    interval_seconds=60,
    batch_size=500,
    max_per_tick=10_000,
    max_attempts=3,
    actor="system:package-expiry",
    pool="triggers",
    queue="packages",
)

REFRESH_TRACE_SUMMARIES = TriggerSpec(
    name="refresh_trace_summaries",
    description="Rebuilds the summary of every trace whose summary is stale (every 5 minutes).",
    table=traces,
    where={"summary_stale": True},
    action=actions.refresh_trace_summary,
    cron=LEGACY_TRACE_SUMMARY_CRON,
    interval_seconds=None,
    cas_columns=("version",),
    batch_size=1000,
    max_per_tick=20_000,
    max_attempts=2,
    actor="system:trace-summaries",
    pool="triggers",
    queue="traces",
)

TRIGGERS: dict[str, TriggerSpec] = {
    t.name: t for t in (ESCALATE_ALERTS, EXPIRE_PACKAGES, REFRESH_TRACE_SUMMARIES)
}


def get_trigger(name: str) -> TriggerSpec:
    try:
        return TRIGGERS[name]
    except KeyError:
        raise KeyError(f"no trigger named {name!r}; known: {', '.join(sorted(TRIGGERS))}") from None
