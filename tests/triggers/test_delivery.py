"""Outbox delivery on both backends with a real loopback receiver: bounded concurrency over
kept-alive connections, exactly once with two deliverers, failures left pending and retried,
summary lines without payloads, and delivery overlapping the worker's next chunk."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from dev.seed import seed_alerts
from orchestration.triggers.catalog import ESCALATE_ALERTS
from orchestration.triggers.models import alerts, notification_outbox
from orchestration.triggers.worker import process_batch_delivering
from resources.db import settings
from resources.errors import FinalFailure
from resources.notifier import (
    BATCHES_IN_FLIGHT,
    MAX_TIMEOUT_S,
    ROUNDS_PER_BATCH,
    DeliveryReport,
    OutboxDelivery,
    TriggersNotifierResource,
)
from tests.support.wait import InFlightGate, wait_until
from tests.support.webhook import WebhookReceiver
from tests.triggers.helpers import outbox

REPO = Path(__file__).resolve().parents[2]


def _fill_outbox(engine: sa.Engine, n: int, prefix: str = "k") -> list[str]:
    keys = [f"{prefix}{i}" for i in range(n)]
    with engine.begin() as conn:
        conn.execute(
            notification_outbox.insert(),
            [
                {
                    "dedupe_key": key,
                    "channel": "webhook",
                    "payload": {"i": i, "title": f"secret title {i}"},
                    "created_at": datetime.now(UTC),
                    "attempts": 0,
                }
                for i, key in enumerate(keys)
            ],
        )
    return keys


def test_posts_are_concurrent_bounded_and_reuse_their_connections(engine):
    """The first answers are held until 6 POSTs are in flight at once: the bound is reached
    (exactly 6, never 7, however fast or slow the machine) and the 6 connections it took carry
    all 120 POSTs (kept alive)."""
    keys = _fill_outbox(engine, 120)
    gate = InFlightGate(6)

    with WebhookReceiver(
        delay=0.002, before_answer=lambda _key: gate.arrive(hook.in_flight)
    ) as hook:
        report = OutboxDelivery(webhook_url=hook.url, concurrency=6).deliver_pending(engine)
        counts, peak, connections = hook.key_counts(), hook.max_in_flight, len(hook.connections)
    assert gate.full.is_set() and not gate.timed_out, "6 POSTs were never in flight at once"
    assert counts == Counter({k: 1 for k in keys})
    assert sorted(report.delivered) == sorted(keys) and not report.failed
    assert peak == 6  # the bound reached, never passed
    assert connections == 6  # kept alive: 120 POSTs over the 6 connections
    assert all(r.delivered_at is not None and r.attempts == 1 for r in outbox(engine))


def test_two_deliverers_at_once_send_every_key_exactly_once(store_url):
    from resources.record_store import make_engine

    engines = [make_engine(store_url), make_engine(store_url)]
    keys = _fill_outbox(engines[0], 300)
    reports: list = [None, None]
    with WebhookReceiver(delay=0.005) as hook:
        start = threading.Barrier(2)

        def deliver(i: int) -> None:
            start.wait()
            reports[i] = OutboxDelivery(webhook_url=hook.url, concurrency=8).deliver_pending(
                engines[i]
            )

        threads = [threading.Thread(target=deliver, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        counts, peak = hook.key_counts(), hook.max_in_flight
    assert counts == Counter({k: 1 for k in keys})  # never both, never none
    a, b = (set(r.delivered) for r in reports)
    assert not a & b and a | b == set(keys)
    assert peak > 2, peak  # each deliverer had several POSTs in flight
    assert all(r.delivered_at is not None for r in outbox(engines[0]))
    for e in engines:
        e.dispose()


def test_failed_posts_stay_pending_redacted_and_are_retried_later(engine):
    keys = _fill_outbox(engine, 40)
    failing = {k for k in keys if int(k[1:]) % 5 == 0}
    lines: list[str] = []
    token = "T0k3n-5ecret-path"
    with WebhookReceiver(
        status=lambda key: 503 if key in failing else 200,
        body=f"upstream said no to /hook/{token}".encode(),
    ) as hook:
        url = f"{hook.url}/{token}"
        report = OutboxDelivery(webhook_url=url, concurrency=4, log=lines.append).deliver_pending(
            engine
        )
    assert set(report.failed) == failing
    assert sorted(report.delivered) == sorted(set(keys) - failing)
    rows = {r.dedupe_key: r for r in outbox(engine)}
    for key in failing:
        assert rows[key].delivered_at is None and rows[key].attempts == 1
        assert rows[key].last_error.startswith("HTTP 503: upstream said no")
        assert token not in rows[key].last_error
    # One summary line: counts and the first errors; no payload, no token.
    assert len(lines) == 1, lines
    assert "delivered 32 (webhook), failed 8" in lines[0] and "first errors" in lines[0]
    assert "secret title" not in lines[0] and token not in lines[0]

    with WebhookReceiver() as hook:  # the receiver is back: a later delivery sends the rest
        again = OutboxDelivery(webhook_url=hook.url).deliver_pending(engine)
        assert hook.key_counts() == Counter({k: 1 for k in failing})
    assert sorted(again.delivered) == sorted(failing)
    rows = {r.dedupe_key: r for r in outbox(engine)}
    assert all(r.delivered_at is not None and r.last_error is None for r in rows.values())
    assert {rows[k].attempts for k in failing} == {2}


def test_each_chunk_gets_one_summary_line_with_and_without_a_webhook(engine):
    """Per chunk one delivery line (not one per notification), never a payload."""
    seed_alerts(engine, due=120)
    for hook_on in (True, False):
        with engine.begin() as conn:  # the same records again, fresh outbox
            conn.execute(alerts.update().values(state="pending", escalated_at=None))
            conn.execute(notification_outbox.delete())
        lines: list[str] = []
        with WebhookReceiver() as hook:
            delivery = OutboxDelivery(webhook_url=hook.url if hook_on else None, log=lines.append)
            result = process_batch_delivering(
                ESCALATE_ALERTS, engine, range(1, 121), delivery, commit_every=40, log=lines.append
            )
        assert result.counts()["succeeded"] == 120
        summaries = [ln for ln in lines if ln.startswith("notifications of chunk")]
        mode = "webhook" if hook_on else "log only, no webhook URL"
        assert [ln.split(": ", 1)[1].split(f" ({mode})")[0] for ln in summaries] == [
            "delivered 40"
        ] * 3, lines
        assert len(lines) <= 6, lines  # 3 summaries + the batch line, not 120
        assert not [ln for ln in lines if "alert.escalated" in ln or "tenant-" in ln]
        assert len(result.delivery.delivered) == 120
        assert all(r.delivered_at is not None for r in outbox(engine))


def test_delivery_of_a_chunk_overlaps_the_next_chunks_transitions(store_url):
    """While chunk 1's notifications are being POSTed, chunk 2 commits (before, the worker
    delivered a chunk's notifications before starting the next chunk; on SQLite a deliverer
    must not hold the one write lock across its POSTs)."""
    from resources.record_store import make_engine

    engine = make_engine(store_url)
    seed_alerts(engine, due=40)
    seen: dict[str, int] = {}

    def escalated() -> int:
        with engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count()).where(alerts.c.state == "escalated")
            ).scalar()

    def before_answer(key):
        if "moved" in seen:
            return
        # The event: chunk 2 committed while this POST of chunk 1 is held. Bounded below the
        # POST's own timeout (30 s), so a worker that waits for this answer fails the test here.
        try:
            seen["moved"] = wait_until(
                lambda: (n := escalated()) > 20 and n, timeout=25, what="chunk 2 committed"
            )
        except AssertionError:
            seen["moved"] = escalated()

    with WebhookReceiver(before_answer=before_answer) as hook:
        delivery = OutboxDelivery(webhook_url=hook.url, concurrency=1, timeout_seconds=30)
        result = process_batch_delivering(
            ESCALATE_ALERTS, engine, range(1, 41), delivery, commit_every=20
        )
        counts = hook.key_counts()
    assert seen["moved"] == 40  # both chunks committed while chunk 1's first POST was held
    assert result.counts()["succeeded"] == 40
    assert all(r.delivered_at is not None for r in outbox(engine))  # the held POST too
    assert counts == Counter({f"escalate_alerts:{i}": 1 for i in range(1, 41)})
    engine.dispose()


@pytest.mark.parametrize("bad", [0, -1, 129, 10**9, True, "16", 2.5, None])
def test_a_bad_concurrency_is_one_line(bad):
    with pytest.raises(FinalFailure) as err:
        TriggersNotifierResource(webhook_url=None, concurrency=bad)
    message = str(err.value)
    assert message.startswith("triggers_notifier concurrency=") and "\n" not in message
    assert "from 1 to 128" in message
    with pytest.raises(ValueError) as err2:
        OutboxDelivery(concurrency=bad)
    assert str(err2.value) == message
    assert TriggersNotifierResource(webhook_url=None, concurrency=32).delivery().concurrency == 32


def test_worker_cli_refuses_a_bad_concurrency_in_one_line(sqlite_store_url):
    proc = subprocess.run(
        [sys.executable, "-m", "orchestration.triggers.worker", "--store-url", sqlite_store_url,
         "--trigger", "escalate_alerts", "--ids", "1-5", "--concurrency", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: triggers_notifier concurrency=0 is not valid: set a whole number from 1 to 128 "
        "(notifications POSTed at once; default 32)"
    ]


def test_a_failing_caller_still_gets_its_committed_notifications_delivered(engine):
    """The worker failing after some chunks committed (the step will fail): the pipeline still
    delivers what was handed to it before re-raising the caller's error."""
    keys = _fill_outbox(engine, 30)
    with WebhookReceiver() as hook:
        delivery = OutboxDelivery(webhook_url=hook.url, concurrency=4)
        with pytest.raises(RuntimeError, match="chunk 2 failed"), delivery.pipeline(engine) as pipe:
            pipe(engine, keys[:20])
            pipe(engine, keys[20:])
            raise RuntimeError("chunk 2 failed")
        assert hook.key_counts() == Counter({k: 1 for k in keys})
    assert all(r.delivered_at is not None for r in outbox(engine))


