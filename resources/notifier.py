"""Notifications: written to ``notification_outbox`` inside a state change's transaction, delivered
after commit by this module (webhook POSTs by ``resources.webhook_senders``; without a webhook URL,
log only).

Delivery (:class:`OutboxDelivery`)
----------------------------------
The pending rows wanted (given keys, or every pending row, optionally created since a time) are
read by id, then delivered in *claim batches* of ``claim_batch`` rows (``4 x concurrency``):

1. claim: ``UPDATE … SET attempts = attempts + 1 WHERE id IN (…) AND delivered_at IS NULL
   RETURNING …``;
2. POST every claimed row, ``concurrency`` at once (a thread pool; each thread keeps one HTTP/1.1
   connection alive, so thousands of notifications open ``concurrency`` connections, not
   thousands), each with ``Idempotency-Key: <dedupe_key>``;
3. mark: one ``UPDATE … SET delivered_at`` for the delivered rows, one ``UPDATE … SET last_error``
   per distinct error for the others (they stay pending, retried by a later delivery); commit.

Two batches are open at once: the next one is claimed and its POSTs queued while the current
one's last POSTs finish and it is marked, so the POST threads never wait for a claim or a commit.

Two deliverers never both send a row:

- PostgreSQL: the claim goes through ``SELECT … FOR UPDATE SKIP LOCKED`` and its transaction
  stays open until the mark commits; a row another deliverer holds is skipped (left to it). The
  locks last at most ``2 x 4`` rounds of POSTs, each at most ``timeout_seconds`` (8 x 5 s by
  default; ``timeout_seconds`` is at most 30 s, so 8 x 30 s = 240 s), below the record store's
  300 s idle-in-transaction bound; nobody else writes those rows.
- SQLite: the claim commits at once (SQLite has one write lock, which the worker's next chunk
  needs: held across POSTs it would stop the worker, and a deliverer claiming batch after batch
  would starve it), and the deliverers of one database file take turns through an OS lock,
  ``flock`` on ``<database file>-delivery.lock`` (released by the OS if the holder dies), held
  from a delivery's first claim to its last mark (the path resolved through symlinks: one lock
  per database file). A second deliverer waits, polling the lock and its ``stop`` event, then
  finds the rows delivered; after ``lock_wait_seconds`` (60 s) it gives up with one log line and
  its rows stay pending for the next delivery or sweep (a step being terminated stops waiting at
  once).

The repeat window, precisely. A row is POSTed a second time only when its batch was not marked:

- the process dies (SIGKILL, OOM, lost node) after a batch's first POST and before its mark
  commits: that batch's rows are pending (on PostgreSQL nothing of the batch committed, not even
  ``attempts``) and the next delivery POSTs them again, each under the same ``Idempotency-Key``,
  which the receiver uses to drop the repeat. So a kill repeats at most the POSTs of the two open
  batches, ``2 x claim_batch`` (256 by default); a row marked delivered is never POSTed again.
- the connection is lost or the mark fails in a live process: the batch is redone over the
  record store's retry window (``resources.db.retrying``, one log line per retry); a row whose
  POST was already answered 2xx is marked without a second POST, so only POSTs that were not
  acknowledged are repeated.

Pipelined delivery (:class:`DeliveryPipeline`): the worker hands each committed chunk's keys to
``submit`` and goes on with the next chunk while one background thread delivers them, in order;
``close`` waits for every delivery, so a batch ends with its notifications acknowledged and
marked (or failed and pending).

The log gets one summary line per delivery (per chunk): delivered, failed with the first few
errors, elapsed. Never one line per notification, and never a payload (a title or tenant can be
sensitive); errors are the receiver's status and at most 200 characters of its answer, with the
webhook URL (and its path, e.g. a Slack token) redacted. Retry lines of a pipeline's thread are
passed to the log by the caller's thread (``submit``, ``close``), so a Dagster run log is only
ever written from the step's own thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import dagster as dg
import sqlalchemy as sa
from pydantic import BeforeValidator, Field
from sqlalchemy.dialects import postgresql

from resources.db import as_utc, is_transient, reason, retrying
from resources.errors import FinalFailure
from resources.webhook_senders import Sender, Wait, make_sender, webhook_url_problem

WEBHOOK_URL_ENV = "TRIGGERS_WEBHOOK_URL"

DEFAULT_CONCURRENCY = 32  # bench/triggers_bench.py: 16 fell short of 2,000/s on 2 CPUs, 32 met it
MAX_CONCURRENCY = 128
# Claim batch = this many rounds of ``concurrency`` POSTs: fewer transactions per row, and
# the repeat window after a kill (the open batches) stays small.
ROUNDS_PER_BATCH = 4
BATCHES_IN_FLIGHT = 2  # claimed batches open at once (``deliver``)
READ_PAGE = 1000  # ids per read of the outbox (and keys per ``IN``)
LOG_ONLY_BATCH = 1000  # rows marked per statement without a webhook
FIRST_ERRORS = 3  # errors quoted in a summary line
DEFAULT_TIMEOUT_S = 5.0
MIN_TIMEOUT_S = 0.1
# A PostgreSQL claim's transaction stays open while BATCHES_IN_FLIGHT x ROUNDS_PER_BATCH = 8
# rounds of POSTs end, each waiting at most ``timeout_seconds``: 8 x 30 s = 240 s, below the
# record store's idle-in-transaction bound (RECORD_STORE_IDLE_IN_TRANSACTION_TIMEOUT_MS, 300 s),
# past which the server would end the session and the batch would be POSTed again.
MAX_TIMEOUT_S = 30.0
# SQLite: how long a delivery waits for another deliverer's ``<db>-delivery.lock`` before it
# leaves its rows pending (one log line). The holder is sending (at >= 2,000/s, 60 s is ~100,000
# notifications) and, if it is a sweep, sends these rows too; a step should not stall longer than
# the record store's own retry window (RECORD_STORE_RETRY_WINDOW_S, 60 s) for someone else's work.
DELIVERY_LOCK_WAIT_S = 60.0
LOCK_POLL_S = 0.1  # between tries of the lock (and checks of ``stop``)

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
_INT_ARRAY = postgresql.ARRAY(sa.Integer)
_MEMORY_DELIVERY_LOCK = threading.Lock()
_logger = logging.getLogger(__name__)


def concurrency_problem(value: object) -> str | None:
    """Why ``value`` cannot be the number of POSTs in flight, or None when it can."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_CONCURRENCY:
        return None
    return (
        f"triggers_notifier concurrency={value!r:.20} is not valid: set a whole number from 1 to "
        f"{MAX_CONCURRENCY} (notifications POSTed at once; default {DEFAULT_CONCURRENCY})"
    )


