"""The worker: apply a trigger's action to a batch of record ids, exactly once per transition.

Per chunk of ``commit_every`` ids, one transaction: the matching rows are re-read under the
trigger's ``where`` (locked with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so a second worker on an
overlapping batch skips them), the actions run, their values are written compare-and-set, and the
notification and history rows are inserted before the commit. Three ways to run a chunk:

- one statement, for a trigger that also declares its action as SQL (``sql_action``) on
  PostgreSQL: ``sql_chunk`` (chunks of ``sql_action.chunk_size``). The fastest by far; its
  ``UPDATE`` waits for rows other transactions hold instead of skipping them (see there).
- set-based, for a ``pure_action`` (escalate, expire): every action is computed in Python first,
  then one ``UPDATE … WHERE id IN (…) AND <where> RETURNING id`` per distinct set of values, and
  one multi-row insert each for outbox and history rows. A round trip per chunk, not per record.
- per record, otherwise (actions that use ``ctx.conn``): action and ``UPDATE … WHERE id = :id AND
  <where>`` inside a savepoint per record. A pure chunk falls back to this when it cannot be done
  set-based (the action touched ``ctx.conn``, or the ``UPDATE`` hit a constraint).

Either way the per-record semantics are the same: a record that stopped matching (or lost the
compare-and-set) is skipped; an action that raises costs only its own record an attempt, and
after ``max_attempts`` ``on_error`` runs (in a savepoint) and the record is never retried. A
killed worker loses only its open chunk, which a re-run redoes. After each commit the chunk's
notifications are delivered (``resources.notifier``).

``python -m orchestration.triggers.worker --store-url URL --trigger NAME --ids 1,2,5-9`` runs it
without Dagster (used by the reliability tests, which SIGKILL it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from orchestration.triggers import sql_chunk
from orchestration.triggers.models import notification_outbox, trigger_attempts, trigger_history
from orchestration.triggers.scan import chunks
from orchestration.triggers.spec import (
    ActionContext,
    Notification,
    Transition,
    TriggerSpec,
    utcnow,
)
from resources.db import is_connection_error, is_lock_timeout, reason, retrying

_BIGINT_ARRAY = postgresql.ARRAY(sa.BigInteger)

Log = Callable[[str], None]
Deliver = Callable[[sa.Engine, list[str] | None], Any]  # None: every pending row


@dataclass
class Outcome:
    record_id: int
    status: str  # succeeded | skipped | failed | exhausted
    attempt: int = 0
    error: str | None = None


@dataclass
class BatchResult:
    trigger: str
    outcomes: list[Outcome] = field(default_factory=list)
    notification_keys: list[str] = field(default_factory=list)
    progress: dict[str, Any] = field(default_factory=dict)  # final Progress numbers, if any

    def ids(self, status: str) -> list[int]:
        return [o.record_id for o in self.outcomes if o.status == status]

    def counts(self) -> dict[str, int]:
        out = {"succeeded": 0, "skipped": 0, "failed": 0, "exhausted": 0}
        for o in self.outcomes:
            out[o.status] += 1
        return out


class _LostRace(Exception):
    """The compare-and-set matched no row: someone else changed the record first."""


class _ConnectionUsed(BaseException):
    """A ``pure_action`` touched ``ctx.conn``; the chunk goes the per-record way instead.

    A ``BaseException`` so that an action's own ``except Exception`` cannot swallow it.
    """


class _NoConnection:
    """``ctx.conn`` for the set-based path: a pure action must not use it."""

    def __getattr__(self, name: str) -> Any:
        raise _ConnectionUsed(name)


class _FallBack(Exception):
    """The set-based path cannot be used for this chunk; redo it per record."""


def _insert(conn: sa.Connection, table: sa.Table):
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def _outbox_row(spec: TriggerSpec, record_id: int, note: Notification, now, suffix: str = ""):
    return {
        "dedupe_key": note.dedupe_key or f"{spec.name}:{record_id}{suffix}",
        "channel": note.channel,
        "payload": note.payload,
        "created_at": now,
        "attempts": 0,
    }


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
        notifications.append(_outbox_row(spec, record["id"], transition.notification, now))


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
        notifications.append(
            _outbox_row(spec, record["id"], transition.notification, now, ":error")
        )


@dataclass
class _Chunk:
    """What one chunk's transaction writes besides the records: collected, then bulk-inserted."""

    spec: TriggerSpec
    run_id: str | None
    actor: str | None
    now: Any
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    history: dict[int, dict] = field(default_factory=dict)
    attempts_rows: list[dict] = field(default_factory=list)
    notifications: list[dict] = field(default_factory=list)

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


