"""The gateways tick's documented guarantees that need a second actor or a chosen moment.

- ``poll_devices_sensor`` skips while a ``poll_devices`` run is in progress (queued by the shipped
  queued coordinator, created but not started yet, or a real run blocked on the tick lock), and
  requests again after it; a run being canceled does not hold it back.
- Finished tasks are purged once older than ``keep_done_seconds``, not before; open tasks never.
  Time is passed to ``run_tick`` explicitly (``now``), so the boundary is exact, not slept for.
- Two overlapping ticks on one store serialise on the tick lock (PostgreSQL: an advisory lock;
  SQLite: the one writer from ``BEGIN IMMEDIATE``): the second waits, then sees the first one's
  work, so a task of a dead gateway is failed over once, not twice.

Both record-store backends, real engines, real threads; a tick is paused with an SQLAlchemy event
hook, never a sleep.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import pytest
import sqlalchemy as sa

from orchestration.gateways import registry
from orchestration.gateways.assignment import TICK_LOCK_KEY, TickReport, run_tick
from orchestration.gateways.db import is_postgres, make_engine
from orchestration.gateways.jobs import POLL_JOB, poll_devices_job
from orchestration.gateways.models import poll_tasks
from orchestration.gateways.sensors import ACTIVE
from orchestration.gateways.worker import claim_tasks, report_result
from resources.db import SQLITE_WRITER
from resources.record_store import RecordStoreResource
from tests.gateways.helpers import evaluate_sensor
from tests.support.results import step_metadata
from tests.support.runs import queued_instance, queued_run
from tests.support.wait import wait_until

T0 = 1_000_000.0  # a moment of our choosing: every tick below is told its `now`
BOUND = 120.0  # generous: every wait below ends on an event
# Lock waits in these tests end when the holder lets go; a loaded machine must not turn them
# into lock / busy timeouts.
SLOW_MACHINE = {"RECORD_STORE_LOCK_TIMEOUT_MS": "120000", "RECORD_STORE_BUSY_TIMEOUT_MS": "120000"}


def _tasks(engine: sa.Engine) -> dict[int, sa.Row]:
    with engine.connect() as conn:
        return {r.id: r for r in conn.execute(sa.select(poll_tasks))}


@contextmanager
def _tick_lock_held(engine: sa.Engine) -> Iterator[None]:
    """Hold the lock a tick takes first (PostgreSQL: the advisory lock; SQLite: the writer)."""
    with engine.execution_options(**SQLITE_WRITER).begin() as conn:
        if is_postgres(engine):
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": TICK_LOCK_KEY})
        yield


# -- 1. the sensor skips while a poll_devices run is in progress ----------------------------------


FINISHED = {
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
}
# Unfinished statuses the sensor does not wait for, each with the reason. Overlap is safe in
# any case: a second tick serialises on the tick lock (section 3).
NOT_WAITED_FOR = {
    # Being stopped, takes no new work; one stuck here (its worker gone) must not stop polling
    # until run monitoring clears it.
    dg.DagsterRunStatus.CANCELING: "being canceled",
    # Holds no worker and runs no tick (poll_devices never suspends; nothing in Dagster writes
    # this status yet); waiting for it would stall polling for as long as it stays suspended.
    dg.DagsterRunStatus.SUSPENDED: "suspended",
    # Managed outside Dagster's control plane: never a run this sensor requested (Dagster's own
    # not-finished list leaves it out too).
    dg.DagsterRunStatus.MANAGED: "managed elsewhere",
}


def test_active_is_every_unfinished_status_but_the_justified_exclusions():
    """The sensor's ACTIVE list is Dagster's unfinished statuses minus NOT_WAITED_FOR. A Dagster
    upgrade that adds a status fails here, so someone decides where it belongs."""
    assert len(ACTIVE) == len(set(ACTIVE))
    assert set(ACTIVE).isdisjoint(NOT_WAITED_FOR)
    assert set(ACTIVE) | set(NOT_WAITED_FOR) == set(dg.DagsterRunStatus) - FINISHED


def _pending_run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus) -> dg.DagsterRun:
    """A poll_devices run in ``status``: QUEUED as the queued coordinator makes it (a sensor's
    run waiting for the daemon to dequeue it), the others created in that state."""
    if status == dg.DagsterRunStatus.QUEUED:
        return queued_run(instance, poll_devices_job)
    return instance.create_run_for_job(poll_devices_job, status=status)


@pytest.mark.parametrize(
    "status",
    [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING],
    ids=str,
)
def test_sensor_skips_while_a_poll_devices_run_waits_to_start(sqlite_store_url, status):
    engine = make_engine(sqlite_store_url)
    registry.register(engine, "g1", "P1", lease_seconds=3600)
    registry.upsert_target(engine, "P1", "127.0.0.1:9", "tcp", None, 3600)
    with queued_instance() as instance:  # the shipped, queued run coordinator
        assert evaluate_sensor(
            instance, sqlite_store_url
        ).run_requests  # work waits: a run is wanted

        pending = _pending_run(instance, status)
        assert instance.get_run_by_id(pending.run_id).status == status
        data = evaluate_sensor(instance, sqlite_store_url)
        assert data.run_requests == []
        assert data.skip_message == f"poll_devices run {pending.run_id[:8]} is still in progress"

        instance.report_run_canceled(pending)  # over: the waiting work gets its run again
        (request,) = evaluate_sensor(instance, sqlite_store_url).run_requests
    assert request.tags["platform/gateways-work"].startswith("due=1")
    engine.dispose()


@pytest.mark.parametrize("status", list(NOT_WAITED_FOR), ids=str)
def test_sensor_does_not_wait_for_a_run_it_need_not(instance, sqlite_store_url, status):
    """The exclusions above, observed: such a run does not hold the next one back."""
    engine = make_engine(sqlite_store_url)
    registry.register(engine, "g1", "P1", lease_seconds=3600)
    registry.upsert_target(engine, "P1", "127.0.0.1:9", "tcp", None, 3600)
    instance.create_run_for_job(poll_devices_job, status=status)
    (request,) = evaluate_sensor(instance, sqlite_store_url).run_requests
    assert request.tags["platform/gateways-work"].startswith("due=1")
    engine.dispose()


def test_sensor_skips_while_a_poll_devices_run_is_running(instance, store_url, monkeypatch):
    """A real ``poll_devices`` run, blocked on the tick lock the test holds, is STARTED."""
    for name, value in SLOW_MACHINE.items():
        monkeypatch.setenv(name, value)  # the run's engine (created in the run) waits, not fails
    engine = make_engine(store_url, SLOW_MACHINE)
    registry.register(engine, "g1", "P1", lease_seconds=3600)
    registry.upsert_target(engine, "P1", "127.0.0.1:9", "tcp", None, 3600)
    resources = {"record_store": RecordStoreResource(url=store_url)}
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = poll_devices_job.execute_in_process(
                instance=instance, resources=resources
            )
        except BaseException as exc:  # reported by the main thread
            outcome["result"] = exc

    runner = threading.Thread(target=run, daemon=True)
    with _tick_lock_held(engine):
        runner.start()
        (started,) = wait_until(
            lambda: instance.get_runs(
                dg.RunsFilter(job_name=POLL_JOB, statuses=[dg.DagsterRunStatus.STARTED])
            ),
            BOUND,
            "the poll_devices run to start (and block on the tick lock)",
            alive=runner.is_alive,
        )
        data = evaluate_sensor(instance, store_url)
        assert data.run_requests == []
        assert data.skip_message == f"poll_devices run {started.run_id[:8]} is still in progress"
    runner.join(BOUND)
    assert not runner.is_alive()
    result = outcome["result"]
    assert isinstance(result, dg.ExecuteInProcessResult), result
    assert result.success and step_metadata(result)["created"] == 1

    # Over, and nothing left to do: the sensor's own "nothing due" skip, not "in progress".
    assert evaluate_sensor(instance, store_url).skip_message.startswith("nothing due")
    registry.upsert_target(engine, "P1", "127.0.0.1:10", "tcp", None, 3600)
    (request,) = evaluate_sensor(instance, store_url).run_requests
    assert request.tags["platform/gateways-work"].startswith("due=1")
    engine.dispose()


# -- 2. finished tasks are purged after keep_done_seconds -----------------------------------------


def _one_done_one_open(engine: sa.Engine) -> tuple[int, int, float]:
    """Two targets, one gateway; one task finished at a known moment, the other still held."""
    registry.register(engine, "g1", "P1", lease_seconds=10**9, now=T0)
    for port in (9, 10):
        registry.upsert_target(engine, "P1", f"127.0.0.1:{port}", "tcp", None, 10**9)
    assert run_tick(engine, now=T0).assigned == 2
    done, held = claim_tasks(engine, "g1", 2, 60, now=T0 + 1)
    finished_at = T0 + 2
    assert report_result(engine, "g1", done.id, done.token, "up", {}, now=finished_at)
    return done.id, held.id, finished_at


def test_done_tasks_are_purged_after_keep_done_seconds_not_before(engine):
    done, held, finished_at = _one_done_one_open(engine)
    keep = 600.0
    first = run_tick(engine, now=finished_at + 1, keep_done_seconds=keep)
    assert (first.recorded, first.purged) == (1, 0)
    at_boundary = run_tick(engine, now=finished_at + keep, keep_done_seconds=keep)
    assert at_boundary.purged == 0
    assert set(_tasks(engine)) == {done, held}  # exactly keep_done_seconds old: kept
    # (the held task's lease ran out long ago, it is failed over to g1 again: still open)
    just_after = run_tick(engine, now=finished_at + keep + 0.5, keep_done_seconds=keep)
    assert just_after.purged == 1
    rows = _tasks(engine)
    assert set(rows) == {held}  # the done task is gone; an open task is never purged
    assert rows[held].state != "done"


def test_poll_devices_job_purges_with_its_keep_done_seconds_config(instance, sqlite_store_url):
    """The job's ``keep_done_seconds`` reaches the tick (real clock, margins of minutes)."""
    import time

    engine = make_engine(sqlite_store_url)
    registry.register(engine, "g1", "P1", lease_seconds=3600)
    registry.upsert_target(engine, "P1", "127.0.0.1:9", "tcp", None, 3600)
    run_tick(engine)
    (task,) = claim_tasks(engine, "g1", 1, 60)
    assert report_result(engine, "g1", task.id, task.token, "up", {}, now=time.time() - 1000)
    resources = {"record_store": RecordStoreResource(url=sqlite_store_url)}

    def purged(keep: float) -> int:
        config = {"ops": {"poll_devices_tick": {"config": {"keep_done_seconds": keep}}}}
        result = poll_devices_job.execute_in_process(
            run_config=config, instance=instance, resources=resources
        )
        return step_metadata(result)["purged"]

    assert purged(keep=5000) == 0  # 1,000 s old, kept for 5,000 s
    assert task.id in _tasks(engine)
    assert purged(keep=500) == 1  # kept for 500 s: due for purge
    assert _tasks(engine) == {}
    engine.dispose()