def _checked(problem_of: Callable[[Any], str | None]) -> Callable[[Any], Any]:
    """A field validator from a ``*_problem`` function: the value, or its one line raised."""

    def check(value: Any) -> Any:
        problem = problem_of(value)
        if problem:
            # A dagster.Failure, not a ValueError: pydantic passes it through as this one line.
            raise FinalFailure(problem)
        return value

    return check


Concurrency = Annotated[int, BeforeValidator(_checked(concurrency_problem))]


def timeout_problem(value: object) -> str | None:
    """Why ``value`` cannot be one POST's timeout in seconds, or None when it can."""
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and MIN_TIMEOUT_S <= value <= MAX_TIMEOUT_S
    ):
        return None
    return (
        f"triggers_notifier timeout_seconds={value!r:.20} is not valid: set a number of seconds "
        f"from {MIN_TIMEOUT_S:g} to {MAX_TIMEOUT_S:g} (how long a POST waits for the receiver; "
        f"default {DEFAULT_TIMEOUT_S:g})"
    )


TimeoutSeconds = Annotated[float, BeforeValidator(_checked(timeout_problem))]


def _webhook_url_field(value: object) -> object:
    if isinstance(value, str) and value:
        problem = webhook_url_problem(
            value, f"triggers_notifier webhook_url (default ${WEBHOOK_URL_ENV})"
        )
        if problem:
            raise FinalFailure(problem)
    return value or None


WebhookUrl = Annotated[str | None, BeforeValidator(_webhook_url_field)]


