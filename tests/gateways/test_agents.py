"""Real gateway agents (subprocesses) polling real devices on 127.0.0.1, coordinated by the tick.

Leases are short (heartbeat 0.3 s, lease 1.5 s) so failover is observable in seconds; the
coordinator is ``run_tick`` in a loop every TICK seconds (the Dagster wiring is tested apart).
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

LEASE = 1.5
TICK = 0.2
SLOW = 0.8
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
        self.thread.join(5)
        assert not self.errors, self.errors


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


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
        p1 = [
            registry.upsert_target(
                engine, "P1", device.url(f"/slow/{SLOW}?d={i}"), "http", None, 3600
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
            wait_until(lambda: live_ids(engine) == {"g1", "g2", "g3"}, 20, "three live agents")
            with Coordinator(engine):
                # g1 is holding slow P1 tasks: SIGKILL it mid-execution.
                held = wait_until(
                    lambda: [
                        t.id
                        for t in task_rows(engine, p1)
                        if t.gateway_id == "g1" and t.state == "running"
                    ],
                    10,
                    "g1 running P1 tasks",
                )
                held = [
                    t.id
                    for t in task_rows(engine, p1)
                    if t.gateway_id == "g1" and t.state in ("assigned", "running")
                ]
                agents[0].kill()
                killed_at = time.time()
                wait_until(
                    lambda: all(t.state == "done" for t in task_rows(engine) if t.id in held),
                    LEASE + TICK + SLOW + 5,
                    "g1's tasks to complete elsewhere",
                )
                rows = {t.id: t for t in task_rows(engine)}
                for task_id in held:
                    assert rows[task_id].result_gateway_id == "g2"
                    assert rows[task_id].token >= 2
                    # reassigned within lease + one tick (+ scheduling slack on a busy box)
                    assert rows[task_id].assigned_at - killed_at < LEASE + TICK + 1.0
                wait_until(
                    lambda: all(t.state == "done" for t in task_rows(engine)), 15, "every task"
                )
                wait_until(
                    lambda: all(r.status != "unknown" for r in targets_by_id(engine).values()),
                    5,
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
                    5,
                    "P1 tasks waiting as no_gateway",
                )
                time.sleep(3 * TICK)
                assert {t.state for t in task_rows(engine, late)} == {"no_gateway"}
                agents.append(AgentProcess("g4", "P1", store_url, tmp_path, domains=("site-a",)))
                wait_until(
                    lambda: {t.state for t in task_rows(engine, late)} == {"done"}, 15, "late done"
                )
                assert {t.result_gateway_id for t in task_rows(engine, late)} == {"g4"}
        finally:
            for agent in agents:
                agent.stop()


def test_stale_gateway_result_is_rejected(sqlite_store_url, tmp_path):
    engine = make_engine(sqlite_store_url)
    agents: list[AgentProcess] = []
    with DeviceServer() as device:
        tid = registry.upsert_target(engine, "P1", device.url("/slow/1.0"), "http", None, 3600)
        try:
            agents += [
                AgentProcess("a", "P1", sqlite_store_url, tmp_path),
                AgentProcess("b", "P1", sqlite_store_url, tmp_path),
            ]
            wait_until(lambda: live_ids(engine) == {"a", "b"}, 20, "two live agents")
            with Coordinator(engine):
                (task,) = wait_until(
                    lambda: [t for t in task_rows(engine) if t.state == "running"], 10, "running"
                )
                holder = next(a for a in agents if a.id == task.gateway_id)
                other = next(a for a in agents if a.id != task.gateway_id)
                holder.signal(signal.SIGSTOP)  # frozen mid-check: its lease lapses
                wait_until(
                    lambda: task_rows(engine)[0].result_gateway_id == other.id, 10, "takeover"
                )
                holder.signal(signal.SIGCONT)  # wakes up with a late result
                wait_until(lambda: "rejected" in holder.output(), 10, "the stale report")
                wait_until(lambda: holder.id in live_ids(engine), 5, "holder renewing again")
                (row,) = task_rows(engine)
                assert (row.state, row.result_gateway_id, row.token) == ("done", other.id, 2)
                time.sleep(2 * TICK)
                status = targets_by_id(engine)[tid]
                assert (status.status, status.last_gateway_id) == ("up", other.id)
        finally:
            for agent in agents:
                agent.stop()


def test_agent_with_a_backlog_claims_again_when_a_check_finishes_not_a_poll_later(
    sqlite_store_url, tmp_path
):
    """Two slots, 12 tasks, a 3 s poll: the backlog drains in well under one poll interval."""
    engine = make_engine(sqlite_store_url)
    poll = 3.0
    with DeviceServer() as device:
        ids = [
            registry.upsert_target(
                engine, "P1", device.url(f"/slow/0.05?d={i}"), "http", None, 3600
            )
            for i in range(12)
        ]
        agent = AgentProcess("g1", "P1", sqlite_store_url, tmp_path, poll=poll, concurrency=2)
        try:
            wait_until(lambda: live_ids(engine) == {"g1"}, 20, "a live agent")
            assert run_tick(engine).assigned == 12
            wait_until(
                lambda: all(t.state == "done" for t in task_rows(engine, ids)),
                2 * poll,
                "every task done",
            )
        finally:
            assert agent.stop() == 0, agent.output()
    rows = task_rows(engine, ids)
    assert {t.result_gateway_id for t in rows} == {"g1"}
    span = max(t.finished_at for t in rows) - min(t.started_at for t in rows)
    # claimed two at a time: waiting a poll between claims would take 5 polls (15 s)
    assert span < poll, f"12 tasks took {span:.2f}s"
    engine.dispose()