@pytest.mark.parametrize(
    "bad", [0, -1, 0.05, 31, 1e9, "nan", float("nan"), float("inf"), True, None]
)
def test_a_bad_timeout_is_one_line(bad):
    with pytest.raises(FinalFailure) as err:
        TriggersNotifierResource(webhook_url=None, timeout_seconds=bad)
    message = str(err.value)
    assert message.startswith("triggers_notifier timeout_seconds=") and "\n" not in message
    assert "from 0.1 to 30" in message
    with pytest.raises(ValueError) as err2:
        OutboxDelivery(timeout_seconds=bad)
    assert str(err2.value) == message
    ok = TriggersNotifierResource(webhook_url=None, timeout_seconds=0.1).delivery()
    assert ok.timeout_seconds == 0.1
    # The bound's reason: a PostgreSQL claim stays open for the POSTs of the open batches.
    assert (
        settings({}).idle_in_transaction_timeout_ms
    ) > BATCHES_IN_FLIGHT * ROUNDS_PER_BATCH * MAX_TIMEOUT_S * 1000


def test_a_key_failed_then_delivered_in_one_run_is_not_reported_failed(engine):
    """A pipeline's report across its deliveries: a key that failed in chunk 1's delivery and
    went out in a later one counts as delivered only (notifications_failed is not overstated)."""
    keys = _fill_outbox(engine, 6)
    answered: Counter = Counter()

    def status(key):
        answered[key] += 1
        return 503 if key == "k0" and answered[key] == 1 else 200

    with WebhookReceiver(status=status) as hook:
        with OutboxDelivery(webhook_url=hook.url, concurrency=2).pipeline(engine) as pipe:
            pipe(engine, keys)
            pipe(engine, ["k0"])  # a later delivery of the same run sends it
        report = pipe.report
    assert answered == Counter({**{k: 1 for k in keys}, "k0": 2})
    assert sorted(report.delivered) == sorted(keys)
    assert report.failed == {}
    merged = DeliveryReport(failed={"a": "HTTP 503", "b": "HTTP 503"})
    merged.add(DeliveryReport(delivered=["a"], failed={"c": "HTTP 500"}))
    assert merged.failed == {"b": "HTTP 503", "c": "HTTP 500"}