@dataclass
class DeliveryReport:
    """What one delivery (or all of a pipeline's) sent, and what failed and stays pending."""

    delivered: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, other: DeliveryReport) -> None:
        """Fold a later delivery in: a key it delivered is no longer failed (an earlier
        delivery of the same run failed it, a later one sent it)."""
        self.delivered += other.delivered
        for key, error in other.failed.items():
            self.failed[key] = error
        for key in other.delivered:
            self.failed.pop(key, None)
        self.seconds += other.seconds

    def first_errors(self, n: int = FIRST_ERRORS) -> dict[str, str]:
        return dict(list(self.failed.items())[:n])

    def line(self, what: str, mode: str) -> str:
        """The one summary line: counts, the first errors, elapsed; keys and payloads not listed."""
        text = f"{what}: delivered {len(self.delivered)} ({mode}), failed {len(self.failed)}"
        if self.failed:
            quoted = "; ".join(f"{k}: {e}" for k, e in self.first_errors().items())
            more = len(self.failed) - min(len(self.failed), FIRST_ERRORS)
            text += f" (stay pending; first errors: {quoted}{f'; {more} more' if more else ''})"
        return f"{text}, {self.seconds:.2f} s"


@dataclass(frozen=True)
class Selection:
    """Which pending rows a delivery takes: ``keys`` only, or all of them (``None``); only rows
    created at or after ``since``; at most ``limit`` rows, oldest first."""

    keys: tuple[str, ...] | None = None
    since: datetime | None = None
    limit: int | None = None


