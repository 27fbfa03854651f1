"""Real worker subprocesses: SIGKILL during delivery then re-run; two workers racing on
PostgreSQL."""

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from dev.seed import seed_alerts
from orchestration.triggers.models import trigger_history
from tests.support.wait import wait_until
from tests.support.webhook import WebhookReceiver
from tests.triggers.helpers import alert_states, outbox

REPO = Path(__file__).resolve().parents[2]


def _worker(
    store_url: str,
    ids: str,
    hook_url: str,
    commit_every: int,
    sweep: bool = False,
    concurrency: int | None = None,
):
    cmd = [
        sys.executable, "-m", "orchestration.triggers.worker", "--store-url", store_url,
        "--trigger", "escalate_alerts", "--ids", ids, "--webhook-url", hook_url,
        "--commit-every", str(commit_every),
    ]  # fmt: skip
    if sweep:
        cmd.append("--sweep")
    if concurrency:
        cmd += ["--concurrency", str(concurrency)]
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
def test_sigkill_during_delivery_repeats_only_unmarked_posts_with_their_keys(store_url, engine):
    """The worker CLI is killed while notifications are being POSTed concurrently. The re-run
    (with ``--sweep``) POSTs exactly the rows that were not marked delivered at the kill, each
    once and under its own key; a row marked before the kill is never POSTed again; a key POSTed
    both before and after the kill (the window) is at most one claim batch per open batch."""
    n, concurrency = 200, 8
    seed_alerts(engine, due=n, fresh=5)
    all_keys = {f"escalate_alerts:{i}" for i in range(1, n + 1)}
    hold, lock, seen = threading.Event(), threading.Lock(), [0]

    def stall_after_60(_key) -> None:  # the kill lands mid-delivery, however fast the machine
        with lock:
            seen[0] += 1
            late = seen[0] > 60
        if late:
            hold.wait(120)

    with WebhookReceiver(delay=0.01, before_answer=stall_after_60) as first:
        proc = _worker(store_url, f"1-{n + 5}", first.url, 50, concurrency=concurrency)
        try:
            wait_until(
                lambda: (
                    len(first.posts) >= 60
                    and any(r.delivered_at is not None for r in outbox(engine))
                ),
                what="60 notifications answered and a claim batch of them marked delivered",
                alive=lambda: proc.poll() is None,
            )
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            hold.set()  # the stalled answers go (to a dead client)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        rows = outbox(engine)
        marked = {r.dedupe_key for r in rows if r.delivered_at is not None}
        unmarked = {r.dedupe_key for r in rows if r.delivered_at is None}
        assert marked and unmarked, "the kill must land mid-delivery"
        assert first.max_in_flight > 1  # concurrent POSTs were in flight
        before = {key: body for key, body in first.posts}

    with WebhookReceiver() as second:
        rerun = _worker(store_url, f"1-{n + 5}", second.url, 50, sweep=True)
        _out, err = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, err.decode()[-2000:]
        after = second.key_counts()
        bodies = dict(second.posts)

    states = alert_states(engine)
    assert [states[i] for i in range(1, n + 1)] == ["escalated"] * n
    assert [states[i] for i in range(n + 1, n + 6)] == ["pending"] * 5
    assert _succeeded_per_record(engine) == Counter(range(1, n + 1))  # each transition once
    rows = outbox(engine)
    assert {r.dedupe_key for r in rows} == all_keys
    assert all(r.delivered_at is not None for r in rows)
    # The re-run POSTs the rows unmarked at the kill (plus the chunks the kill kept from
    # committing), each once; a marked row never again.
    assert set(after) >= unmarked and not set(after) & marked
    assert set(after.values()) == {1}
    assert set(before) | set(after) == all_keys
    repeated = set(before) & set(after)
    window = 2 * 4 * concurrency  # the two open claim batches
    assert len(repeated) <= window, (len(repeated), window)
    assert all(bodies[k] == before[k] for k in repeated)  # same notification, same key


@pytest.mark.slow
def test_two_workers_on_overlapping_batches_never_double_transition(store_url):
    """Two worker processes: every record moved once and every notification POSTed once
    (PostgreSQL: row locks; SQLite: the write lock for chunks, the delivery file lock for
    deliverers)."""
    from resources.record_store import make_engine

    engine = make_engine(store_url)
    n = 400
    seed_alerts(engine, due=n)
    with WebhookReceiver(delay=0.002) as hook:
        a = _worker(store_url, f"1-{n}", hook.url, commit_every=20)
        b = _worker(store_url, f"101-{n},1-100", hook.url, commit_every=20)
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
        assert retried.wait(60), lines
    finally:
        holder.rollback()  # the other writer goes; the next attempt gets the lock
        holder.close()
    worker.join(60)
    assert done["result"].ids("succeeded") == [1, 2, 3, 4, 5, 6]
    assert any("LockNotAvailable" in line for line in lines), lines
    assert _succeeded_per_record(engine) == Counter({i: 1 for i in range(1, 7)})
    assert set(alert_states(engine).values()) == {"escalated"}
    assert len(outbox(engine)) == 6
