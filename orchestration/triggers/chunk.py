"""What every path of the worker shares for one chunk: the read, the outcomes, the bookkeeping.

A chunk is ``commit_every`` record ids done in one transaction (``worker``). Whichever path
applies the actions (``per_record``, ``set_based``, ``sql_statement``), the outcome of each record
is an :class:`Outcome`; the Python paths collect the chunk's history, attempt and outbox rows in a
:class:`ChunkWrites` and write them with one multi-row statement each before the commit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from orchestration.triggers.models import notification_outbox, trigger_attempts, trigger_history
from orchestration.triggers.spec import ActionContext, Notification, Transition, TriggerSpec, utcnow

_BIGINT_ARRAY = postgresql.ARRAY(sa.BigInteger)

# (attempts so far, status) per record id, from ``trigger_attempts``.
Prior = dict[int, tuple[int, str | None]]


@dataclass
class Outcome:
    record_id: int
    status: str  # succeeded | skipped | failed | exhausted
    attempt: int = 0
    error: str | None = None


class FallBack(Exception):
    """This path cannot do the chunk; the next path (``worker.chunk_paths``) redoes it."""


@contextmanager
def all_or_fall_back(conn: sa.Connection, what: str) -> Iterator[None]:
    """Set-wise writes in a savepoint: all of them or none.

    A statement error (e.g. a constraint one record breaks) rolls them back and raises
    ``FallBack``, so the chunk is redone record by record and only the culprit fails; an
    ``OperationalError`` (lock timeout, deadlock, busy SQLite) propagates and the whole chunk is
    retried.
    """
    try:
        with conn.begin_nested():
            yield
    except sa.exc.OperationalError:
        raise
    except sa.exc.DBAPIError as exc:
        raise FallBack(f"{what} failed: {exc.orig!r}") from None


def insert(conn: sa.Connection, table: sa.Table):
    """The dialect's ``INSERT`` (for ``ON CONFLICT``)."""
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def id_in(conn: sa.Connection, column: sa.ColumnElement, ids: list[int]):
    """``column IN (…)``; on PostgreSQL ``column = ANY(:array)``: one parameter, not 500."""
    if conn.dialect.name == "postgresql":
        return column == sa.any_(sa.bindparam(None, list(ids), type_=_BIGINT_ARRAY))
    return column.in_(list(ids))


def outbox_row(spec: TriggerSpec, record_id: int, note: Notification, now, suffix: str = ""):
    return {
        "dedupe_key": note.dedupe_key or f"{spec.name}:{record_id}{suffix}",
        "channel": note.channel,
        "payload": note.payload,
        "created_at": now,
        "attempts": 0,
    }


def _apply_error(
    spec: TriggerSpec, conn, record, transition: Transition | None, now, notifications
) -> None:
    """``on_error``'s transition: same outbox path, but not guarded by ``where``."""
    if transition is None:
        return
    t = spec.table
    if transition.values:
        conn.execute(t.update().where(t.c.id == record["id"]).values(**transition.values))
    if transition.notification is not None:
        notifications.append(outbox_row(spec, record["id"], transition.notification, now, ":error"))


def read_due(
    spec: TriggerSpec, conn: sa.Connection, ids: list[int], now
) -> tuple[dict[int, Mapping[str, Any]], Prior]:
    """The chunk's records that still match (locked on PostgreSQL) and their prior attempts."""
    t = spec.table
    q = sa.select(t).where(id_in(conn, t.c.id, ids), spec.where_clause(now)).order_by(t.c.id)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    rows = {r.id: r._mapping for r in conn.execute(q)}
    if not rows:
        return rows, {}
    prior = {
        r.record_id: (r.attempts, r.status)
        for r in conn.execute(
            sa.select(
                trigger_attempts.c.record_id, trigger_attempts.c.attempts, trigger_attempts.c.status
            ).where(
                trigger_attempts.c.trigger == spec.name,
                id_in(conn, trigger_attempts.c.record_id, list(rows)),
            )
        )
    }
    return rows, prior


