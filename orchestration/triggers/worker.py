"""The worker: apply a trigger's action to a batch of record ids, exactly once per transition.

Per chunk of ``commit_every`` ids, one transaction: the matching rows are re-read under the
trigger's ``where`` (locked with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so a second worker on an
overlapping batch skips them), the actions run, their values are written compare-and-set, and the
notification and history rows are inserted before the commit.

Three paths do a chunk; :func:`chunk_paths` is the one place that picks them (a module each):

====================  ==========================================  ==============================
path                  applies when                                if it cannot take the chunk
====================  ==========================================  ==============================
``sql_statement``     the trigger declares its action as SQL      the Python paths below redo it
                      (``sql_action``) and the store is           (a statement error, e.g. a
                      PostgreSQL. Chunks of                       constraint; or a chunk whose
                      ``sql_action.chunk_size``; the fastest by   rows stayed locked past
                      far; its ``UPDATE`` waits for rows other    ``LOCK_TIMEOUT_ATTEMPTS``)
                      transactions hold instead of skipping them
``set_based``         ``pure_action`` (escalate, expire): every   per record redoes it (the
                      action computed in Python first, then one   action touched ``ctx.conn``,
                      ``UPDATE … WHERE id IN (…) AND <where>``    unhashable values, the
                      per distinct set of values, one multi-row   ``UPDATE`` hit a constraint)
                      insert each for outbox and history rows
``per_record``        always last (actions that use ``ctx.conn``  (never falls back)
                      need it): action and ``UPDATE … WHERE id =
                      :id AND <where>`` in a savepoint per record
====================  ==========================================  ==============================

Either way the per-record semantics are the same: a record that stopped matching (or lost the
compare-and-set) is skipped; an action that raises costs only its own record an attempt, and
after ``max_attempts`` ``on_error`` runs (in a savepoint) and the record is never retried. A
killed worker loses only its open chunk, which a re-run redoes.

Notifications are delivered beside the chunks (:func:`process_batch_delivering`, pipelined):
each committed chunk's keys go to a ``resources.notifier.DeliveryPipeline`` thread, which POSTs
them concurrently while the next chunk transitions; the batch returns once every notification
is acknowledged and marked (or failed and left pending). Records an earlier attempt of the same
batch already moved (a step retry, a re-execution: ``lineage``) are reported apart from records
that stopped matching.

``python -m orchestration.triggers.worker --store-url URL --trigger NAME --ids 1,2,5-9`` runs it
without Dagster (used by the reliability tests, which SIGKILL it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from orchestration.triggers import per_record, set_based, sql_statement
from orchestration.triggers.chunk import ChunkWrites, FallBack, Outcome, read_due
from orchestration.triggers.lock_watch import LockWatch
from orchestration.triggers.scan import chunks
from orchestration.triggers.spec import TriggerSpec, utcnow
from resources.db import SQLITE_WRITER, is_connection_error, is_lock_timeout, retrying

if TYPE_CHECKING:
    from resources.notifier import DeliveryReport, OutboxDelivery, Selection

Log = Callable[[str], None]
# Called after each chunk commits with its notification keys; None: every pending row this batch
# may have left (after a lost connection). A ``DeliveryPipeline`` returns at once.
Deliver = Callable[[sa.Engine, list[str] | None], Any]
EARLIER = "already_done_by_earlier_attempt"
ERROR_LINES = 20  # per-record error lines in a batch's summary, then a count


@dataclass
class BatchResult:
    trigger: str
    outcomes: list[Outcome] = field(default_factory=list)
    notification_keys: list[str] = field(default_factory=list)
    progress: dict[str, Any] = field(default_factory=dict)  # final Progress numbers, if any
    # Record id -> status an earlier attempt of this batch gave it (``lineage``); None: not
    # looked up (a first attempt), so ``counts`` has no ``already_done_by_earlier_attempt``.
    earlier: dict[int, str] | None = None
    delivery: DeliveryReport | None = None  # what the batch's deliveries sent, once done

    def ids(self, status: str) -> list[int]:
        return [o.record_id for o in self.outcomes if o.status == status]

    def done_earlier(self, outcome: Outcome) -> bool:
        """Skipped now because an earlier attempt of this batch moved (or gave up on) it."""
        return (
            outcome.status == "skipped"
            and bool(self.earlier)
            and outcome.record_id in (self.earlier or {})
        )

    def counts(self) -> dict[str, int]:
        """This attempt's outcomes; with ``earlier`` known, records an earlier attempt already
        did are counted as ``already_done_by_earlier_attempt``, not ``skipped`` (which then
        means: stopped matching, or never matched)."""
        out = {"succeeded": 0, "skipped": 0, "failed": 0, "exhausted": 0}
        if self.earlier is not None:
            out[EARLIER] = 0
        for o in self.outcomes:
            out[EARLIER if self.done_earlier(o) else o.status] += 1
        return out


class ChunkPath(Enum):
    """The ways a chunk can be done, fastest first (see the module docstring's table)."""

    SQL_STATEMENT = "sql_statement"
    SET_BASED = "set_based"
    PER_RECORD = "per_record"


def chunk_paths(spec: TriggerSpec, dialect: str) -> tuple[ChunkPath, ...]:
    """The paths a chunk of ``spec`` tries on a store of ``dialect``, in order; each later one
    redoes the chunk when the one before cannot take it.

    One statement needs the action declared as SQL and PostgreSQL (its data-modifying CTEs and
    ``= ANY(:ids)``); set-based needs a ``pure_action`` (computed without the connection, so
    actions can run before any write); per record takes any chunk, so it always comes last.
    """
    paths: list[ChunkPath] = []
    if spec.sql_action is not None and dialect == "postgresql":
        paths.append(ChunkPath.SQL_STATEMENT)
    if spec.pure_action:
        paths.append(ChunkPath.SET_BASED)
    paths.append(ChunkPath.PER_RECORD)
    return tuple(paths)


def process_chunk(
    spec: TriggerSpec,
    conn: sa.Connection,
    ids: list[int],
    paths: Sequence[ChunkPath],
    run_id: str | None,
    actor: str | None,
    log: Log | None = None,
    statement: sql_statement.ChunkStatement | None = None,
) -> tuple[list[Outcome], list[str]]:
    """One chunk in ``conn``'s transaction down ``paths``: its outcomes and notification keys."""
    now = utcnow()
    if ChunkPath.SQL_STATEMENT in paths:
        if statement is None:
            raise ValueError("the one-statement path needs the batch's statement")
        done = sql_statement.run(statement, conn, ids, now, log)
        if done is not None:
            return done
    rows, prior = read_due(spec, conn, ids, now)
    writes = ChunkWrites(spec, run_id, actor, now)
    if ChunkPath.SET_BASED in paths:
        try:
            set_based.run(spec, conn, ids, rows, prior, writes)
        except FallBack as why:
            if log:
                log(f"chunk {ids[0]}..{ids[-1]}: per record ({why})")
            writes = ChunkWrites(spec, run_id, actor, now)
            per_record.run(spec, conn, ids, rows, prior, writes)
    else:
        per_record.run(spec, conn, ids, rows, prior, writes)
    writes.write(conn, ids)
    return [writes.outcomes[i] for i in ids], [n["dedupe_key"] for n in writes.notifications]


def _commit_chunk(spec, engine: sa.Engine, part, paths, run_id, actor, log, statement):
    """One chunk in its own transaction: committed, or rolled back as a whole. On SQLite it
    begins as a writer (``BEGIN IMMEDIATE``, ``resources.db.SQLITE_WRITER``): a deliverer that
    commits between the chunk's read and its first write would otherwise make the upgrade from
    reader to writer fail (SQLITE_BUSY_SNAPSHOT under WAL)."""
    with engine.execution_options(**SQLITE_WRITER).begin() as conn:
        return process_chunk(spec, conn, part, paths, run_id, actor, log, statement)


def _run_chunk(spec, engine: sa.Engine, part, paths, run_id, actor, log, statement):
    """A chunk, redone whole while it fails transiently (``resources.db.retrying``: a lost or
    refused connection over the retry window, deadlock, busy SQLite). Lock timeouts are named in
    the log; after ``LOCK_TIMEOUT_ATTEMPTS`` of them the chunk goes the Python way, whose read
    skips locked rows, and the rows held are reported skipped (the sensor finds them again).

    Safe because nothing of a failed attempt committed: each attempt re-reads and re-checks every
    record. (A connection lost during COMMIT may have committed: the retry then finds those
    records moved and skips them; their notifications are swept by the next delivery.)
    """
    watch = LockWatch(spec, engine, part, log)
    python_paths = tuple(p for p in paths if p is not ChunkPath.SQL_STATEMENT)

    def attempt():
        use = python_paths if watch.skip_locked else paths
        try:
            outcomes, keys = _commit_chunk(spec, engine, part, use, run_id, actor, log, statement)
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
    earlier: dict[int, str] | None = None,
) -> BatchResult:
    """Apply ``spec`` to each of ``ids``; see the module docstring for the guarantees.

    ``progress`` is called with the size of each chunk once it is committed; ``earlier`` is what
    earlier attempts of this batch did (``lineage.done_earlier``), for the counts.
    """
    result = BatchResult(spec.name, earlier=earlier)
    actor = actor or spec.actor
    ordered = sorted({int(i) for i in ids})
    paths = chunk_paths(spec, engine.dialect.name)
    statement, size = None, spec.commit_every
    if ChunkPath.SQL_STATEMENT in paths:
        statement = sql_statement.ChunkStatement(spec, run_id, actor)
        size = spec.sql_action.chunk_size  # type: ignore[union-attr]
    lost_connection = False
    for part in chunks(ordered, commit_every or size):
        outcomes, keys, lost = _run_chunk(spec, engine, part, paths, run_id, actor, log, statement)
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
        errors = [o for o in result.outcomes if o.error]
        for o in errors[:ERROR_LINES]:
            log(f"  record {o.record_id} attempt {o.attempt} {o.status}: {o.error}")
        if len(errors) > ERROR_LINES:
            log(f"  … and {len(errors) - ERROR_LINES} more record error(s) (the step's metadata)")
    return result


