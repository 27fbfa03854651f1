"""Delivery inside real ``escalate_alerts`` runs: the run log holds a summary per chunk (never an
event per notification), and a step retried after a fault delivers everything its first attempt
left and reports what the batch did across attempts."""

from __future__ import annotations

import threading

import dagster as dg
import pytest
import sqlalchemy as sa

from dev.seed import seed_alerts
from orchestration.definitions import defs
from resources.record_store import RecordStoreResource, make_engine
from tests.support.results import step_metadata
from tests.support.wait import wait_until
from tests.support.webhook import WebhookReceiver
from tests.triggers.helpers import outbox

JOB = defs.get_repository_def().get_job("escalate_alerts")


def _config(ids, hook_url: str | None) -> dict:
    return {
        "ops": {"escalate_alerts_worker": {"config": {"record_ids": list(ids)}}},
        "resources": {"triggers_notifier": {"config": {"webhook_url": hook_url}}},
    }


@pytest.mark.parametrize("webhook", [True, False], ids=["webhook", "log-only"])
def test_the_run_log_summarises_delivery_per_chunk(instance, store_url, webhook):
    n = 1200
    engine = make_engine(store_url)
    seed_alerts(engine, due=n)
    with WebhookReceiver() as hook:
        result = JOB.execute_in_process(
            run_config=_config(range(1, n + 1), hook.url if webhook else None),
            instance=instance,
            resources={"record_store": RecordStoreResource(url=store_url)},
        )
        posts = len(hook.posts)
    assert result.success
    events = instance.all_logs(result.run_id)
    messages = [e.user_message or "" for e in events]
    chunks = 3 if engine.dialect.name == "sqlite" else 1  # 500 a chunk; one statement of 5,000
    summaries = [m for m in messages if m.startswith("notifications of chunk")]
    assert len(summaries) == chunks, summaries
    assert len(events) < 60, len(events)  # Dagster's own events + a few lines, not 1,200
    assert not [m for m in messages if "alert.escalated" in m or "due alert" in m]  # no payload
    meta = step_metadata(result, "escalate_alerts_worker")
    assert meta["notifications_delivered"] == n and meta["notifications_failed"] == 0
    assert posts == (n if webhook else 0)
    assert all(r.delivered_at is not None for r in outbox(engine))
    engine.dispose()


