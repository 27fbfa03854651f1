"""A chunk whose transaction fails as a whole is rolled back and redone whole, and ends right.

Real contention, no fault injection in the worker: a busy SQLite (another connection holding the
write lock) and a PostgreSQL deadlock (the chunk and another transaction locking rows in opposite
order; the chunk is the victim). Either way the chunk is retried (``resources.db.retrying``), the
redo re-reads every record (what the other transaction changed is respected, nothing moves twice)
and the chunks around it are untouched. The lock-timeout attempt limit (three, then the held rows
are skipped and named) is ``test_db_faults.py``'s first test.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import uuid
from collections import Counter

import sqlalchemy as sa

from dev.seed import seed_alerts
from orchestration.triggers.catalog import ESCALATE_ALERTS
from orchestration.triggers.models import alerts
from orchestration.triggers.worker import process_batch
from resources.record_store import make_engine
from tests.support.postgres import blocked_by
from tests.support.wait import wait_until
from tests.triggers.helpers import alert_states, moved_per_record, outbox


def _retry_lines(lines: list[str]) -> list[str]:
    return [ln for ln in lines if " retried after: " in ln]


def test_a_chunk_that_finds_sqlite_busy_is_retried_until_the_writer_is_gone(
    sqlite_store_url, request
):
    """After chunk 1..2 commits, another connection takes the write lock (``BEGIN IMMEDIATE``)
    and resolves alert 4. Chunk 3..4 finds the database locked (busy timeout 100 ms), twice;
    then the writer commits and the chunk's third attempt moves 3 and skips 4."""
    engine = make_engine(sqlite_store_url, {"RECORD_STORE_BUSY_TIMEOUT_MS": "100"})
    request.addfinalizer(engine.dispose)  # disposed whatever the assertions say
    seed_alerts(engine, due=6)
    writer = sqlite3.connect(sqlite_store_url.removeprefix("sqlite:///"), isolation_level=None)
    lines: list[str] = []

    def after_chunk(_size: int) -> None:  # runs between the worker's chunks
        if not writer.in_transaction and len(moved_per_record(engine)) == 2:
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("UPDATE alerts SET state = 'resolved' WHERE id = 4")

    def log(line: str) -> None:
        lines.append(line)
        if len(_retry_lines(lines)) == 2 and writer.in_transaction:
            writer.execute("COMMIT")  # the other writer goes; the next attempt gets the lock

    try:
        result = process_batch(
            ESCALATE_ALERTS, engine, range(1, 7), commit_every=2, log=log, progress=after_chunk
        )
    finally:
        if writer.in_transaction:
            writer.execute("ROLLBACK")
        writer.close()
    retries = _retry_lines(lines)
    assert len(retries) == 2, lines
    for n, line in enumerate(retries, start=1):
        assert line.startswith("chunk 3..4 retried after: OperationalError: database is locked")
        assert f"attempt {n} failed" in line
    assert result.ids("succeeded") == [1, 2, 3, 5, 6]
    assert result.ids("skipped") == [4]  # the redo re-read it: resolved by the other writer
    assert alert_states(engine) == {
        1: "escalated", 2: "escalated", 3: "escalated", 4: "resolved", 5: "escalated",
        6: "escalated",
    }  # fmt: skip
    assert moved_per_record(engine) == Counter([1, 2, 3, 5, 6])  # each once
    keys = sorted(r.dedupe_key for r in outbox(engine))
    assert keys == [f"escalate_alerts:{i}" for i in (1, 2, 3, 5, 6)]