@dataclass
class OutboxDelivery:
    """Plain delivery logic (tests, the worker CLI and the ops use it; no Dagster needed)."""

    webhook_url: str | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_S
    channel: str = "webhook"
    log: Log | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    claim_batch: int | None = None  # rows a claim takes; None: ROUNDS_PER_BATCH x concurrency
    # How POSTs are made (the bench plugs in alternatives to compare); default ``make_sender``.
    sender_factory: Callable[[OutboxDelivery], Sender] | None = None
    # SQLite: the wait for another deliverer's lock before leaving the rows pending.
    lock_wait_seconds: float = DELIVERY_LOCK_WAIT_S

    def __post_init__(self) -> None:
        url = self.webhook_url
        problem = (
            concurrency_problem(self.concurrency)
            or timeout_problem(self.timeout_seconds)
            or (webhook_url_problem(url, "the webhook URL") if url else None)
        )
        if problem:
            raise ValueError(problem)

    @property
    def mode(self) -> str:
        return "webhook" if self.webhook_url else "log only, no webhook URL"

    def batch_size(self) -> int:
        if self.claim_batch:
            return self.claim_batch
        if not self.webhook_url:
            return LOG_ONLY_BATCH
        return self.concurrency * ROUNDS_PER_BATCH

    def sender(self) -> Sender | None:
        if not self.webhook_url:
            return None
        if self.sender_factory is not None:
            return self.sender_factory(self)
        return make_sender(self.webhook_url, self.timeout_seconds, self.concurrency)

    # --- the public entry points ---------------------------------------------------------------

    def deliver_pending(
        self,
        engine: sa.Engine,
        keys: Sequence[str] | None = None,
        limit: int | None = None,
        since: datetime | None = None,
        what: str = "notification delivery",
    ) -> DeliveryReport:
        """Deliver pending rows now: only ``keys`` if given, else every pending row (oldest first,
        at most ``limit``, created at or after ``since``). One summary line in the log."""
        if keys is not None and not keys:
            return DeliveryReport()
        selection = Selection(tuple(keys) if keys is not None else None, since, limit)
        sender = self.sender()
        try:
            report = self.deliver(engine, selection, sender)
        finally:
            if sender is not None:
                sender.close()
        if self.log:
            self.log(report.line(what, self.mode))
        return report

    def pipeline(self, engine: sa.Engine) -> DeliveryPipeline:
        """Deliveries beside the caller (see :class:`DeliveryPipeline`); use it as a context."""
        return DeliveryPipeline(self, engine)

    # --- one delivery ----------------------------------------------------------------------------

    def deliver(
        self,
        engine: sa.Engine,
        selection: Selection,
        sender: Sender | None,
        stop: threading.Event | None = None,
    ) -> DeliveryReport:
        """Every row of ``selection`` pending now, batch by batch (module docstring): with a
        webhook, ``BATCHES_IN_FLIGHT`` batches are open at once, the next one claimed and its
        POSTs queued while the current one's finish, so the POST threads never wait for a claim
        or a commit. ``stop`` set (the caller interrupted): no further batch is claimed, and no
        wait for another deliverer's lock goes on."""
        report = DeliveryReport()
        started = time.monotonic()
        in_flight: deque[_Open] = deque()
        with self._one_deliverer(engine, sender, stop) as mine:
            try:
                for batch in self._batches(engine, selection, stop) if mine else ():
                    if sender is None:  # log only: one statement a batch
                        done = retrying(_what(batch), self.log)(
                            self._batch, engine, batch, None, set()
                        )
                        report.delivered += done[0]
                        continue
                    in_flight.append(self._open(engine, batch, sender))
                    if len(in_flight) == BATCHES_IN_FLIGHT:
                        self._close(engine, in_flight.popleft(), sender, report)
                while in_flight:
                    self._close(engine, in_flight.popleft(), sender, report)  # type: ignore[arg-type]
            finally:
                for batch_open in in_flight:  # an error above: let its POSTs end, roll it back
                    batch_open.abandon()
        report.seconds = time.monotonic() - started
        return report

    @contextlib.contextmanager
    def _one_deliverer(
        self, engine: sa.Engine, sender: Sender | None, stop: threading.Event | None
    ) -> Iterator[bool]:
        """SQLite with a webhook: one deliverer at a time per database file; yields whether
        this delivery may go on (False: interrupted, or gave up waiting; its rows stay pending).

        There a claim commits at once (holding SQLite's one write lock across the POSTs would
        stop the worker's next chunk, and a deliverer claiming batch after batch would starve
        it), so the rows a deliverer claimed are kept from another deliverer by an OS lock on
        ``<database file>-delivery.lock`` (``flock``, the file's real path: a symlinked database
        has one lock; released by the OS if the holder dies). It is polled, never waited for
        blindly, so a terminated step stops at once. PostgreSQL needs none: the claim's row
        locks do it.
        """
        if sender is None or engine.dialect.name != "sqlite":
            yield True
            return
        path = engine.url.database
        if not path or path == ":memory:":  # one process's database: a thread lock does it
            got = self._wait_for_lock(
                lambda: _MEMORY_DELIVERY_LOCK.acquire(blocking=False), stop, "the delivery lock"
            )
            try:
                yield got
            finally:
                if got:
                    _MEMORY_DELIVERY_LOCK.release()
            return
        lock_path = f"{os.path.realpath(path)}-delivery.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            yield self._wait_for_lock(lambda: _try_flock(fd), stop, lock_path)
        finally:
            os.close(fd)  # releases the lock

    def _wait_for_lock(
        self, try_lock: Callable[[], bool], stop: threading.Event | None, what: str
    ) -> bool:
        """Try the lock every ``LOCK_POLL_S`` until taken (True), ``stop`` is set (False, no
        line: the caller was interrupted) or ``lock_wait_seconds`` passed (False, one line)."""
        waiter = stop if stop is not None else threading.Event()
        deadline = time.monotonic() + self.lock_wait_seconds
        while not waiter.is_set():
            if try_lock():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                (self.log or _logger.warning)(
                    f"notification delivery gave up after waiting {self.lock_wait_seconds:g} s "
                    f"for {what} (another deliverer is sending): its notifications stay pending "
                    "for the next delivery or sweep"
                )
                return False
            waiter.wait(min(LOCK_POLL_S, left))
        return False

    def _batches(
        self, engine: sa.Engine, selection: Selection, stop: threading.Event | None
    ) -> Iterator[list[int]]:
        """The selected pending ids in claim batches, until ``stop`` is set."""
        size = self.batch_size()
        for ids in self._pending_pages(engine, selection):
            for at in range(0, len(ids), size):
                if stop is not None and stop.is_set():
                    return
                yield ids[at : at + size]

    def _pending_pages(self, engine: sa.Engine, sel: Selection) -> Iterator[list[int]]:
        """Ids of the selected pending rows, in pages, ascending."""
        q = sa.select(outbox.c.id).where(
            outbox.c.delivered_at.is_(None), outbox.c.channel == self.channel
        )
        if sel.since is not None:
            q = q.where(outbox.c.created_at >= as_utc(sel.since))
        read = retrying("notification delivery: reading the outbox", self.log)
        if sel.keys is not None:
            for at in range(0, len(sel.keys), READ_PAGE):
                part = list(sel.keys[at : at + READ_PAGE])
                ids = read(self._read, engine, q.where(outbox.c.dedupe_key.in_(part)))
                if ids:
                    yield ids
            return
        after, left = 0, sel.limit
        while left is None or left > 0:
            n = READ_PAGE if left is None else min(READ_PAGE, left)
            ids = read(self._read, engine, q.where(outbox.c.id > after).limit(n))
            if ids:
                yield ids
            if len(ids) < n:
                return
            after = ids[-1]
            left = None if left is None else left - len(ids)

    @staticmethod
    def _read(engine: sa.Engine, q: sa.Select) -> list[int]:
        with engine.connect() as conn:
            return list(conn.execute(q.order_by(outbox.c.id)).scalars())

    def _ids(self, engine: sa.Engine, ids: list[int]) -> sa.ColumnElement[bool]:
        """``id IN (…)``; on PostgreSQL ``id = ANY(:array)``, one parameter however many ids."""
        if engine.dialect.name == "postgresql":
            return outbox.c.id == sa.any_(sa.bindparam(None, list(ids), type_=_INT_ARRAY))
        return outbox.c.id.in_(list(ids))

    def _claimable(self, engine: sa.Engine, ids: list[int]) -> sa.ColumnElement[bool]:
        pending = sa.and_(
            self._ids(engine, ids),
            outbox.c.delivered_at.is_(None),
            outbox.c.channel == self.channel,
        )
        if engine.dialect.name != "postgresql":
            return pending  # SQLite: ``_one_deliverer`` (log only: the claim is the mark)
        locked = sa.select(outbox.c.id).where(pending).with_for_update(skip_locked=True)
        return outbox.c.id.in_(locked)

    def _claim(self, conn: sa.Connection, engine: sa.Engine, ids: list[int]) -> list[Claimed]:
        """Claim the batch's rows still pending (module docstring, step 1), ascending."""
        rows = conn.execute(
            outbox.update()
            .where(self._claimable(engine, ids))
            .values(attempts=outbox.c.attempts + 1)
            .returning(outbox.c.id, outbox.c.dedupe_key, outbox.c.payload)
        ).all()
        return sorted((rid, key, payload) for rid, key, payload in rows)

    def _mark(
        self,
        conn: sa.Connection,
        engine: sa.Engine,
        rows: list[Claimed],
        acked: set[str],
        errors: dict[str, str],
    ) -> list[str]:
        """One UPDATE for the delivered rows, one per distinct error for the others (step 3);
        returns the delivered keys."""
        done = [(rid, key) for rid, key, _p in rows if key in acked]
        if done:
            conn.execute(
                outbox.update()
                .where(self._ids(engine, [rid for rid, _k in done]))
                .values(delivered_at=datetime.now(UTC), last_error=None)
            )
        by_error: dict[str, list[int]] = {}
        for rid, key, _p in rows:
            if key in errors and key not in acked:
                by_error.setdefault(errors[key], []).append(rid)
        for error, rids in by_error.items():
            conn.execute(outbox.update().where(self._ids(engine, rids)).values(last_error=error))
        return [key for _rid, key in done]

    def _batch(
        self, engine: sa.Engine, ids: list[int], sender: Sender | None, acked: set[str]
    ) -> tuple[list[str], dict[str, str]]:
        """Claim, POST and mark one batch in one transaction; returned only once committed. An
        attempt that fails is redone whole by the caller's retry; keys in ``acked`` (answered
        2xx by an attempt that did not commit) are marked without another POST."""
        with engine.begin() as conn:
            if sender is None:  # log only: the claim is the mark
                keys = conn.execute(
                    outbox.update()
                    .where(self._claimable(engine, ids))
                    .values(
                        delivered_at=datetime.now(UTC),
                        attempts=outbox.c.attempts + 1,
                        last_error=None,
                    )
                    .returning(outbox.c.dedupe_key)
                ).scalars()
                return sorted(keys), {}
            rows = self._claim(conn, engine, ids)
            posted = [(key, payload) for _id, key, payload in rows if key not in acked]
            errors = _outcomes(posted, sender.start(posted)() if posted else [], acked)
            delivered = self._mark(conn, engine, rows, acked, errors)
        return delivered, {k: e for k, e in errors.items() if k not in acked}

    def _open(self, engine: sa.Engine, ids: list[int], sender: Sender) -> _Open:
        """Claim a batch and queue its POSTs. PostgreSQL: the claim's transaction stays open
        (its row locks keep other deliverers off) until ``_close`` marks it; SQLite: the claim
        commits at once (``_one_deliverer`` keeps other deliverers off)."""
        keep_open = engine.dialect.name == "postgresql"

        def claim() -> tuple[sa.Connection | None, list[Claimed]]:
            conn = engine.connect()
            try:
                conn.begin()
                rows = self._claim(conn, engine, ids)
                if keep_open:
                    return conn, rows
                conn.commit()
            except BaseException:
                conn.close()  # rolls the claim back
                raise
            conn.close()
            return None, rows

        conn, rows = retrying(_what(ids), self.log)(claim)
        posted = [(key, payload) for _id, key, payload in rows]
        return _Open(ids, conn, rows, posted, sender.start(posted) if posted else list)

    def _close(self, engine: sa.Engine, batch: _Open, sender: Sender, report: DeliveryReport):
        """Wait for an open batch's POSTs, mark it and commit. If that fails transiently (the
        connection lost, SQLite busy), redo the batch in one transaction over the retry window,
        acknowledged keys not POSTed again."""
        acked: set[str] = set()
        errors = _outcomes(batch.posted, batch.wait(), acked)
        try:
            if batch.conn is None:
                with engine.begin() as conn:
                    delivered = self._mark(conn, engine, batch.rows, acked, errors)
            else:
                try:
                    delivered = self._mark(batch.conn, engine, batch.rows, acked, errors)
                    batch.conn.commit()
                finally:
                    batch.conn.close()
        except sa.exc.DBAPIError as exc:
            if not is_transient(exc):
                raise
            what = _what(batch.ids)
            if self.log:
                self.log(f"{what} retried after: {reason(exc)}; attempt 1 failed, next in 0.00 s")
            delivered, errors = retrying(what, self.log)(
                self._batch, engine, batch.ids, sender, acked
            )
        report.delivered += delivered
        report.failed.update(errors)