def _id_in(conn: sa.Connection, column: sa.ColumnElement, ids: list[int]):
    """``column IN (…)``; on PostgreSQL ``column = ANY(:array)``: one parameter, not 500."""
    if conn.dialect.name == "postgresql":
        return column == sa.any_(sa.bindparam(None, list(ids), type_=_BIGINT_ARRAY))
    return column.in_(list(ids))


def _read(spec: TriggerSpec, conn: sa.Connection, ids: list[int], now):
    """The chunk's records that still match (locked on PostgreSQL) and their prior attempts."""
    t = spec.table
    q = sa.select(t).where(_id_in(conn, t.c.id, ids), spec.where_clause(now)).order_by(t.c.id)
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
                _id_in(conn, trigger_attempts.c.record_id, list(rows)),
            )
        )
    }
    return rows, prior


def _per_record(spec, conn, ids, rows, prior, chunk: _Chunk) -> None:
    """Each record's action and compare-and-set update in its own savepoint."""
    for rid in ids:
        record = rows.get(rid)
        previous, status = prior.get(rid, (0, None))
        if record is None or status == "exhausted":
            chunk.outcomes[rid] = Outcome(rid, "skipped")
            continue
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
        target = _id_in(conn, t.c.id, [r["id"] for r in records])
    return t.update().where(target, spec.where_clause(now)).values(**dict(key)).returning(t.c.id)


@contextmanager
def _all_or_fall_back(conn: sa.Connection, what: str) -> Iterator[None]:
    """Set-wise writes in a savepoint: all of them or none.

    A statement error (e.g. a constraint one record breaks) rolls them back and raises
    ``_FallBack``, so the chunk is redone record by record and only the culprit fails; an
    ``OperationalError`` (lock timeout, deadlock, busy SQLite) propagates and the whole chunk is
    retried.
    """
    try:
        with conn.begin_nested():
            yield
    except sa.exc.OperationalError:
        raise
    except sa.exc.DBAPIError as exc:
        raise _FallBack(f"{what} failed: {exc.orig!r}") from None


def _set_based(spec, conn, ids, rows, prior, chunk: _Chunk) -> None:
    """A ``pure_action`` chunk: actions computed in Python, then one compare-and-set ``UPDATE …
    WHERE id IN (…) AND <where> RETURNING id`` per distinct set of values (usually one).

    Records whose action raised take the per-record failure path; a record the ``UPDATE`` did
    not return changed under us and is skipped, as a lost race is in the per-record path.
    Raises ``_FallBack`` (before writing anything) when the chunk cannot be done this way.
    """
    planned: list[tuple[Mapping[str, Any], int, Any, Transition]] = []
    failures = []
    no_conn = _NoConnection()
    for rid in ids:
        record = rows.get(rid)
        previous, status = prior.get(rid, (0, None))
        if record is None or status == "exhausted":
            chunk.outcomes[rid] = Outcome(rid, "skipped")
            continue
        attempt = previous + 1
        started = utcnow()
        ctx = ActionContext(no_conn, chunk.now, spec.name, chunk.actor, chunk.run_id, attempt)
        try:
            transition = spec.action(record, ctx)
        except _ConnectionUsed as exc:
            raise _FallBack(f"action used ctx.conn.{exc}") from None
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
                raise _FallBack("unhashable transition values") from None
    updated: set[int] = set()
    with _all_or_fall_back(conn, "set-based UPDATE"):  # a fallback starts from clean rows
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
            chunk.notifications.append(_outbox_row(spec, rid, transition.notification, chunk.now))
        chunk.record(rid, "succeeded", attempt, previous, started)
    for record, attempt, previous, started, exc in failures:
        ctx = ActionContext(conn, chunk.now, spec.name, chunk.actor, chunk.run_id, attempt)
        chunk.fail(conn, record, ctx, previous, started, exc)


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
    stmt = _insert(conn, table)
    if conflict:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict))
    conn.execute(stmt, rows)


