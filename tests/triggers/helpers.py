"""Small record-store readers for the trigger tests."""

from __future__ import annotations

from collections import Counter

import sqlalchemy as sa

from orchestration.triggers.models import alerts, notification_outbox, trigger_history


def alert_states(engine: sa.Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(alerts.c.id, alerts.c.state)).all())


def history(engine: sa.Engine, trigger: str) -> list:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(trigger_history)
            .where(trigger_history.c.trigger == trigger)
            .order_by(trigger_history.c.id)
        ).all()


def outbox(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.select(notification_outbox).order_by(notification_outbox.c.id)).all()


def moved_per_record(engine: sa.Engine) -> Counter:
    """How many times each record was moved (succeeded history rows): each must be once."""
    with engine.connect() as conn:
        return Counter(
            conn.execute(
                sa.select(trigger_history.c.record_id).where(
                    trigger_history.c.status == "succeeded"
                )
            ).scalars()
        )