Claimed = tuple[int, str, Any]  # (id, dedupe key, payload) of a claimed row


def _try_flock(fd: int) -> bool:
    """Take the exclusive ``flock`` on ``fd`` if free; never waits."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _what(ids: list[int]) -> str:
    return f"notification delivery: outbox rows {ids[0]}..{ids[-1]}"


def _outcomes(
    posted: Sequence[tuple[str, Any]], results: list[str | None], acked: set[str]
) -> dict[str, str]:
    """Add the keys answered 2xx to ``acked``; return the others' errors."""
    errors: dict[str, str] = {}
    for (key, _payload), error in zip(posted, results, strict=True):
        if error is None:
            acked.add(key)
        else:
            errors[key] = error
    return errors


@dataclass
class _Open:
    """A claimed batch whose POSTs are under way; its transaction stays open until marked."""

    ids: list[int]
    conn: sa.Connection | None  # PostgreSQL: the claim's open transaction
    rows: list[Claimed]
    posted: list[tuple[str, Any]]
    wait: Wait

    def abandon(self) -> None:
        """After an error elsewhere: let the POSTs end, roll the claim back (rows stay pending)."""
        with contextlib.suppress(Exception):
            self.wait()
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()


class DeliveryPipeline:
    """Deliveries beside the caller, in order, on one background thread.

    ``submit(keys)`` (also callable as ``pipeline(engine, keys)``, the worker's ``deliver``)
    queues a delivery and returns at once; ``submit(None)`` queues every pending row created
    since the pipeline started (a connection lost at a COMMIT may have committed rows whose keys
    the caller never saw). ``close`` waits for all of them and re-raises a delivery's failure
    (the record store unreachable past the retry window); a context manager closes on exit.
    Summary and retry lines reach the log from the caller's thread, in ``submit`` and ``close``.
    """

    # ``since`` of ``submit(None)``: rows a batch commits are stamped by its own clock after the
    # pipeline starts; the margin covers a record store stamping with a skewed clock.
    SINCE_MARGIN = timedelta(minutes=5)

    def __init__(self, delivery: OutboxDelivery, engine: sa.Engine) -> None:
        self._log = delivery.log
        self._lines: list[str] = []
        self._lock = threading.Lock()
        # Without a log, retry lines go to the ``logging`` module (thread-safe) as elsewhere.
        self.delivery = dataclasses.replace(delivery, log=self._note) if self._log else delivery
        self.engine = engine
        self.started_at = datetime.now(UTC)
        self.report = DeliveryReport()
        self.deliveries = 0
        self.chunks = 0
        self._jobs: queue.Queue[tuple[str, Selection] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._closed = False
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="outbox-delivery", daemon=True)
        self._thread.start()

    def __enter__(self) -> DeliveryPipeline:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        if not issubclass(exc_type, Exception):
            # Interrupted (run termination, Ctrl-C): no further batch; open ones roll back and
            # stay pending for the next delivery.
            self._stop.set()
        # The caller failed: its committed chunks' notifications still go out (unless
        # interrupted); the caller's error is the one raised.
        with contextlib.suppress(Exception):
            self.close()

    def __call__(self, engine: sa.Engine, keys: Sequence[str] | None) -> None:
        self.submit(keys)

    def submit(self, keys: Sequence[str] | None, what: str | None = None) -> None:
        if keys is not None and not keys:
            return
        if keys is None:
            selection = Selection(since=self.started_at - self.SINCE_MARGIN)
            label = what or "pending notifications of this batch (after a lost connection)"
        else:
            selection = Selection(keys=tuple(keys))
            self.chunks += 1
            label = what or f"notifications of chunk {self.chunks} ({len(keys)})"
        self.submit_selection(selection, label)

    def submit_selection(self, selection: Selection, what: str) -> None:
        self._flush()
        if self._error is not None:
            raise self._error
        if self._closed:
            raise RuntimeError("delivery pipeline already closed")
        self.deliveries += 1
        self._jobs.put((what, selection))

    def close(self) -> DeliveryReport:
        """Wait for every queued delivery; log what is left; re-raise a delivery's failure."""
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
            while self._thread.is_alive():
                self._thread.join(1.0)
                self._flush()  # retry lines while the store is away, not all at the end
        self._flush()
        if self._error is not None:
            raise self._error
        return self.report

    def _note(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)

    def _flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
        if self._log:
            for line in lines:
                self._log(line)

    def _run(self) -> None:
        sender: Sender | None = None
        try:
            sender = self.delivery.sender()
            while (job := self._jobs.get()) is not None:
                if self._error is not None or self._stop.is_set():
                    continue  # failed or interrupted: the rest waits for the next delivery
                what, selection = job
                try:
                    report = self.delivery.deliver(self.engine, selection, sender, self._stop)
                except BaseException as exc:  # re-raised in the caller's thread
                    self._error = exc
                    continue
                self.report.add(report)
                self._note(report.line(what, self.delivery.mode))
        except BaseException as exc:
            self._error = exc
        finally:
            if sender is not None:
                sender.close()


