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


def test_set_based_update_is_compare_and_set_on_cas_columns(engine, store_url):
    """A record whose cas column changed between the chunk's read and its set-based ``UPDATE``
    is skipped (no history, no notification), the others go through: the real ``process_batch``,
    the change landing just before the ``UPDATE`` is sent.

    Where can it come from? Not from another session: the chunk's read locks its rows
    (PostgreSQL ``FOR UPDATE``; SQLite: the chunk holds the write lock from ``BEGIN IMMEDIATE``),
    and the listener proves that first (another session's write to the row is refused within
    its lock bound). So it is made inside the chunk's own transaction, the only place left; the
    compare-and-set is what keeps the ``UPDATE`` from clobbering it."""
    from resources.record_store import make_engine

    seed_alerts(engine, due=3)
    spec = _spec(actions.escalate_alert, cas_columns=("title",))
    other = make_engine(
        store_url, {"RECORD_STORE_LOCK_TIMEOUT_MS": "200", "RECORD_STORE_BUSY_TIMEOUT_MS": "200"}
    )
    seen: dict[str, str] = {}

    def before_update(conn, cursor, statement, parameters, context, executemany) -> None:
        text = statement.lstrip().upper()
        if seen or not (text.startswith("UPDATE ALERTS") and "RETURNING" in text):
            return
        try:
            with other.begin() as concurrent:
                concurrent.execute(alerts.update().where(alerts.c.id == 2).values(title="other"))
            seen["concurrent"] = "committed"
        except sa.exc.OperationalError as exc:
            seen["concurrent"] = str(exc.orig)
        raw = conn.connection.dbapi_connection.cursor()  # the chunk's own transaction
        raw.execute("UPDATE alerts SET title = 'renamed' WHERE id = 2")
        raw.close()

    sa.event.listen(engine, "before_cursor_execute", before_update)
    try:
        result = process_batch(spec, engine, [1, 2, 3], run_id="r")
    finally:
        sa.event.remove(engine, "before_cursor_execute", before_update)
        other.dispose()
    assert "concurrent" in seen, "the set-based UPDATE was never sent"
    assert seen["concurrent"] != "committed", "another session wrote a row the chunk had read"
    assert any(word in seen["concurrent"] for word in ("lock timeout", "database is locked"))
    outcomes = [(o.record_id, o.status, o.attempt) for o in result.outcomes]
    assert outcomes == [(1, "succeeded", 1), (2, "skipped", 1), (3, "succeeded", 1)]
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.select(alerts.c.id, alerts.c.title)).all())
    assert rows[2] == "renamed"  # the change made in between survives
    assert alert_states(engine) == {1: "escalated", 2: "pending", 3: "escalated"}
    assert [(h.record_id, h.status) for h in history(engine, "pure_escalation")] == [
        (1, "succeeded"), (3, "succeeded"),
    ]  # fmt: skip
    keys = sorted(r.dedupe_key for r in outbox(engine))
    assert keys == ["escalate_alerts:1", "escalate_alerts:3"]


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
            assert release.wait(60)
        return Transition({"state": "escalated"})

    done: dict = {}
    worker = threading.Thread(
        target=lambda: done.update(result=process_batch(_spec(action), engine, [1, 2, 3]))
    )
    worker.start()
    assert inside.wait(60)
    probe = make_engine(sqlite_store_url, {"RECORD_STORE_BUSY_TIMEOUT_MS": "100"})
    try:
        with probe.begin() as other:  # the chunk holds the write lock: this writer waits
            other.execute(alerts.update().where(alerts.c.id == 1).values(title="x"))
        blocked = False
    except sa.exc.OperationalError as exc:
        blocked = "locked" in str(exc)
    finally:
        release.set()
        worker.join(60)
        probe.dispose()
    assert blocked
    assert done["result"].ids("succeeded") == [1, 2, 3]
    engine.dispose()