def process_batch_delivering(
    spec: TriggerSpec,
    engine: sa.Engine,
    ids: Iterable[int],
    delivery: OutboxDelivery,
    *,
    leftovers: Selection | None = None,
    **kwargs: Any,
) -> BatchResult:
    """:func:`process_batch` with its notifications delivered beside it (pipelined): each
    committed chunk's keys are delivered while the next chunk transitions; returns once every
    delivery is done (``result.delivery``), raising if one failed past the retry window.

    ``leftovers`` (a retried or re-executed step: what its earlier attempts left pending) is
    delivered first, on the same thread.
    """
    with delivery.pipeline(engine) as pipe:
        if leftovers is not None:
            pipe.submit_selection(leftovers, "notifications left pending by earlier attempts")
        result = process_batch(spec, engine, ids, deliver=pipe, **kwargs)
    result.delivery = pipe.report
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
    return process_batch_delivering(spec, engine, record_ids, delivery, actor=actor, log=log)


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
    from resources.notifier import OutboxDelivery, Selection
    from resources.record_store import make_engine

    p = argparse.ArgumentParser(description="Run one trigger worker batch without Dagster.")
    p.add_argument("--store-url", required=True)
    p.add_argument("--trigger", required=True)
    p.add_argument("--ids", required=True, help="e.g. 1,2,5-9")
    p.add_argument("--webhook-url", default=None)
    p.add_argument("--commit-every", type=int, default=None)
    p.add_argument("--run-id", default=None)
    p.add_argument("--sweep", action="store_true", help="first deliver every pending notification")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="notifications POSTed at once (default: the notifier's)",
    )
    args = p.parse_args(argv)
    spec = get_trigger(args.trigger)
    extra = {} if args.concurrency is None else {"concurrency": args.concurrency}
    try:
        delivery = OutboxDelivery(webhook_url=args.webhook_url, log=_stderr, **extra)
    except ValueError as exc:  # a bad --concurrency: the one line
        _stderr(f"error: {exc}")
        return 1
    try:
        engine = make_engine(args.store_url)
        result = process_batch_delivering(
            spec,
            engine,
            parse_ids(args.ids),
            delivery,
            leftovers=Selection() if args.sweep else None,
            run_id=args.run_id,
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