@dataclass
class ChunkWrites:
    """What one chunk's transaction writes besides the records: collected, then bulk-inserted."""

    spec: TriggerSpec
    run_id: str | None
    actor: str | None
    now: Any
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    history: dict[int, dict] = field(default_factory=dict)
    attempts_rows: list[dict] = field(default_factory=list)
    notifications: list[dict] = field(default_factory=list)

    def due(
        self, ids: list[int], rows: Mapping[int, Mapping[str, Any]], prior: Prior
    ) -> Iterator[tuple[int, Mapping[str, Any], int]]:
        """``(id, record, attempts so far)`` of each record that gets an attempt now. A record
        the read did not return (gone, or no longer matching) or out of attempts is recorded as
        ``skipped`` here: one rule for every Python path."""
        for rid in ids:
            record = rows.get(rid)
            previous, status = prior.get(rid, (0, None))
            if record is None or status == "exhausted":
                self.outcomes[rid] = Outcome(rid, "skipped")
                continue
            yield rid, record, previous

    def record(self, rid, result, attempt, previous, started, error=None) -> None:
        self.outcomes[rid] = Outcome(rid, result, attempt, error)
        self.history[rid] = {
            "trigger": self.spec.name,
            "record_id": rid,
            "attempt": attempt,
            "status": result,
            "error": error,
            "run_id": self.run_id,
            "actor": self.actor,
            "started_at": started,
            "finished_at": utcnow(),
        }
        if previous or result != "succeeded":
            self.attempts_rows.append(
                {
                    "trigger": self.spec.name,
                    "record_id": rid,
                    "attempts": attempt,
                    "status": "retrying" if result == "failed" else result,
                    "last_error": error,
                    "updated_at": self.now,
                }
            )

    def fail(self, conn, record, ctx: ActionContext, previous, started, exc) -> None:
        """An action raised: count the attempt; after the last one run ``on_error`` (savepoint)."""
        rid, attempt = record["id"], ctx.attempt
        error = f"{type(exc).__name__}: {exc}"[:2000]
        result = "exhausted" if attempt >= self.spec.max_attempts else "failed"
        if result == "exhausted" and self.spec.on_error is not None:
            try:
                with conn.begin_nested():
                    pending: list[dict] = []
                    transition = self.spec.on_error(record, ctx, error)
                    _apply_error(self.spec, conn, record, transition, self.now, pending)
                self.notifications += pending
            except Exception as on_error_exc:
                error += f" | on_error failed: {type(on_error_exc).__name__}: {on_error_exc}"
        self.record(rid, result, attempt, previous, started, error)

    def write(self, conn: sa.Connection, ids: list[int]) -> None:
        """Outbox, history and attempt rows of the chunk: one multi-row statement each."""
        if self.notifications:
            _bulk_insert(conn, notification_outbox, self.notifications, conflict=("dedupe_key",))
        history = [self.history[i] for i in ids if i in self.history]
        if history:
            _bulk_insert(conn, trigger_history, history)
        if self.attempts_rows:
            stmt = insert(conn, trigger_attempts)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["trigger", "record_id"],
                    set_={
                        k: stmt.excluded[k]
                        for k in ("attempts", "status", "last_error", "updated_at")
                    },
                ),
                self.attempts_rows,
            )


def _json_default(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__} for a bulk insert")


def _bulk_insert(conn: sa.Connection, table: sa.Table, rows: list[dict], conflict=None) -> None:
    """Insert ``rows`` in one statement; ``conflict`` = unique columns whose clash is skipped.

    On PostgreSQL the rows travel as one JSON parameter expanded by ``json_populate_recordset``:
    psycopg2 adapts datetimes slowly, and a 500-row chunk's history and outbox rows cost several
    times the compare-and-set ``UPDATE`` when bound one value at a time.
    """
    if conn.dialect.name == "postgresql":
        cols = list(rows[0])
        name = conn.dialect.identifier_preparer.format_table(table)
        col_list = ", ".join(conn.dialect.identifier_preparer.quote(c) for c in cols)
        sql = (
            f"INSERT INTO {name} ({col_list}) SELECT {col_list} "
            f"FROM json_populate_recordset(NULL::{name}, :rows)"
        )
        if conflict:
            sql += f" ON CONFLICT ({', '.join(conflict)}) DO NOTHING"
        conn.execute(sa.text(sql), {"rows": json.dumps(rows, default=_json_default)})
        return
    stmt = insert(conn, table)
    if conflict:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict))
    conn.execute(stmt, rows)
