"""Two gateway agents claiming at once on one SQLite record store both succeed.

``claim_tasks`` reads its candidates, then updates them. Under WAL a DEFERRED transaction that
read before another connection committed cannot become a writer: its UPDATE fails at once with
"database is locked" (SQLITE_BUSY_SNAPSHOT, the busy timeout does not help). The claim therefore
begins as a writer (``resources.db.SQLITE_WRITER``): the second agent waits for the first.

Real SQLite file, two engines (as two agent processes have), two threads. The second claim is
started exactly between the first one's read and its write (an event hook on the first engine);
the first continues once the second has finished, or is about to wait for the write lock.
"""

from __future__ import annotations

import threading

import sqlalchemy as sa

from orchestration.gateways import registry
from orchestration.gateways.assignment import run_tick
from orchestration.gateways.db import make_engine
from orchestration.gateways.models import poll_tasks
from orchestration.gateways.worker import claim_tasks

T0 = 1_000_000.0
LEASE = 10.0
BOUND = 60.0  # generous: a wait that ends on an event, never a sleep
# The lock waits of this test end as soon as the holder commits; a loaded machine must not turn
# the second agent's wait into a timeout.
SLOW_MACHINE = {"RECORD_STORE_LOCK_TIMEOUT_MS": "60000"}


def _assigned(engine: sa.Engine) -> dict[str, set[int]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(poll_tasks.c.id, poll_tasks.c.gateway_id)).all()
    out: dict[str, set[int]] = {}
    for task_id, gateway_id in rows:
        out.setdefault(gateway_id, set()).add(task_id)
    return out


def test_two_agents_claiming_at_once_both_succeed_on_sqlite(sqlite_store_url):
    setup = make_engine(sqlite_store_url)
    registry.register(setup, "g1", "P1", lease_seconds=LEASE, now=T0)
    registry.register(setup, "g2", "P1", lease_seconds=LEASE, now=T0)
    for n in range(4):
        registry.upsert_target(setup, "P1", f"10.0.0.{n}:80", "tcp", interval_seconds=60)
    run_tick(setup, now=T0 + 1)
    assigned = _assigned(setup)
    assert assigned.get("g1") and assigned.get("g2"), assigned  # both agents have work
    setup.dispose()

    first = make_engine(sqlite_store_url, SLOW_MACHINE)
    second = make_engine(sqlite_store_url, SLOW_MACHINE)
    second_went = threading.Event()  # finished, or about to wait for the write lock
    outcome: dict[str, object] = {}

    @sa.event.listens_for(second, "before_cursor_execute")
    def _second_waits(conn, cursor, statement, params, context, executemany):
        if statement.startswith("BEGIN IMMEDIATE"):
            second_went.set()

    def second_claim() -> None:
        try:
            outcome["g2"] = claim_tasks(second, "g2", 10, LEASE, now=T0 + 2)
        except Exception as exc:  # reported by the main thread's assertion
            outcome["g2"] = exc
        finally:
            second_went.set()

    racer = threading.Thread(target=second_claim, daemon=True)

    @sa.event.listens_for(first, "after_cursor_execute")
    def _between_read_and_write(conn, cursor, statement, params, context, executemany):
        if racer.ident is None and statement.lstrip().startswith(f"SELECT {poll_tasks.name}.id "):
            racer.start()  # the other agent claims right after our read
            assert second_went.wait(BOUND), "the second claim neither finished nor waited"

    try:
        try:
            outcome["g1"] = claim_tasks(first, "g1", 10, LEASE, now=T0 + 2)
        except sa.exc.OperationalError as exc:
            outcome["g1"] = exc
        assert racer.ident is not None, "the hook never ran between the claim's read and write"
        racer.join(BOUND)
        assert not racer.is_alive()
        for gateway in ("g1", "g2"):
            claimed = outcome[gateway]
            assert not isinstance(claimed, Exception), f"{gateway}: {claimed}"
            assert {t.id for t in claimed} == assigned[gateway]  # type: ignore[union-attr]
        with first.connect() as conn:
            states = set(conn.execute(sa.select(poll_tasks.c.state)).scalars())
        assert states == {"running"}
    finally:
        first.dispose()
        second.dispose()