class HoldTheOutbox:
    """A real fault: another session takes the outbox for itself (``LOCK TABLE … ACCESS
    EXCLUSIVE``) until ``release``; the record store's lock wait and retry window are short, so
    the worker's step fails on its next delivery. (PostgreSQL only: on SQLite a deliverer that
    claims batch after batch keeps the one write lock, and another writer's busy wait cannot
    reliably get in between.)"""

    def __init__(self, store_url: str) -> None:
        self.engine = make_engine(store_url, {"RECORD_STORE_LOCK_TIMEOUT_MS": "60000"})
        self.held = threading.Event()
        self._release = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._hold, daemon=True)
            self._thread.start()

    def _hold(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("LOCK TABLE notification_outbox IN ACCESS EXCLUSIVE MODE")
            self.held.set()
            self._release.wait(120)
            conn.rollback()

    def release(self) -> None:
        self._release.set()
        if self._thread is not None:
            self._thread.join(30)
        self.engine.dispose()


def _release_when_the_step_is_up_for_retry(instance, hold: HoldTheOutbox) -> threading.Thread:
    def up_for_retry() -> bool:
        runs = instance.get_runs(limit=1)
        return bool(
            runs
            and instance.all_logs(runs[0].run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
        )

    def watch() -> None:
        try:  # a step never up for retry fails the test's assertions, not this thread
            wait_until(up_for_retry, timeout=120, what="the step up for retry", interval=0.01)
        except AssertionError:
            pass
        finally:
            hold.release()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.postgres
def test_a_retried_step_delivers_what_its_first_attempt_left_and_reports_across_attempts(
    instance, pg_store_url, monkeypatch
):
    """The first attempt moves all 600 records (one statement), then its delivery meets the held
    outbox and the step fails; the step's retry (its RetryPolicy) finds those records moved. It
    must say so (not "skipped") and deliver every notification the first attempt left pending
    (more than the old page of 500)."""
    store_url = pg_store_url
    monkeypatch.setenv("RECORD_STORE_RETRY_WINDOW_S", "0")
    monkeypatch.setenv("RECORD_STORE_LOCK_TIMEOUT_MS", "1000")
    n = 600
    engine = make_engine(store_url)
    seed_alerts(engine, due=n)
    hold = HoldTheOutbox(store_url)
    watcher = _release_when_the_step_is_up_for_retry(instance, hold)
    with WebhookReceiver(delay=0.002, before_answer=lambda _key: hold.start()) as hook:
        result = JOB.execute_in_process(
            run_config=_config(range(1, n + 1), hook.url),
            instance=instance,
            resources={"record_store": RecordStoreResource(url=store_url)},
            raise_on_error=False,
        )
        acknowledged = hook.acknowledged()
    watcher.join(30)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert retries, "the fault must fail the first attempt"
    meta = step_metadata(result, "escalate_alerts_worker")
    earlier = meta["already_done_by_earlier_attempt"]
    assert earlier == n and meta["succeeded"] == 0 and meta["skipped"] == 0, meta
    assert meta["notifications_failed"] == 0
    # Every notification reached the receiver, and every outbox row is marked delivered.
    assert set(acknowledged) == {f"escalate_alerts:{i}" for i in range(1, n + 1)}
    rows = outbox(engine)
    assert len(rows) == n and all(r.delivered_at is not None for r in rows)
    messages = [e.user_message or "" for e in instance.all_logs(result.run_id)]
    assert any(
        f"{earlier} of the batch's record(s) already done by an earlier attempt" in m
        for m in messages
    ), messages
    with engine.connect() as conn:
        history_runs = conn.execute(sa.text("SELECT DISTINCT run_id FROM trigger_history")).all()
    assert history_runs == [(result.run_id,)]
    engine.dispose()


def test_a_re_executed_run_delivers_what_its_parent_left_and_reports_its_parents_work(
    instance, store_url
):
    """The parent run moves 600 records while the webhook answers 503 (its notifications stay
    pending); a re-execution of its step finds every record moved by the parent, reports them
    as done by an earlier attempt, and delivers all 600 leftovers."""
    from tests.triggers import jobs_for_test

    n = 600
    engine = make_engine(store_url)
    seed_alerts(engine, due=n)
    job = dg.reconstructable(jobs_for_test.escalate_alerts)

    def config(hook_url: str) -> dict:
        return {
            **_config(range(1, n + 1), hook_url),
            "resources": {
                "triggers_notifier": {"config": {"webhook_url": hook_url}},
                "record_store": {"config": {"url": store_url}},
            },
        }

    with WebhookReceiver(status=503) as down:
        with dg.execute_job(job, instance=instance, run_config=config(down.url)) as first:
            assert first.success
            parent = first.run_id
        assert len(down.key_counts()) == n
    assert all(r.delivered_at is None for r in outbox(engine))
    with WebhookReceiver() as up:
        options = dg.ReexecutionOptions(
            parent_run_id=parent, step_selection=["escalate_alerts_worker"]
        )
        with dg.execute_job(
            job, instance=instance, run_config=config(up.url), reexecution_options=options
        ) as second:
            assert second.success
            meta = step_metadata(second, "escalate_alerts_worker")
        keys = up.key_counts()
    assert meta["already_done_by_earlier_attempt"] == n, meta
    assert meta["succeeded"] == 0 and meta["skipped"] == 0, meta
    assert meta["notifications_delivered"] == n
    assert keys == {f"escalate_alerts:{i}": 1 for i in range(1, n + 1)}
    assert all(r.delivered_at is not None for r in outbox(engine))
    engine.dispose()