# -- 3. overlapping ticks serialise on the tick lock ----------------------------------------------


def test_overlapping_ticks_serialise_and_fail_over_once(store_url):
    """Tick A pauses between reading g0's held tasks and moving them; tick B starts then.

    B must wait for A's lock (PostgreSQL: seen waiting in ``pg_locks``; SQLite: inside its
    ``BEGIN IMMEDIATE``), then find the tasks with the live g1 and move nothing. Without the
    lock B reads the same tasks before A commits and moves them a second time (token 3).
    """
    setup = make_engine(store_url)
    registry.register(setup, "g0", "P1", lease_seconds=10, now=T0)
    for port in (9, 10, 11):
        registry.upsert_target(setup, "P1", f"127.0.0.1:{port}", "tcp", None, 10**6)
    assert run_tick(setup, now=T0 + 1).assigned == 3  # all with g0
    registry.register(setup, "g1", "P1", lease_seconds=10**6, now=T0 + 1)
    now = T0 + 100  # g0's lease (T0 + 10) is long over: its tasks must move to g1, once
    watcher = make_engine(store_url, SLOW_MACHINE)
    first = make_engine(store_url, SLOW_MACHINE)
    second = make_engine(store_url, SLOW_MACHINE)
    postgres = is_postgres(setup)
    lock_statement = "SELECT pg_advisory_xact_lock" if postgres else "BEGIN IMMEDIATE"
    reports: dict[str, TickReport | BaseException] = {}
    second_state = {"pid": None, "at_lock": False, "past_lock": False}

    @sa.event.listens_for(second, "before_cursor_execute")
    def _second_progress(conn, cursor, statement, params, context, executemany):
        if statement.startswith(lock_statement):
            second_state["at_lock"] = True
            if postgres:
                second_state["pid"] = cursor.connection.get_backend_pid()
        elif "gateway_poll_tasks" in statement:
            second_state["past_lock"] = True  # it reads or writes tasks: it holds the lock

    def second_waits() -> bool:
        """B is blocked on the tick lock (or, if the lock is broken, already past it)."""
        if second_state["past_lock"] or "B" in reports:
            return True
        if not second_state["at_lock"]:
            return False
        if not postgres:
            return True  # BEGIN IMMEDIATE sent: it cannot return while A holds the writer
        with watcher.connect() as conn:
            return bool(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                        "AND NOT granted AND pid = :pid AND objid = :k"
                    ),
                    {"pid": second_state["pid"], "k": TICK_LOCK_KEY},
                ).scalar_one()
            )

    def second_tick() -> None:
        try:
            reports["B"] = run_tick(second, now=now)
        except BaseException as exc:  # reported by the main thread's assertion
            reports["B"] = exc

    racer = threading.Thread(target=second_tick, daemon=True)

    @sa.event.listens_for(first, "before_cursor_execute")
    def _pause_before_moving(conn, cursor, statement, params, context, executemany):
        moving = statement.startswith("UPDATE gateway_poll_tasks SET") and "gateway_id=" in (
            statement
        )
        if racer.ident is None and moving:
            racer.start()  # A has read g0's tasks and holds the lock: B starts now
            wait_until(second_waits, BOUND, "the second tick to wait on the tick lock")

    try:
        reports["A"] = run_tick(first, now=now)
        assert racer.ident is not None, "the hook never ran between tick A's read and its move"
        racer.join(BOUND)
        assert not racer.is_alive()
        a, b = reports["A"], reports["B"]
        assert isinstance(b, TickReport), f"tick B failed: {b!r}"
        assert isinstance(a, TickReport)
        assert [(m["from"], m["to"]) for m in a.reassigned] == [("g0", "g1")] * 3
        assert b.reassigned == [] and b.assigned == 0  # it waited, then saw A's work
        rows = _tasks(setup).values()
        assert [(r.gateway_id, r.token, r.attempts) for r in rows] == [("g1", 2, 2)] * 3
    finally:
        for eng in (setup, watcher, first, second):
            eng.dispose()