def test_a_chunk_chosen_as_deadlock_victim_is_retried_whole_and_ends_right(pg_store_url, request):
    """The chunk's statement locks alert 1, then waits at alert 2 on a gate (a trigger taking an
    advisory lock the test holds). Another transaction holds alert 3 and asks for alert 1: it
    waits for the chunk. The gate opens; the chunk asks for alert 3 and closes the cycle, so its
    own deadlock check (after ``deadlock_timeout``) makes it the victim: the other transaction
    never checks (its ``deadlock_timeout`` is 60 s). The chunk is rolled back and redone: alert 3
    (resolved by the other transaction) is skipped, alert 1 keeps the other's title."""
    app = f"h3-deadlock-{uuid.uuid4().hex[:8]}"
    key = random.randrange(1, 2**31)
    # A lock wait far longer than deadlock_timeout (1 s): the deadlock check, not the lock
    # timeout, is what ends the chunk's wait, however loaded the machine.
    worker_engine = make_engine(
        f"{pg_store_url}&application_name={app}", {"RECORD_STORE_LOCK_TIMEOUT_MS": "60000"}
    )
    request.addfinalizer(worker_engine.dispose)  # disposed whatever the assertions say
    admin = make_engine(pg_store_url)
    request.addfinalizer(admin.dispose)
    seed_alerts(worker_engine, due=3)
    with admin.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION h3_gate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.id = 2 THEN PERFORM pg_advisory_xact_lock({key}); END IF; RETURN NEW; "
            "END $$"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER h3_gate BEFORE UPDATE ON alerts FOR EACH ROW EXECUTE FUNCTION h3_gate()"
        )
    gate, other, probe = admin.connect(), admin.connect(), admin.connect()
    gate_pid = gate.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    gate.exec_driver_sql(f"SELECT pg_advisory_lock({key})")  # session-level: outlives the commit
    gate.commit()
    other.exec_driver_sql("SET LOCAL deadlock_timeout = '60s'")
    other.exec_driver_sql("SET LOCAL lock_timeout = '60s'")
    other_pid = other.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    other.execute(alerts.update().where(alerts.c.id == 3).values(state="resolved"))

    lines: list[str] = []
    done: dict = {}
    worker = threading.Thread(
        target=lambda: done.update(
            result=process_batch(ESCALATE_ALERTS, worker_engine, [1, 2, 3], log=lines.append)
        ),
        daemon=True,
    )
    other_done: dict = {}

    def other_asks_for_alert_1() -> None:
        try:
            other.execute(alerts.update().where(alerts.c.id == 1).values(title="by the other"))
            other.commit()
            other_done["ok"] = True
        except Exception as exc:  # the assertions below name it
            other_done["error"] = exc

    asker = threading.Thread(target=other_asks_for_alert_1, daemon=True)
    try:
        worker.start()
        worker_pid = wait_until(
            lambda: blocked_by(probe, gate_pid, application_name=app),
            what="the chunk waiting at the gate, alert 1 locked",
            interval=0.02,
            alive=worker.is_alive,
        )
        asker.start()
        wait_until(
            lambda: blocked_by(probe, worker_pid, waiter=other_pid),
            what="the other transaction waiting for the chunk's lock on alert 1",
            interval=0.02,
            alive=asker.is_alive,
        )
        gate.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
        gate.commit()
        worker.join(60)
        asker.join(60)
    finally:
        gate.exec_driver_sql("SELECT pg_advisory_unlock_all()")
        for conn in (gate, other, probe):
            conn.close()
    assert not worker.is_alive() and not asker.is_alive()
    assert other_done == {"ok": True}, other_done
    retries = _retry_lines(lines)
    assert len(retries) == 1, lines
    assert retries[0].startswith("chunk 1..3 retried after: DeadlockDetected: deadlock detected")
    assert "attempt 1 failed" in retries[0]
    result = done["result"]
    assert result.ids("succeeded") == [1, 2]
    assert result.ids("skipped") == [3]
    assert alert_states(worker_engine) == {1: "escalated", 2: "escalated", 3: "resolved"}
    with worker_engine.connect() as conn:
        title = conn.execute(sa.select(alerts.c.title).where(alerts.c.id == 1)).scalar()
    assert title == "by the other"  # the redo re-read the row the other transaction changed
    assert moved_per_record(worker_engine) == Counter([1, 2])
    assert sorted(r.dedupe_key for r in outbox(worker_engine)) == [
        "escalate_alerts:1",
        "escalate_alerts:2",
    ]