class TriggersNotifierResource(dg.ConfigurableResource):
    """Webhook notifier for trigger notifications; without a URL it only writes the run log."""

    webhook_url: WebhookUrl = Field(
        default_factory=lambda: os.environ.get(WEBHOOK_URL_ENV) or None,
        description=f"Where notifications are POSTed (JSON). Defaults to ${WEBHOOK_URL_ENV}; "
        "unset means log only.",
    )
    timeout_seconds: TimeoutSeconds = Field(
        default=DEFAULT_TIMEOUT_S,
        description=f"How long a POST waits for the receiver ({MIN_TIMEOUT_S:g}-"
        f"{MAX_TIMEOUT_S:g} s; at most {MAX_TIMEOUT_S:g} so a PostgreSQL claim, open for 8 "
        "rounds of POSTs, ends within the record store's 300 s idle-in-transaction bound).",
    )
    concurrency: Concurrency = Field(
        default=DEFAULT_CONCURRENCY,
        description=f"Notifications POSTed at once (1-{MAX_CONCURRENCY}), each in flight on its "
        "own kept-alive connection. Bounds the load on the receiver; throughput is about "
        "concurrency / the receiver's answer time.",
    )

    def delivery(self, log: Log | None = None) -> OutboxDelivery:
        # The field's default (the env var) is not validated by pydantic: check it here too.
        _webhook_url_field(self.webhook_url)
        return OutboxDelivery(
            webhook_url=self.webhook_url,
            timeout_seconds=self.timeout_seconds,
            log=log,
            concurrency=self.concurrency,
        )