def _write_bookkeeping(conn: sa.Connection, chunk: _Chunk, ids: list[int]) -> None:
    """Outbox, history and attempt rows of the chunk: one multi-row statement each."""
    if chunk.notifications:
        _bulk_insert(conn, notification_outbox, chunk.notifications, conflict=("dedupe_key",))
    history = [chunk.history[i] for i in ids if i in chunk.history]
    if history:
        _bulk_insert(conn, trigger_history, history)
    if chunk.attempts_rows:
        stmt = _insert(conn, trigger_attempts)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["trigger", "record_id"],
                set_={
                    k: stmt.excluded[k] for k in ("attempts", "status", "last_error", "updated_at")
                },
            ),
            chunk.attempts_rows,
        )


def _sql_chunk(
    statement: sql_chunk.ChunkStatement, conn: sa.Connection, ids: list[int], now, log: Log | None
) -> tuple[list[Outcome], list[str]] | None:
    """The chunk as one statement (``sql_chunk``); None when it must be redone the Python way."""
    try:
        with _all_or_fall_back(conn, "statement"):
            moved = statement.run(conn, ids, now)
    except _FallBack as why:
        if log:
            log(f"chunk {ids[0]}..{ids[-1]}: Python path ({why})")
        return None
    by_id = {rid: (attempt, key) for rid, attempt, key in moved}
    outcomes = [
        Outcome(rid, "succeeded", by_id[rid][0]) if rid in by_id else Outcome(rid, "skipped")
        for rid in ids
    ]
    return outcomes, [key for _attempt, key in by_id.values() if key is not None]


def _process_chunk(
    spec: TriggerSpec,
    conn: sa.Connection,
    ids: list[int],
    run_id,
    actor,
    log: Log | None = None,
    statement: sql_chunk.ChunkStatement | None = None,
) -> tuple[list[Outcome], list[str]]:
    now = utcnow()
    if statement is not None:
        done = _sql_chunk(statement, conn, ids, now, log)
        if done is not None:
            return done
    rows, prior = _read(spec, conn, ids, now)
    chunk = _Chunk(spec, run_id, actor, now)
    if spec.pure_action:
        try:
            _set_based(spec, conn, ids, rows, prior, chunk)
        except _FallBack as why:
            if log:
                log(f"chunk {ids[0]}..{ids[-1]}: per record ({why})")
            chunk = _Chunk(spec, run_id, actor, now)
            _per_record(spec, conn, ids, rows, prior, chunk)
    else:
        _per_record(spec, conn, ids, rows, prior, chunk)
    _write_bookkeeping(conn, chunk, ids)
    return [chunk.outcomes[i] for i in ids], [n["dedupe_key"] for n in chunk.notifications]


# Lock timeouts on one chunk before it is redone skipping the rows another session holds.
LOCK_TIMEOUT_ATTEMPTS = 3


def _commit_chunk(spec, engine: sa.Engine, part, run_id, actor, log, statement):
    """One chunk in its own transaction: committed, or rolled back as a whole."""
    with engine.begin() as conn:
        return _process_chunk(spec, conn, part, run_id, actor, log, statement)


def _lock_holders(engine: sa.Engine, spec: TriggerSpec, ids: list[int]) -> tuple[list[int], str]:
    """Which of the chunk's due records another session holds, and who (PostgreSQL; cheap).

    Due ids minus those ``FOR UPDATE SKIP LOCKED`` returns are the held ones; a held row's
    ``xmax`` is its locker's transaction id, whose lock in ``pg_locks`` names the backend pid.
    Read in a transaction that is rolled back at once; it never waits for a row.
    """
    t = spec.table
    with engine.connect() as conn:
        now = utcnow()
        due = sa.select(t.c.id).where(_id_in(conn, t.c.id, ids), spec.where_clause(now))
        every = set(conn.execute(due).scalars())
        free = set(conn.execute(due.with_for_update(skip_locked=True)).scalars())
        held = sorted(every - free)
        who = "holder unknown"
        if held:
            name = conn.dialect.identifier_preparer.format_table(t)
            rows = conn.execute(
                sa.text(
                    "SELECT DISTINCT a.pid, a.state, a.application_name, a.xact_start "
                    f"FROM {name} r JOIN pg_locks l ON l.locktype = 'transactionid' "
                    "AND l.transactionid = r.xmax AND l.granted "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE r.id = ANY(:ids)"
                ),
                {"ids": held},
            ).all()
            if rows:
                who = "; ".join(
                    f"pid {pid} ({state or '?'}, application {app or '?'!r}, transaction open "
                    f"since {start.isoformat(timespec='seconds') if start else '?'})"
                    for pid, state, app, start in rows
                )
        conn.rollback()
    return held, who


