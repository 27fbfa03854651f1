"""Real worker subprocesses: SIGKILL mid-batch then re-run; two workers racing on PostgreSQL."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from dev.seed import seed_alerts
from orchestration.triggers.models import trigger_history
from tests.triggers.helpers import WebhookReceiver, alert_states, outbox

REPO = Path(__file__).resolve().parents[2]


def _worker(store_url: str, ids: str, hook_url: str, commit_every: int, sweep: bool = False):
    cmd = [
        sys.executable, "-m", "orchestration.triggers.worker", "--store-url", store_url,
        "--trigger", "escalate_alerts", "--ids", ids, "--webhook-url", hook_url,
        "--commit-every", str(commit_every),
    ]  # fmt: skip
    if sweep:
        cmd.append("--sweep")
    return subprocess.Popen(
        cmd, cwd=REPO, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _succeeded_per_record(engine) -> Counter:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(trigger_history.c.record_id).where(trigger_history.c.status == "succeeded")
        ).scalars()
        return Counter(rows)


@pytest.mark.slow
def test_sigkill_mid_batch_then_rerun_transitions_and_notifies_exactly_once(store_url, engine):
    n = 60
    seed_alerts(engine, due=n, fresh=5)
    with WebhookReceiver(delay=0.02) as hook:  # slow receiver: the kill lands mid-batch
        proc = _worker(store_url, f"1-{n + 5}", hook.url, commit_every=5)
        deadline = time.monotonic() + 30
        while len(hook.posts) < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        done_before = sum(1 for s in alert_states(engine).values() if s == "escalated")
        assert 0 < done_before < n, "the kill must land mid-batch"

        rerun = _worker(store_url, f"1-{n + 5}", hook.url, commit_every=5, sweep=True)
        _out, err = rerun.communicate(timeout=60)
        assert rerun.returncode == 0, err.decode()[-2000:]
        keys = hook.key_counts()

    states = alert_states(engine)
    assert [states[i] for i in range(1, n + 1)] == ["escalated"] * n
    assert [states[i] for i in range(n + 1, n + 6)] == ["pending"] * 5
    assert _succeeded_per_record(engine) == Counter(range(1, n + 1))  # each transition once
    rows = outbox(engine)
    assert sorted(r.dedupe_key for r in rows) == sorted(
        f"escalate_alerts:{i}" for i in range(1, n + 1)
    )
    assert all(r.delivered_at is not None for r in rows)
    # Every notification reached the receiver. A kill between a POST and its commit can repeat
    # that one POST; it carries the same Idempotency-Key, so the receiver applies it once.
    assert set(keys) == {f"escalate_alerts:{i}" for i in range(1, n + 1)}
    assert sum(keys.values()) - n <= 1


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_on_overlapping_batches_never_double_transition(pg_store_url):
    from resources.record_store import make_engine

    engine = make_engine(pg_store_url)
    n = 400
    seed_alerts(engine, due=n)
    with WebhookReceiver() as hook:
        a = _worker(pg_store_url, f"1-{n}", hook.url, commit_every=20)
        b = _worker(pg_store_url, f"101-{n},1-100", hook.url, commit_every=20)
        for p in (a, b):
            _, err = p.communicate(timeout=90)
            assert p.returncode == 0, err.decode()[-2000:]
        keys = hook.key_counts()
    assert set(alert_states(engine).values()) == {"escalated"}
    assert _succeeded_per_record(engine) == Counter(range(1, n + 1))
    assert len(outbox(engine)) == n
    assert keys == Counter({f"escalate_alerts:{i}": 1 for i in range(1, n + 1)})
    engine.dispose()


def test_chunk_that_times_out_on_a_lock_is_retried_whole_and_commits_once(pg_store_url):
    """A lock timeout rolls the chunk back; the retry re-reads every record and moves each once."""
    import threading

    from orchestration.triggers.catalog import ESCALATE_ALERTS
    from orchestration.triggers.worker import process_batch
    from resources.record_store import make_engine

    engine = make_engine(pg_store_url)
    sa.event.listen(
        engine, "connect", lambda dbapi, _rec: dbapi.cursor().execute("SET lock_timeout = '100ms'")
    )
    seed_alerts(engine, due=6)
    retried = threading.Event()
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if "retried after" in line:
            retried.set()

    holder = make_engine(pg_store_url).connect()
    try:
        holder.execute(sa.text("SELECT id FROM alerts WHERE id = 4 FOR UPDATE"))  # another writer
        done: dict = {}
        worker = threading.Thread(
            target=lambda: done.update(
                result=process_batch(ESCALATE_ALERTS, engine, range(1, 7), run_id="r", log=log)
            )
        )
        worker.start()
        assert retried.wait(15), lines
    finally:
        holder.rollback()  # the other writer goes; the next attempt gets the lock
        holder.close()
    worker.join(30)
    assert done["result"].ids("succeeded") == [1, 2, 3, 4, 5, 6]
    assert any("LockNotAvailable" in line for line in lines), lines
    assert _succeeded_per_record(engine) == Counter({i: 1 for i in range(1, 7)})
    assert set(alert_states(engine).values()) == {"escalated"}
    assert len(outbox(engine)) == 6
