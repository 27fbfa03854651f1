"""The one-statement chunk (``sql_action``, PostgreSQL): same rows as the Python action."""

import dataclasses
import threading
import uuid

import pytest
import sqlalchemy as sa

from dev.seed import seed_alerts, seed_packages
from orchestration.triggers.catalog import ESCALATE_ALERTS, EXPIRE_PACKAGES
from orchestration.triggers.models import alerts, edge_packages, trigger_attempts
from orchestration.triggers.spec import SqlAction, TriggerDeclarationError, TriggerSpec, utcnow
from orchestration.triggers.worker import process_batch
from resources.record_store import make_engine
from tests.support.postgres import blocked_by
from tests.support.wait import wait_until
from tests.triggers.helpers import history, outbox

PYTHON_ONLY = dataclasses.replace(ESCALATE_ALERTS, sql_action=None)


@pytest.fixture
def pg(pg_store_url):
    engine = make_engine(pg_store_url)
    yield engine
    engine.dispose()


def _reset(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "TRUNCATE alerts, trigger_history, trigger_attempts, notification_outbox "
                "RESTART IDENTITY"
            )
        )


def _seed_mixed(engine: sa.Engine) -> None:
    """6 due, 2 fresh, 2 resolved; due alert 2 given up on, due alert 3 failed once before."""
    seed_alerts(engine, due=6, fresh=2, resolved=2)
    with engine.begin() as conn:
        conn.execute(
            trigger_attempts.insert(),
            [
                {"trigger": "escalate_alerts", "record_id": 2, "attempts": 3,
                 "status": "exhausted", "last_error": "x", "updated_at": utcnow()},
                {"trigger": "escalate_alerts", "record_id": 3, "attempts": 1,
                 "status": "retrying", "last_error": "y", "updated_at": utcnow()},
            ],
        )  # fmt: skip


def _snapshot(engine: sa.Engine, result) -> dict:
    with engine.connect() as conn:
        states = {r.id: r.state for r in conn.execute(sa.select(alerts.c.id, alerts.c.state))}
        stamped = set(
            conn.execute(sa.select(alerts.c.id).where(alerts.c.escalated_at.is_not(None))).scalars()
        )
        attempts = sorted(
            (r.record_id, r.attempts, r.status, r.last_error)
            for r in conn.execute(sa.select(trigger_attempts))
        )
    notes = {}
    for row in outbox(engine):
        payload = dict(row.payload)
        minutes = payload.pop("pending_minutes")
        assert 44.5 < minutes < 46, minutes  # seeded 45 minutes ago
        notes[row.dedupe_key] = (row.channel, payload, row.attempts, row.delivered_at)
    return {
        "outcomes": [(o.record_id, o.status, o.attempt) for o in result.outcomes],
        "keys": sorted(result.notification_keys),
        "states": states,
        "stamped": stamped,
        "attempts": attempts,
        "history": sorted(
            (h.record_id, h.attempt, h.status, h.error, h.run_id, h.actor)
            for h in history(engine, "escalate_alerts")
        ),
        "outbox": notes,
    }


def test_sql_action_writes_what_the_python_action_writes(pg):
    ids = list(range(1, 12))  # 11 is no record at all
    _seed_mixed(pg)
    python = _snapshot(pg, process_batch(PYTHON_ONLY, pg, ids, run_id="run-1", actor="ops"))
    _reset(pg)
    _seed_mixed(pg)
    logs: list[str] = []
    sql = _snapshot(
        pg, process_batch(ESCALATE_ALERTS, pg, ids, run_id="run-1", actor="ops", log=logs.append)
    )
    assert sql == python
    assert not any("Python path" in line for line in logs)
    assert sql["history"] == [
        (1, 1, "succeeded", None, "run-1", "ops"),
        (3, 2, "succeeded", None, "run-1", "ops"),
        (4, 1, "succeeded", None, "run-1", "ops"),
        (5, 1, "succeeded", None, "run-1", "ops"),
        (6, 1, "succeeded", None, "run-1", "ops"),
    ]
    assert (3, 2, "succeeded", None) in sql["attempts"]
    # Running it again changes nothing: every record has moved on.
    again = process_batch(ESCALATE_ALERTS, pg, ids, run_id="run-2")
    assert again.counts()["succeeded"] == 0
    assert _snapshot(pg, again)["outbox"] == sql["outbox"]


def test_expire_packages_sql_action_invalidates_tokens(pg):
    tokens = seed_packages(pg, expired=3, active=2)
    result = process_batch(EXPIRE_PACKAGES, pg, list(tokens))
    assert result.counts()["succeeded"] == 3
    with pg.connect() as conn:
        rows = conn.execute(sa.select(edge_packages).order_by(edge_packages.c.id)).all()
    expired = [r for r in rows if r.state == "expired"]
    assert len(expired) == 3
    assert all(r.download_token_hash is None and r.expired_at is not None for r in expired)
    assert all(r.download_token_hash is not None for r in rows if r.state == "active")


