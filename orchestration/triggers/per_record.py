"""The per-record path: each record's action and compare-and-set ``UPDATE`` in its own savepoint.

The general path: an action may read or write through ``ctx.conn``, and one record's failure
(its action raising, its ``UPDATE`` breaking a constraint) rolls back only its own savepoint. It
is also where a pure chunk lands when the set-based path cannot take it (``worker.chunk_paths``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from orchestration.triggers.chunk import ChunkWrites, Outcome, Prior, outbox_row
from orchestration.triggers.spec import ActionContext, Transition, TriggerSpec, utcnow


class _LostRace(Exception):
    """The compare-and-set matched no row: someone else changed the record first."""


def _apply(
    spec: TriggerSpec,
    conn: sa.Connection,
    record: Mapping[str, Any],
    transition: Transition,
    now,
    notifications: list[dict],
) -> None:
    t = spec.table
    guard = [t.c.id == record["id"], spec.where_clause(now)]
    guard += [t.c[c] == record[c] for c in spec.cas_columns]
    if transition.values:
        done = conn.execute(t.update().where(*guard).values(**transition.values)).rowcount
        if done != 1:
            raise _LostRace()
    if transition.notification is not None:
        notifications.append(outbox_row(spec, record["id"], transition.notification, now))


def run(
    spec: TriggerSpec,
    conn: sa.Connection,
    ids: list[int],
    rows: Mapping[int, Mapping[str, Any]],
    prior: Prior,
    chunk: ChunkWrites,
) -> None:
    """Each record's action and compare-and-set update in its own savepoint."""
    for rid, record, previous in chunk.due(ids, rows, prior):
        attempt = previous + 1
        started = utcnow()
        ctx = ActionContext(conn, chunk.now, spec.name, chunk.actor, chunk.run_id, attempt)
        try:
            with conn.begin_nested():
                pending: list[dict] = []
                _apply(spec, conn, record, spec.action(record, ctx), chunk.now, pending)
            chunk.notifications += pending
        except _LostRace:
            chunk.outcomes[rid] = Outcome(rid, "skipped", attempt)
            continue
        except Exception as exc:  # one record's failure never fails its batch
            chunk.fail(conn, record, ctx, previous, started, exc)
            continue
        chunk.record(rid, "succeeded", attempt, previous, started)