class _SeenWaiting(threading.Event):
    """A ``stop`` event that tells the test when a delivery started waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


def test_sqlite_delivery_waiting_for_another_deliverers_lock_stops_or_gives_up(
    sqlite_store_url, tmp_path
):
    """Another process's deliverer holds ``<db>-delivery.lock`` (an fd of its own: ``flock``
    excludes it like another process). A terminated step stops waiting at once; otherwise the
    delivery gives up after its bound with one line, the rows left pending. The database is
    reached through a symlink: the lock is the real file's."""
    from resources.record_store import make_engine

    real = sqlite_store_url.removeprefix("sqlite:///")
    link = tmp_path / "linked.sqlite"
    link.symlink_to(real)
    engine = make_engine(f"sqlite:///{link}")
    keys = _fill_outbox(engine, 5)
    held = os.open(f"{os.path.realpath(real)}-delivery.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    thread = threading.Thread()
    try:
        with WebhookReceiver() as hook:
            # 1. Interrupted (run termination): the pipeline's close does not wait for the lock.
            stop = _SeenWaiting()
            returned = threading.Event()
            lines: list[str] = []

            def interrupted() -> None:
                delivery = OutboxDelivery(webhook_url=hook.url, log=lines.append)
                with contextlib.suppress(KeyboardInterrupt), delivery.pipeline(engine) as pipe:
                    pipe._stop = stop  # the pipeline's own event, observed
                    pipe(engine, keys)
                    stop.waiting.wait(60)  # the delivery is polling the lock
                    raise KeyboardInterrupt
                returned.set()

            thread = threading.Thread(target=interrupted, daemon=True)
            thread.start()
            assert returned.wait(30), "close() kept waiting (or took another lock)"
            assert stop.waiting.is_set()
            assert not [ln for ln in lines if "gave up" in ln], lines

            # 2. Not interrupted: gives up after its bound, one line, rows still pending.
            lines.clear()
            delivery = OutboxDelivery(webhook_url=hook.url, lock_wait_seconds=1.0, log=lines.append)
            report = delivery.deliver_pending(engine, keys)
            assert hook.posts == []
        assert report.delivered == [] and report.failed == {}
        gave_up = [ln for ln in lines if "gave up" in ln]
        assert len(gave_up) == 1 and "delivery.lock" in gave_up[0], lines
        assert "stay pending" in gave_up[0]
        assert all(r.delivered_at is None and r.attempts == 0 for r in outbox(engine))
    finally:
        os.close(held)
        if thread.is_alive():
            thread.join(60)
    # The lock free again: the rows go out.
    with WebhookReceiver() as hook:
        assert sorted(OutboxDelivery(webhook_url=hook.url).deliver_pending(engine).delivered) == (
            sorted(keys)
        )
    engine.dispose()
