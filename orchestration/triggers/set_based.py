"""The set-based path, for a ``pure_action`` (escalate, expire): a round trip per chunk.

Every action is computed in Python first (with no connection: a pure action must not use
``ctx.conn``), then one compare-and-set ``UPDATE … WHERE id IN (…) AND <where> RETURNING id`` per
distinct set of values (usually one), and one multi-row insert each for outbox and history rows.
Same outcomes as the per-record path; when the chunk cannot be done this way (the action touched
``ctx.conn``, unhashable values, the ``UPDATE`` hit a constraint) ``FallBack`` is raised before
anything is written and the chunk is redone per record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from orchestration.triggers.chunk import (
    ChunkWrites,
    FallBack,
    Outcome,
    Prior,
    all_or_fall_back,
    id_in,
    outbox_row,
)
from orchestration.triggers.spec import ActionContext, Transition, TriggerSpec, utcnow


class _ConnectionUsed(BaseException):
    """A ``pure_action`` touched ``ctx.conn``; the chunk goes the per-record way instead.

    A ``BaseException`` so that an action's own ``except Exception`` cannot swallow it.
    """


class _NoConnection:
    """``ctx.conn`` for the set-based path: a pure action must not use it."""

    def __getattr__(self, name: str) -> Any:
        raise _ConnectionUsed(name)


def _values_key(values: Mapping[str, Any]):
    return tuple(sorted(values.items()))


def _group_update(conn, spec: TriggerSpec, key, records: list[Mapping[str, Any]], now):
    """``UPDATE … SET <values> WHERE (id[, cas columns]) IN (…) AND <where> RETURNING id``."""
    t = spec.table
    if spec.cas_columns:
        cols = [t.c.id, *(t.c[c] for c in spec.cas_columns)]
        target = sa.tuple_(*cols).in_(
            [(r["id"], *(r[c] for c in spec.cas_columns)) for r in records]
        )
    else:
        target = id_in(conn, t.c.id, [r["id"] for r in records])
    return t.update().where(target, spec.where_clause(now)).values(**dict(key)).returning(t.c.id)


def run(
    spec: TriggerSpec,
    conn: sa.Connection,
    ids: list[int],
    rows: Mapping[int, Mapping[str, Any]],
    prior: Prior,
    chunk: ChunkWrites,
) -> None:
    """A ``pure_action`` chunk: actions computed in Python, then one compare-and-set ``UPDATE …
    WHERE id IN (…) AND <where> RETURNING id`` per distinct set of values (usually one).

    Records whose action raised take the per-record failure path; a record the ``UPDATE`` did
    not return changed under us and is skipped, as a lost race is in the per-record path.
    Raises ``FallBack`` (before writing anything) when the chunk cannot be done this way.
    """
    planned: list[tuple[Mapping[str, Any], int, Any, Transition]] = []
    failures = []
    no_conn = _NoConnection()
    for _rid, record, previous in chunk.due(ids, rows, prior):
        attempt = previous + 1
        started = utcnow()
        ctx = ActionContext(no_conn, chunk.now, spec.name, chunk.actor, chunk.run_id, attempt)
        try:
            transition = spec.action(record, ctx)
        except _ConnectionUsed as exc:
            raise FallBack(f"action used ctx.conn.{exc}") from None
        except Exception as exc:
            failures.append((record, attempt, previous, started, exc))
            continue
        planned.append((record, previous, started, transition))
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for record, _previous, _started, transition in planned:
        if transition.values:
            try:
                groups.setdefault(_values_key(transition.values), []).append(record)
            except TypeError:  # unhashable value (e.g. a dict for a JSON column)
                raise FallBack("unhashable transition values") from None
    updated: set[int] = set()
    with all_or_fall_back(conn, "set-based UPDATE"):  # a fallback starts from clean rows
        for key, records in groups.items():
            stmt = _group_update(conn, spec, key, records, chunk.now)
            updated.update(conn.execute(stmt).scalars())
    for record, previous, started, transition in planned:
        rid = record["id"]
        attempt = previous + 1
        if transition.values and rid not in updated:
            chunk.outcomes[rid] = Outcome(rid, "skipped", attempt)
            continue
        if transition.notification is not None:
            chunk.notifications.append(outbox_row(spec, rid, transition.notification, chunk.now))
        chunk.record(rid, "succeeded", attempt, previous, started)
    for record, attempt, previous, started, exc in failures:
        ctx = ActionContext(conn, chunk.now, spec.name, chunk.actor, chunk.run_id, attempt)
        chunk.fail(conn, record, ctx, previous, started, exc)
