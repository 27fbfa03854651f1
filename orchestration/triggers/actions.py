"""The actions of the three triggers: plain functions of one record, tested directly."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from orchestration.triggers.models import edge_packages, trace_summaries
from orchestration.triggers.spec import (
    ActionContext,
    Notification,
    SqlAction,
    Transition,
    as_utc,
    utcnow,
)


def escalate_alert(alert: Mapping[str, Any], ctx: ActionContext) -> Transition:
    """pending → escalated, with one notification naming the alert and how long it waited."""
    waited = (ctx.now - as_utc(alert["created_at"])).total_seconds() / 60
    return Transition(
        values={"state": "escalated", "escalated_at": ctx.now},
        notification=Notification(
            payload={
                "event": "alert.escalated",
                "alert_id": alert["id"],
                "tenant_id": alert["tenant_id"],
                "title": alert["title"],
                "pending_minutes": round(waited, 1),
            },
            dedupe_key=f"escalate_alerts:{alert['id']}",
        ),
    )


ESCALATE_ALERT_SQL = SqlAction(
    values=lambda t, now: {"state": "escalated", "escalated_at": now},
    payload=lambda t, now: {
        "event": sa.literal("alert.escalated"),
        "alert_id": t.c.id,
        "tenant_id": t.c.tenant_id,
        "title": t.c.title,
        "pending_minutes": sa.func.round(
            sa.cast(sa.extract("epoch", now - t.c.created_at) / 60, sa.Numeric), 1
        ),
    },
    dedupe_key=lambda t: sa.literal("escalate_alerts:") + sa.cast(t.c.id, sa.String),
)
"""``escalate_alert`` as SQL, for the one-statement chunk on PostgreSQL."""


def expire_package(package: Mapping[str, Any], ctx: ActionContext) -> Transition:
    """active → expired, and the download token is invalidated (its hash is dropped)."""
    return Transition(
        values={"state": "expired", "expired_at": ctx.now, "download_token_hash": None}
    )


EXPIRE_PACKAGE_SQL = SqlAction(
    values=lambda t, now: {"state": "expired", "expired_at": now, "download_token_hash": None}
)
"""``expire_package`` as SQL, for the one-statement chunk on PostgreSQL."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_download(conn: sa.Connection, package_id: int, token: str) -> bool:
    """Whether ``token`` may download the package now: active, unexpired, token matches."""
    row = conn.execute(sa.select(edge_packages).where(edge_packages.c.id == package_id)).first()
    if row is None or row.state != "active" or row.download_token_hash is None:
        return False
    if as_utc(row.expires_at) <= utcnow():
        return False
    return hmac.compare_digest(row.download_token_hash, token_hash(token))


def summarize_spans(spans: list[dict]) -> dict[str, Any]:
    return {
        "span_count": len(spans),
        "error_count": sum(1 for s in spans if s.get("error")),
        "total_duration_ms": float(sum(s.get("duration_ms", 0) for s in spans)),
    }


def refresh_trace_summary(trace: Mapping[str, Any], ctx: ActionContext) -> Transition:
    """Rebuild the trace's summary row (same transaction) and clear its stale flag.

    The trigger's ``cas_columns=("version",)`` makes the update fail if the trace was written
    after it was read, so a summary never claims a version it was not built from.
    """
    summary = {
        "trace_id": trace["id"],
        **summarize_spans(trace["spans"] or []),
        "trace_version": trace["version"],
        "refreshed_at": ctx.now,
    }
    dialect = postgresql if ctx.conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(trace_summaries).values(**summary)
    ctx.conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["trace_id"],
            set_={k: stmt.excluded[k] for k in summary if k != "trace_id"},
        )
    )
    return Transition(values={"summary_stale": False})
