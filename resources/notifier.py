"""Notifications: written to ``notification_outbox`` inside a state change's transaction, delivered
after commit by this module (webhook over httpx, plus the run log).

Delivery claims one outbox row at a time in its own transaction (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, a write lock on SQLite), posts it, and marks it delivered in that same transaction, so
two deliverers never both send a row. A process killed between the POST and the commit leaves the
row pending and it is sent again: every POST carries the row's ``dedupe_key`` as
``Idempotency-Key``, which lets the receiver drop that one repeat. With no webhook URL configured,
a notification is only written to the log and marked delivered.

Every database step is redone on a lost or refused connection over the record store's retry
window (``resources.db.retrying``), one log line per retry: a restart of the server while a row
is being marked delivered rolls that row's transaction back, so the row is claimed and POSTed
again under the same ``Idempotency-Key`` and marked once.
"""

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dagster as dg
import httpx
import sqlalchemy as sa
from pydantic import Field

from resources.db import retrying

WEBHOOK_URL_ENV = "TRIGGERS_WEBHOOK_URL"

# The core area's outbox (migration core_0001); the one definition every writer and reader imports.
outbox = sa.Table(
    "notification_outbox",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dedupe_key", sa.String(300), nullable=False, unique=True),
    sa.Column("channel", sa.String(50), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text, nullable=True),
)

Log = Callable[[str], None]


@dataclass
class DeliveryReport:
    delivered: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class OutboxDelivery:
    """Plain delivery logic (tests and the worker entry point use it without Dagster)."""

    webhook_url: str | None = None
    timeout_seconds: float = 5.0
    channel: str = "webhook"
    log: Log | None = None

    def _pending_ids(self, conn: sa.Connection, keys: Sequence[str] | None, limit: int) -> list:
        q = sa.select(outbox.c.id).where(
            outbox.c.delivered_at.is_(None), outbox.c.channel == self.channel
        )
        if keys is not None:
            q = q.where(outbox.c.dedupe_key.in_(list(keys)))
        return list(conn.execute(q.order_by(outbox.c.id).limit(limit)).scalars())

    def deliver_pending(
        self, engine: sa.Engine, keys: Sequence[str] | None = None, limit: int = 1000
    ) -> DeliveryReport:
        """Deliver pending rows (only ``keys`` if given); returns what was sent and what failed.

        ``limit`` bounds a sweep of older rows; given ``keys`` are all delivered, however many.
        """
        report = DeliveryReport()
        if keys is not None and not keys:
            return report
        if keys is not None:
            limit = max(limit, len(keys))
        if not self.webhook_url:
            retrying("notification delivery (log only)", self.log)(
                self._log_only, engine, keys, limit, report
            )
            return report
        ids = retrying("notification delivery: reading the outbox", self.log)(
            self._read_pending, engine, keys, limit
        )
        if not ids:
            return report
        with httpx.Client(timeout=self.timeout_seconds) as client:
            for row_id in ids:
                retrying(f"notification delivery: outbox row {row_id}", self.log)(
                    self._deliver_one, engine, row_id, client, report
                )
        return report

    def _read_pending(self, engine: sa.Engine, keys: Sequence[str] | None, limit: int) -> list:
        with engine.connect() as conn:
            return self._pending_ids(conn, keys, limit)

    def _log_only(
        self, engine: sa.Engine, keys: Sequence[str] | None, limit: int, report: DeliveryReport
    ) -> None:
        """No webhook: one statement marks the rows delivered (still exactly once: the WHERE)."""
        pending = (
            sa.select(outbox.c.id)
            .where(outbox.c.delivered_at.is_(None), outbox.c.channel == self.channel)
            .order_by(outbox.c.id)
            .limit(limit)
        )
        if keys is not None:
            pending = pending.where(outbox.c.dedupe_key.in_(list(keys)))
        with engine.begin() as conn:
            rows = conn.execute(
                outbox.update()
                .where(outbox.c.id.in_(pending.scalar_subquery()), outbox.c.delivered_at.is_(None))
                .values(delivered_at=datetime.now(UTC), attempts=outbox.c.attempts + 1)
                .returning(outbox.c.dedupe_key, outbox.c.payload)
            ).all()
        for key, payload in rows:
            report.delivered.append(key)
            if self.log:
                self.log(f"notification {key} delivered (log only, no webhook URL): {payload}")

    def _deliver_one(
        self, engine: sa.Engine, row_id: int, client: httpx.Client | None, report: DeliveryReport
    ) -> None:
        """Claim, POST and mark one row in one transaction; reported only once committed (a
        commit lost with the connection is redone whole by the caller's retry)."""
        with engine.begin() as conn:
            done = self._claim_and_send(conn, engine, row_id, client)
        if done is None:
            return
        key, payload, error = done
        if error is None:
            report.delivered.append(key)
            if self.log:
                where = "webhook" if client is not None else "log only (no webhook URL)"
                self.log(f"notification {key} delivered ({where}): {payload}")
        else:
            report.failed[key] = error
            if self.log:
                self.log(f"notification {key} not delivered, stays pending: {error}")

    def _claim_and_send(
        self, conn: sa.Connection, engine: sa.Engine, row_id: int, client: httpx.Client | None
    ) -> tuple[str, object, str | None] | None:
        if engine.dialect.name == "postgresql":
            got = conn.execute(
                sa.select(outbox.c.id)
                .where(outbox.c.id == row_id, outbox.c.delivered_at.is_(None))
                .with_for_update(skip_locked=True)
            ).first()
            if got is None:
                return None  # delivered already, or another deliverer holds it right now
        # The claim: on SQLite this write takes the database's write lock for the transaction.
        claimed = conn.execute(
            outbox.update()
            .where(outbox.c.id == row_id, outbox.c.delivered_at.is_(None))
            .values(attempts=outbox.c.attempts + 1)
            .returning(outbox.c.dedupe_key, outbox.c.payload)
        ).first()
        if claimed is None:
            return None
        key, payload = claimed
        error = None
        if client is not None:
            try:
                resp = client.post(self.webhook_url, json=payload, headers={"Idempotency-Key": key})
                if resp.status_code >= 300:
                    error = f"HTTP {resp.status_code}: {resp.text[:200]}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
        if error is None:
            conn.execute(
                outbox.update()
                .where(outbox.c.id == row_id)
                .values(delivered_at=datetime.now(UTC), last_error=None)
            )
        else:
            conn.execute(outbox.update().where(outbox.c.id == row_id).values(last_error=error))
        return key, payload, error


class TriggersNotifierResource(dg.ConfigurableResource):
    """Webhook notifier for trigger notifications; without a URL it only writes the run log."""

    webhook_url: str | None = Field(
        default_factory=lambda: os.environ.get(WEBHOOK_URL_ENV) or None,
        description=f"Where notifications are POSTed (JSON). Defaults to ${WEBHOOK_URL_ENV}; "
        "unset means log only.",
    )
    timeout_seconds: float = Field(default=5.0, description="Per-request timeout.")

    def delivery(self, log: Log | None = None) -> OutboxDelivery:
        return OutboxDelivery(
            webhook_url=self.webhook_url, timeout_seconds=self.timeout_seconds, log=log
        )