def _ids_text(ids: list[int], most: int = 50) -> str:
    shown = ", ".join(str(i) for i in ids[:most])
    return shown + (f" … ({len(ids)} in all)" if len(ids) > most else "")


@dataclass
class _LockWatch:
    """A chunk's lock timeouts: what was waited on, and when to stop waiting for it."""

    spec: TriggerSpec
    engine: sa.Engine
    part: list[int]
    log: Log | None
    timeouts: int = 0
    held: list[int] = field(default_factory=list)
    who: str = ""
    lost_connection: bool = False

    @property
    def skip_locked(self) -> bool:
        return self.timeouts >= LOCK_TIMEOUT_ATTEMPTS

    def saw(self, exc: BaseException) -> None:
        """A lock timeout: name the table, the held record ids and their holder in the log."""
        self.timeouts += 1
        try:
            self.held, self.who = _lock_holders(self.engine, self.spec, self.part)
        except Exception as diag_exc:  # the diagnosis must never hide the real failure
            self.held, self.who = [], f"holder not found ({reason(diag_exc)})"
        if self.log:
            then = (
                "next attempt skips the rows held"
                if self.skip_locked
                else f"retried whole ({self.timeouts} of {LOCK_TIMEOUT_ATTEMPTS} lock timeouts)"
            )
            self.log(
                f"chunk {self.part[0]}..{self.part[-1]}: waited past lock_timeout for table "
                f"{self.spec.table.name}, record(s) {_ids_text(self.held) or '?'} held by another "
                f"session: {self.who}; {then}"
            )

    def name_skipped(self, outcomes: list[Outcome]) -> list[Outcome]:
        """After a skip-locked pass: the held records that were skipped say why."""
        held = set(self.held)
        note = f"locked by another session past lock_timeout ({self.who}); left for a later pass"
        skipped = []
        for o in outcomes:
            if o.status == "skipped" and o.record_id in held and o.error is None:
                o.error = note
                skipped.append(o.record_id)
        if skipped and self.log:
            self.log(
                f"chunk {self.part[0]}..{self.part[-1]}: skipped {len(skipped)} record(s) of "
                f"{self.spec.table.name} locked by another session ({self.who}): "
                f"{_ids_text(skipped)}; the rest committed, these move on a later pass"
            )
        return outcomes


def _run_chunk(spec, engine: sa.Engine, part, run_id, actor, log, statement):
    """A chunk, redone whole while it fails transiently (``resources.db.retrying``: a lost or
    refused connection over the retry window, deadlock, busy SQLite). Lock timeouts are named in
    the log; after ``LOCK_TIMEOUT_ATTEMPTS`` of them the chunk goes the Python way, whose read
    skips locked rows, and the rows held are reported skipped (the sensor finds them again).

    Safe because nothing of a failed attempt committed: each attempt re-reads and re-checks every
    record. (A connection lost during COMMIT may have committed: the retry then finds those
    records moved and skips them; their notifications are swept by the next delivery.)
    """
    watch = _LockWatch(spec, engine, part, log)

    def attempt():
        use = None if watch.skip_locked else statement
        try:
            outcomes, keys = _commit_chunk(spec, engine, part, run_id, actor, log, use)
        except sa.exc.DBAPIError as exc:
            if is_lock_timeout(exc) and engine.dialect.name == "postgresql":
                watch.saw(exc)
            watch.lost_connection |= is_connection_error(exc)
            raise
        if watch.skip_locked:
            outcomes = watch.name_skipped(outcomes)
        return outcomes, keys

    outcomes, keys = retrying(f"chunk {part[0]}..{part[-1]}", log)(attempt)
    return outcomes, keys, watch.lost_connection