def test_failing_statement_is_redone_by_the_python_action(pg):
    """A constraint error in the statement rolls it back; the chunk goes the Python way."""
    seed_alerts(pg, due=4)
    broken = SqlAction(values=lambda t, now: {"state": "escalated", "title": None})
    spec = dataclasses.replace(ESCALATE_ALERTS, sql_action=broken)
    logs: list[str] = []
    result = process_batch(spec, pg, [1, 2, 3, 4], log=logs.append)
    assert result.ids("succeeded") == [1, 2, 3, 4]
    assert any("Python path" in line and "NotNullViolation" in line for line in logs)
    with pg.connect() as conn:
        titles = conn.execute(sa.select(alerts.c.title).where(alerts.c.title.is_(None))).all()
    assert titles == []  # nothing of the failed statement survived
    assert len(history(pg, "escalate_alerts")) == 4 and len(outbox(pg)) == 4


@pytest.mark.parametrize("holder_ends", ["commit", "rollback"])
def test_a_row_another_transaction_holds_is_waited_for_then_re_checked(
    pg_store_url, holder_ends, request
):
    """The statement's ``UPDATE`` waits for a row another transaction holds (it is seen blocked
    by that very session in ``pg_blocking_pids``, not skipping the row), then re-checks ``where``
    on the row as the holder left it (PostgreSQL's read-committed re-check): committed as moved,
    the record is skipped (no double move); rolled back, it is still due and moves."""
    app = f"h3-sql-action-{uuid.uuid4().hex[:8]}"
    # The worker waits as long as the test may take to end the holder (no lock timeout retry).
    worker_engine = make_engine(
        f"{pg_store_url}&application_name={app}", {"RECORD_STORE_LOCK_TIMEOUT_MS": "60000"}
    )
    request.addfinalizer(worker_engine.dispose)  # disposed whatever the assertions say
    others = make_engine(pg_store_url)  # the holder's and the probe's connections
    request.addfinalizer(others.dispose)
    seed_alerts(worker_engine, due=3)
    holder = others.connect()
    tx = holder.begin()
    holder_pid = holder.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    holder.execute(alerts.update().where(alerts.c.id == 2).values(state="escalated"))
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["r"] = process_batch(ESCALATE_ALERTS, worker_engine, [1, 2, 3])
        except BaseException as exc:  # surfaced by the assertions below
            outcome["error"] = exc

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        with others.connect() as probe:
            wait_until(
                lambda: blocked_by(probe, holder_pid, application_name=app),
                what="the worker's UPDATE blocked by the holder's row lock",
                interval=0.02,
                alive=worker.is_alive,
            )
        tx.commit() if holder_ends == "commit" else tx.rollback()
        worker.join(60)
    finally:
        holder.close()
    assert not worker.is_alive() and "error" not in outcome, outcome
    moved = [1, 3] if holder_ends == "commit" else [1, 2, 3]
    assert outcome["r"].ids("succeeded") == moved
    assert outcome["r"].ids("skipped") == ([2] if holder_ends == "commit" else [])
    assert sorted(h.record_id for h in history(worker_engine, "escalate_alerts")) == moved
    assert sorted(r.dedupe_key for r in outbox(worker_engine)) == [
        f"escalate_alerts:{i}" for i in moved
    ]
    with worker_engine.connect() as conn:
        stamped = conn.execute(
            sa.select(alerts.c.id).where(alerts.c.escalated_at.is_not(None)).order_by(alerts.c.id)
        ).scalars()
        assert list(stamped) == moved  # the holder's commit set no escalated_at: not moved here


def test_sql_action_on_an_unknown_column_fails_at_declaration():
    with pytest.raises(TriggerDeclarationError, match="sql_action sets unknown column 'colour'"):
        TriggerSpec(
            name="bad_sql",
            table=alerts,
            where={"state": "pending"},
            action=lambda r, c: None,
            sql_action=SqlAction(values=lambda t, now: {"colour": "red"}),
        )


def test_an_existing_outbox_key_sends_the_chunk_the_python_way(pg):
    """A record transitioned before (its key is in the outbox) still moves; no second note."""
    seed_alerts(pg, due=3)
    assert process_batch(ESCALATE_ALERTS, pg, [2]).ids("succeeded") == [2]
    with pg.begin() as conn:  # alert 2 is reopened; its old notification stays
        conn.execute(alerts.update().where(alerts.c.id == 2).values(state="pending"))
    logs: list[str] = []
    result = process_batch(ESCALATE_ALERTS, pg, [1, 2, 3], log=logs.append)
    assert result.ids("succeeded") == [1, 2, 3]
    assert any("Python path" in line and "UniqueViolation" in line for line in logs)
    assert sorted(r.dedupe_key for r in outbox(pg)) == [f"escalate_alerts:{i}" for i in (1, 2, 3)]


@pytest.mark.parametrize("spec", [ESCALATE_ALERTS, EXPIRE_PACKAGES], ids=lambda s: s.name)
def test_the_statement_is_compiled_once_not_per_chunk_or_batch(spec):
    """SQLAlchemy caches it (a clause without a cache key, e.g. ON CONFLICT, would recompile
    it for every chunk: ~5 ms each); run id and actor are parameters, not part of the key."""
    from orchestration.triggers import sql_statement

    first = sql_statement.statement(spec, "run-1", "ops")._generate_cache_key()
    assert first is not None
    assert first == sql_statement.statement(spec, "run-2", None)._generate_cache_key()
