"""The set-based worker path (``pure_action``): same outcomes as the per-record path."""

import sqlalchemy as sa

from dev.seed import seed_alerts
from orchestration.triggers import actions
from orchestration.triggers.models import alerts
from orchestration.triggers.spec import Notification, Transition, TriggerSpec, older_than
from orchestration.triggers.worker import process_batch
from tests.triggers.helpers import alert_states, history, outbox


def _spec(action, on_error=None, max_attempts: int = 1, **kw) -> TriggerSpec:
    return TriggerSpec(
        name="pure_escalation",
        table=alerts,
        where={"state": "pending", "created_at": older_than(minutes=30)},
        action=action,
        max_attempts=max_attempts,
        on_error=on_error,
        pure_action=True,
        **kw,
    )


def test_raising_pure_action_keeps_per_record_attempts_and_on_error(engine):
    seed_alerts(engine, due=4)

    def action(record, ctx):
        if record["id"] == 3:
            raise RuntimeError("boom on 3")
        return actions.escalate_alert(record, ctx)

    def on_error(record, ctx, error):
        ctx.conn.execute(sa.select(1))  # on_error gets the real transaction
        return Transition({"state": "resolved"}, Notification({"error": error}))

    spec = _spec(action, on_error, max_attempts=2)
    first = process_batch(spec, engine, [1, 2, 3, 4])
    assert first.counts() == {"succeeded": 3, "skipped": 0, "failed": 1, "exhausted": 0}
    assert alert_states(engine) == {1: "escalated", 2: "escalated", 3: "pending", 4: "escalated"}
    second = process_batch(spec, engine, [1, 2, 3, 4])
    assert [(o.record_id, o.status) for o in second.outcomes] == [
        (1, "skipped"), (2, "skipped"), (3, "exhausted"), (4, "skipped"),
    ]  # fmt: skip
    assert alert_states(engine)[3] == "resolved"
    assert process_batch(spec, engine, [3]).outcomes[0].status == "skipped"
    hist = [(h.record_id, h.attempt, h.status) for h in history(engine, "pure_escalation")]
    assert hist == [(1, 1, "succeeded"), (2, 1, "succeeded"), (3, 1, "failed"),
                    (4, 1, "succeeded"), (3, 2, "exhausted")]  # fmt: skip
    keys = sorted(r.dedupe_key for r in outbox(engine))
    assert keys == ["escalate_alerts:1", "escalate_alerts:2", "escalate_alerts:4",
                    "pure_escalation:3:error"]  # fmt: skip


def test_pure_action_that_uses_the_connection_falls_back_per_record(engine):
    seed_alerts(engine, due=3)
    seen = []

    def action(record, ctx):
        seen.append(ctx.conn.dialect.name)  # not pure after all
        return Transition({"state": "escalated"})

    logs: list[str] = []
    result = process_batch(_spec(action), engine, [1, 2, 3], log=logs.append)
    assert result.ids("succeeded") == [1, 2, 3]
    assert set(alert_states(engine).values()) == {"escalated"}
    assert len(seen) == 3 and any("per record" in line for line in logs)


def test_set_based_update_is_compare_and_set_on_cas_columns(engine):
    """A record whose cas column changed after the read is skipped, the others go through.

    The change is made inside the chunk's own transaction, between the read and the set-based
    UPDATE: a concurrent writer cannot get in there (PostgreSQL: the read locks the rows; SQLite:
    the chunk holds the write lock from its start, ``resources.db.SQLITE_WRITER``)."""
    from orchestration.triggers import set_based
    from orchestration.triggers.chunk import ChunkWrites, read_due
    from orchestration.triggers.spec import utcnow
    from resources.db import SQLITE_WRITER

    seed_alerts(engine, due=3)
    spec = _spec(lambda record, ctx: Transition({"state": "escalated"}), cas_columns=("title",))
    with engine.execution_options(**SQLITE_WRITER).begin() as conn:
        now = utcnow()
        rows, prior = read_due(spec, conn, [1, 2, 3], now)
        conn.execute(alerts.update().where(alerts.c.id == 2).values(title="renamed"))
        writes = ChunkWrites(spec, "r", None, now)
        set_based.run(spec, conn, [1, 2, 3], rows, prior, writes)
        writes.write(conn, [1, 2, 3])
    outcomes = [(i, writes.outcomes[i].status, writes.outcomes[i].attempt) for i in (1, 2, 3)]
    assert outcomes == [(1, "succeeded", 1), (2, "skipped", 1), (3, "succeeded", 1)]
    assert alert_states(engine) == {1: "escalated", 2: "pending", 3: "escalated"}


def test_a_concurrent_writer_waits_for_the_chunk_on_sqlite(sqlite_store_url):
    """SQLite: the chunk's transaction is one transaction from its first read (``BEGIN
    IMMEDIATE``). Before, its first write was inside a savepoint, which opened the transaction;
    the savepoint's RELEASE committed the records' UPDATE on its own, and a kill before the
    history and outbox inserts left records moved without either."""
    import threading

    from resources.record_store import make_engine

    engine = make_engine(sqlite_store_url)
    seed_alerts(engine, due=3)
    inside = threading.Event()
    release = threading.Event()

    def action(record, ctx):
        if record["id"] == 2:
            inside.set()
            assert release.wait(30)
        return Transition({"state": "escalated"})

    done: dict = {}
    worker = threading.Thread(
        target=lambda: done.update(result=process_batch(_spec(action), engine, [1, 2, 3]))
    )
    worker.start()
    assert inside.wait(30)
    probe = make_engine(sqlite_store_url, {"RECORD_STORE_BUSY_TIMEOUT_MS": "100"})
    try:
        with probe.begin() as other:  # the chunk holds the write lock: this writer waits
            other.execute(alerts.update().where(alerts.c.id == 1).values(title="x"))
        blocked = False
    except sa.exc.OperationalError as exc:
        blocked = "locked" in str(exc)
    finally:
        release.set()
        worker.join(30)
        probe.dispose()
    assert blocked
    assert done["result"].ids("succeeded") == [1, 2, 3]
    engine.dispose()
