"""Real gateway agents (subprocesses) polling real devices on 127.0.0.1, coordinated by the tick.

Leases are short (``tests.gateways.devices``: heartbeat 0.3 s, lease 4 s) so failover happens in
seconds, yet a loaded machine's stall does not lapse a live agent's lease; the coordinator
is ``run_tick`` in a loop every TICK seconds (the Dagster wiring is tested apart). These tests
prove that failover, routing and fencing happen and who ends up with which task; how fast is
measured by ``bench/gateways_failover.py`` and ``bench/gateway_backlog.py``, not asserted here.
Every wait ends on an event (``tests.support.wait.wait_until``) with a bound meant for a loaded
machine.
"""

import signal
import threading
import time

import pytest
import sqlalchemy as sa

from orchestration.gateways import registry
from orchestration.gateways.assignment import run_tick
from orchestration.gateways.db import make_engine
from orchestration.gateways.models import poll_tasks, targets
from tests.gateways.devices import AgentProcess, DeviceServer
from tests.support.wait import wait_until

TICK = 0.2
BOUND = 120.0  # every wait ends on its event; the bound only catches a hang
HELD_TIMEOUT = 300.0  # a /held check's own timeout: longer than any wait for the gate
HOUR = 3600.0  # the agent's longest allowed poll interval
pytestmark = pytest.mark.slow


class Coordinator:
    """run_tick every TICK seconds on a thread; errors are re-raised in the test."""

    def __init__(self, engine):
        self.engine = engine
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.reports = []
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self.stop.is_set():
            try:
                self.reports.append(run_tick(self.engine))
            except BaseException as exc:  # pragma: no cover - surfaced by __exit__
                self.errors.append(exc)
            self.stop.wait(TICK)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(BOUND)  # a tick in progress finishes first; the bound only catches a hang
        assert not self.thread.is_alive(), "the coordinator thread did not stop"
        assert not self.errors, self.errors


def task_rows(engine, target_ids=None):
    q = sa.select(poll_tasks)
    if target_ids is not None:
        q = q.where(poll_tasks.c.target_id.in_(target_ids))
    with engine.connect() as conn:
        return conn.execute(q).all()


def live_ids(engine):
    with engine.connect() as conn:
        return {g.id for g in registry.live_gateways(conn, time.time())}


def targets_by_id(engine):
    with engine.connect() as conn:
        return {r.id: r for r in conn.execute(sa.select(targets))}


def test_partition_routing_failover_and_no_gateway_with_real_agents(store_url, tmp_path):
    engine = make_engine(store_url)
    agents: list[AgentProcess] = []
    with DeviceServer() as device:
        # P1's checks hang until the test opens the gate: g1 is killed truly mid-check.
        p1 = [
            registry.upsert_target(
                engine, "P1", device.url(f"/held?d={i}"), "http", None, 3600, HELD_TIMEOUT
            )
            for i in range(6)
        ]
        p2 = [
            registry.upsert_target(engine, "P2", device.url(f"/p2/{i}"), "http", None, 3600)
            for i in range(3)
        ]
        shared = device.url("/shared")
        shared_p1 = registry.upsert_target(engine, "P1", shared, "http", None, 3600)
        shared_p2 = registry.upsert_target(engine, "P2", shared, "http", None, 3600)
        site = [
            registry.upsert_target(engine, "P1", device.url(f"/site/{i}"), "http", "site-a", 3600)
            for i in range(2)
        ]
        down = registry.upsert_target(engine, "P2", device.url("/down"), "http", None, 3600)
        assert shared_p1 != shared_p2
        try:
            agents += [
                AgentProcess("g1", "P1", store_url, tmp_path),
                AgentProcess("g2", "P1", store_url, tmp_path, domains=("site-a",)),
                AgentProcess("g3", "P2", store_url, tmp_path),
            ]
            wait_until(lambda: live_ids(engine) == {"g1", "g2", "g3"}, BOUND, "three live agents")
            with Coordinator(engine) as coordinator:
                # g1 is running P1 checks that cannot finish: SIGKILL it mid-execution.
                wait_until(
                    lambda: [
                        t.id
                        for t in task_rows(engine, p1)
                        if t.gateway_id == "g1" and t.state == "running"
                    ],
                    BOUND,
                    "g1 running P1 tasks",
                )
                held = [
                    t.id
                    for t in task_rows(engine, p1)
                    if t.gateway_id == "g1" and t.state in ("assigned", "running")
                ]
                agents[0].kill()
                wait_until(
                    lambda: all(t.gateway_id == "g2" for t in task_rows(engine) if t.id in held),
                    BOUND,
                    "g1's tasks failed over to g2, the only P1 gateway left",
                )
                device.gate.set()
                wait_until(
                    lambda: all(t.state == "done" for t in task_rows(engine) if t.id in held),
                    BOUND,
                    "g1's tasks to complete elsewhere",
                )
                rows = {t.id: t for t in task_rows(engine)}
                for task_id in held:
                    assert rows[task_id].result_gateway_id == "g2"
                    assert rows[task_id].token >= 2  # reassigned: g1's token is fenced off
                wait_until(
                    lambda: all(t.state == "done" for t in task_rows(engine)), BOUND, "every task"
                )
                wait_until(
                    lambda: all(r.status != "unknown" for r in targets_by_id(engine).values()),
                    BOUND,
                    "every status recorded",
                )
                by_target = {t.target_id: t for t in task_rows(engine)}
                for tid in [*p1, shared_p1, *site]:
                    assert by_target[tid].result_gateway_id in {"g1", "g2"}
                for tid in site:
                    assert by_target[tid].result_gateway_id == "g2"
                for tid in [*p2, shared_p2, down]:
                    assert by_target[tid].result_gateway_id == "g3"
                status = targets_by_id(engine)
                assert status[shared_p1].last_gateway_id in {"g1", "g2"}
                assert status[shared_p2].last_gateway_id == "g3"
                assert status[down].status == "down"
                assert status[down].last_result["http_status"] == 503
                assert status[p2[0]].status == "up"

                # Every P1 gateway gone (g2 shuts down cleanly): new P1 work waits.
                assert agents[1].stop() == 0
                assert "deregistered" in agents[1].output()
                assert "g2" not in live_ids(engine)
                port = device.httpd.server_address[1]
                late = [
                    registry.upsert_target(engine, "P1", device.url("/late"), "http", None, 3600),
                    registry.upsert_target(engine, "P1", f"127.0.0.1:{port}", "tcp", "site-a"),
                ]
                wait_until(
                    lambda: (
                        {t.state for t in task_rows(engine, late)} == {"no_gateway"}
                        and len(task_rows(engine, late)) == 2
                    ),
                    BOUND,
                    "P1 tasks waiting as no_gateway",
                )
                ticks = len(coordinator.reports)
                wait_until(lambda: len(coordinator.reports) >= ticks + 3, BOUND, "three more ticks")
                assert {t.state for t in task_rows(engine, late)} == {"no_gateway"}  # still
                agents.append(AgentProcess("g4", "P1", store_url, tmp_path, domains=("site-a",)))
                wait_until(
                    lambda: {t.state for t in task_rows(engine, late)} == {"done"},
                    BOUND,
                    "late done",
                )
                assert {t.result_gateway_id for t in task_rows(engine, late)} == {"g4"}
        finally:
            for agent in agents:
                agent.stop()