def process_batch(
    spec: TriggerSpec,
    engine: sa.Engine,
    ids: Iterable[int],
    *,
    run_id: str | None = None,
    actor: str | None = None,
    deliver: Deliver | None = None,
    log: Log | None = None,
    commit_every: int | None = None,
    progress: Callable[[int], Any] | None = None,
) -> BatchResult:
    """Apply ``spec`` to each of ``ids``; see the module docstring for the guarantees.

    ``progress`` is called with the size of each chunk once it is committed.
    """
    result = BatchResult(spec.name)
    actor = actor or spec.actor
    ordered = sorted({int(i) for i in ids})
    statement, size = None, spec.commit_every
    if spec.sql_action is not None and engine.dialect.name == "postgresql":
        statement = sql_chunk.ChunkStatement(spec, run_id, actor)
        size = spec.sql_action.chunk_size
    lost_connection = False
    for part in chunks(ordered, commit_every or size):
        outcomes, keys, lost = _run_chunk(spec, engine, part, run_id, actor, log, statement)
        lost_connection |= lost
        result.outcomes += outcomes
        result.notification_keys += keys
        if deliver and keys:
            deliver(engine, keys)
        if progress:
            progress(len(part))
    if lost_connection and deliver:
        # A connection lost at COMMIT may have committed unseen: the retry found those records
        # moved (skipped) and does not know their keys. Their outbox rows are pending: sweep.
        if log:
            log("a connection was lost during the batch: delivering every pending notification")
        deliver(engine, None)
    if log:
        counts = result.counts()
        log(f"trigger {spec.name}: {counts} of {len(ordered)} record(s)")
        for o in result.outcomes:
            if o.error:
                log(f"  record {o.record_id} attempt {o.attempt} {o.status}: {o.error}")
    return result


def run_trigger(
    name_or_spec: str | TriggerSpec,
    record_ids: Sequence[int],
    *,
    store_url: str | None = None,
    engine: sa.Engine | None = None,
    webhook_url: str | None = None,
    actor: str | None = None,
    log: Log | None = None,
) -> BatchResult:
    """Run a trigger for the given records now, in this process (AshOban's ``run_trigger``).

    Records that do not match the trigger's ``where`` are skipped, exactly as in a sensor-started
    run; the Dagster equivalent is launching the trigger's job with ``record_ids`` in its config.
    """
    from orchestration.triggers.catalog import get_trigger
    from resources.notifier import OutboxDelivery
    from resources.record_store import RecordStoreResource

    spec = get_trigger(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    if engine is None:
        store = RecordStoreResource(url=store_url) if store_url else RecordStoreResource()
        from resources.record_store import ensure_upgraded

        ensure_upgraded(store.url)
        engine = store.engine()
    delivery = OutboxDelivery(webhook_url=webhook_url, log=log)
    return process_batch(
        spec,
        engine,
        record_ids,
        actor=actor,
        deliver=lambda eng, keys: delivery.deliver_pending(eng, keys),
        log=log,
    )


def parse_ids(text: str) -> list[int]:
    """``1,2,5-9`` → [1, 2, 5, 6, 7, 8, 9]."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """The CLI: counts as JSON on stdout, retries and skips on stderr; a store that stays
    unreachable past the retry window, or a bad ``RECORD_STORE_*`` setting, is one line and exit 1
    (never a traceback, never the password)."""
    from orchestration.triggers.catalog import get_trigger
    from resources.db import RecordStoreSettingError, is_connection_error, unreachable_message
    from resources.notifier import OutboxDelivery
    from resources.record_store import make_engine

    p = argparse.ArgumentParser(description="Run one trigger worker batch without Dagster.")
    p.add_argument("--store-url", required=True)
    p.add_argument("--trigger", required=True)
    p.add_argument("--ids", required=True, help="e.g. 1,2,5-9")
    p.add_argument("--webhook-url", default=None)
    p.add_argument("--commit-every", type=int, default=None)
    p.add_argument("--run-id", default=None)
    p.add_argument("--sweep", action="store_true", help="first deliver older pending notifications")
    args = p.parse_args(argv)
    spec = get_trigger(args.trigger)
    try:
        engine = make_engine(args.store_url)
        delivery = OutboxDelivery(webhook_url=args.webhook_url)  # retry lines: logging
        if args.sweep:
            delivery.deliver_pending(engine)
        result = process_batch(
            spec,
            engine,
            parse_ids(args.ids),
            run_id=args.run_id,
            deliver=lambda eng, keys: delivery.deliver_pending(eng, keys),
            commit_every=args.commit_every,
            log=_stderr,
        )
    except RecordStoreSettingError as exc:
        _stderr(f"error: {exc}")
        return 1
    except sa.exc.DBAPIError as exc:
        if not is_connection_error(exc):
            raise
        _stderr(
            f"error: {unreachable_message(args.store_url, exc)}; gave up after the retry "
            "window (RECORD_STORE_RETRY_WINDOW_S); re-run the same command to finish"
        )
        return 1
    print(json.dumps(result.counts()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