def test_stale_gateway_result_is_rejected(sqlite_store_url, tmp_path):
    engine = make_engine(sqlite_store_url)
    agents: list[AgentProcess] = []
    with DeviceServer() as device:
        # The check hangs until the gate opens: the holder cannot finish before it is frozen.
        tid = registry.upsert_target(
            engine, "P1", device.url("/held"), "http", None, 3600, HELD_TIMEOUT
        )
        try:
            # The 4 s default lease: the frozen holder's lapses, a busy machine's stalls do not
            # (one takeover exactly, token 2).
            agents += [
                AgentProcess("a", "P1", sqlite_store_url, tmp_path),
                AgentProcess("b", "P1", sqlite_store_url, tmp_path),
            ]
            wait_until(lambda: live_ids(engine) == {"a", "b"}, BOUND, "two live agents")
            with Coordinator(engine):
                (task,) = wait_until(
                    lambda: [t for t in task_rows(engine) if t.state == "running"],
                    BOUND,
                    "running",
                )
                holder = next(a for a in agents if a.id == task.gateway_id)
                other = next(a for a in agents if a.id != task.gateway_id)
                holder.signal(signal.SIGSTOP)  # frozen mid-check: its lease lapses
                wait_until(lambda: task_rows(engine)[0].gateway_id == other.id, BOUND, "takeover")
                device.gate.set()  # both checks answer; only the other agent can report
                wait_until(
                    lambda: task_rows(engine)[0].result_gateway_id == other.id,
                    BOUND,
                    "the other agent's result",
                )
                holder.signal(signal.SIGCONT)  # wakes up with a late result
                wait_until(lambda: "rejected" in holder.output(), BOUND, "the stale report")
                wait_until(lambda: holder.id in live_ids(engine), BOUND, "holder renewing again")
                (row,) = task_rows(engine)
                assert (row.state, row.result_gateway_id, row.token) == ("done", other.id, 2)
                status = wait_until(
                    lambda: (s := targets_by_id(engine)[tid]).status != "unknown" and s,
                    BOUND,
                    "the result recorded",
                )
                assert (status.status, status.last_gateway_id) == ("up", other.id)
        finally:
            for agent in agents:
                agent.stop()


def test_agent_with_a_backlog_claims_again_when_a_check_finishes_not_a_poll_later(
    sqlite_store_url, tmp_path
):
    """Two slots, 12 tasks, a one-hour poll: all 12 finish, so each claim followed a finished
    check. Waiting a poll between claims would take five hours; the bound is minutes.

    The tasks are assigned before the agent starts (its id registered first), so its first
    claim finds them: nothing else could wake it within the hour. How fast the backlog drains
    is ``bench/gateway_backlog.py``'s number, not this test's.
    """
    engine = make_engine(sqlite_store_url)
    with DeviceServer() as device:
        ids = [
            registry.upsert_target(engine, "P1", device.url(f"/ok?d={i}"), "http", None, 3600)
            for i in range(12)
        ]
        registry.register(engine, "g1", "P1", lease_seconds=BOUND)
        assert run_tick(engine).assigned == 12
        agent = AgentProcess("g1", "P1", sqlite_store_url, tmp_path, poll=HOUR, concurrency=2)
        try:
            wait_until(
                lambda: all(t.state == "done" for t in task_rows(engine, ids)),
                BOUND,
                "every task done (a poll between claims would take hours)",
                alive=lambda: agent.proc.poll() is None,
            )
        finally:
            assert agent.stop() == 0, agent.output()
    rows = task_rows(engine, ids)
    assert {(t.result_gateway_id, t.token) for t in rows} == {("g1", 1)}
    assert len(device.hits) == 12  # each target checked once
    engine.dispose()
