"""The coordinator tick against a real record store (SQLite and PostgreSQL), with a fake clock.

Gateways here are rows written by the registry functions, so every rule is checked exactly and
fast; tests/gateways/test_agents.py runs the same rules with real agent processes.
"""

import sqlalchemy as sa

from orchestration.gateways import registry
from orchestration.gateways.assignment import has_work, run_tick
from orchestration.gateways.db import make_engine
from orchestration.gateways.models import poll_tasks, targets
from orchestration.gateways.worker import claim_tasks, report_result

T0 = 1_000_000.0
LEASE = 10.0


def tasks(engine):
    with engine.connect() as conn:
        return {r.target_id: r for r in conn.execute(sa.select(poll_tasks))}


def target_rows(engine):
    with engine.connect() as conn:
        return {r.id: r for r in conn.execute(sa.select(targets))}


def setup_fleet(engine):
    registry.register(engine, "g1", "P1", lease_seconds=LEASE, now=T0)
    registry.register(engine, "g2", "P1", ["site-a"], lease_seconds=LEASE, now=T0)
    registry.register(engine, "g3", "P2", lease_seconds=LEASE, now=T0)
    ids = {
        "p1-x": registry.upsert_target(engine, "P1", "10.0.0.1:80", "tcp", interval_seconds=60),
        "p2-x": registry.upsert_target(engine, "P2", "10.0.0.1:80", "tcp", interval_seconds=60),
        "p1-y": registry.upsert_target(engine, "P1", "10.0.0.2:80", "tcp", interval_seconds=60),
        "site": registry.upsert_target(
            engine, "P1", "10.9.0.1:80", "tcp", domain="site-a", interval_seconds=60
        ),
    }
    return ids


def test_routing_by_partition_domain_and_load(store_url):
    engine = make_engine(store_url)
    ids = setup_fleet(engine)
    assert len(set(ids.values())) == 4  # same address in P1 and P2: two targets
    report = run_tick(engine, now=T0 + 1)
    assert (report.created, report.assigned, report.waiting) == (4, 4, 0)
    by_target = tasks(engine)
    assert by_target[ids["p2-x"]].gateway_id == "g3"
    assert by_target[ids["site"]].gateway_id == "g2"
    # Due targets are routed in id order to the least-loaded gateway, ties to the smaller id:
    # p1-x → g1 (0 vs 0), p1-y → g2 (g1 holds 1), site → g2 (the only site-a gateway).
    assert by_target[ids["p1-x"]].gateway_id == "g1"
    assert by_target[ids["p1-y"]].gateway_id == "g2"
    assert all(t.state == "assigned" and t.token == 1 for t in by_target.values())


def test_tick_is_idempotent_and_targets_come_due_by_interval(store_url):
    engine = make_engine(store_url)
    setup_fleet(engine)
    first = run_tick(engine, now=T0 + 1)
    second = run_tick(engine, now=T0 + 1)
    assert first.created == 4 and (second.created, second.assigned, second.reassigned) == (0, 0, [])
    assert len(tasks(engine)) == 4
    for gw in ("g1", "g2", "g3"):
        for t in claim_tasks(engine, gw, 10, LEASE, now=T0 + 2):
            assert report_result(engine, gw, t.id, t.token, "up", {"ok": 1}, now=T0 + 2)
    registry.heartbeat(engine, "g1", LEASE, now=T0 + 50)
    registry.heartbeat(engine, "g2", LEASE, now=T0 + 50)
    registry.heartbeat(engine, "g3", LEASE, now=T0 + 50)
    assert run_tick(engine, now=T0 + 50).created == 0  # interval 60 s not over
    assert run_tick(engine, now=T0 + 58).recorded == 0  # recorded at T0+50 already
    assert {r.status for r in target_rows(engine).values()} == {"up"}
    assert run_tick(engine, now=T0 + 58).created == 0
    registry.heartbeat(engine, "g1", LEASE, now=T0 + 61)
    registry.heartbeat(engine, "g2", LEASE, now=T0 + 61)
    registry.heartbeat(engine, "g3", LEASE, now=T0 + 61)
    assert run_tick(engine, now=T0 + 61.5).created == 4


def test_failover_within_partition_and_no_gateway_until_one_appears(store_url):
    engine = make_engine(store_url)
    ids = setup_fleet(engine)
    run_tick(engine, now=T0 + 1)
    claimed = claim_tasks(engine, "g1", 10, LEASE, now=T0 + 1.5)
    assert claimed  # g1 holds running tasks
    # g1 stops renewing; g2 and g3 keep their leases.
    for gw in ("g2", "g3"):
        registry.heartbeat(engine, gw, LEASE, now=T0 + 9)
    assert has_work(engine, now=T0 + 9.5)["movable"] == 0  # g1 lease ends at T0 + 10
    assert has_work(engine, now=T0 + 11)["movable"] == len(claimed)
    report = run_tick(engine, now=T0 + 11)
    assert {(m["from"], m["to"]) for m in report.reassigned} == {("g1", "g2")}
    by_target = tasks(engine)
    assert {t.gateway_id for t in by_target.values() if t.partition == "P1"} == {"g2"}
    assert by_target[ids["p2-x"]].gateway_id == "g3"  # never crosses partitions

    # g1 comes back late with its result: fenced off.
    stale = claimed[0]
    assert not report_result(engine, "g1", stale.id, stale.token, "down", {}, now=T0 + 12)
    # the new holder's result is accepted and recorded as the device status.
    fresh = {t.id: t for t in claim_tasks(engine, "g2", 10, LEASE, now=T0 + 12)}
    assert fresh[stale.id].token == stale.token + 1
    assert report_result(engine, "g2", stale.id, fresh[stale.id].token, "up", {}, now=T0 + 12)
    assert not report_result(engine, "g1", stale.id, stale.token, "down", {}, now=T0 + 12.5)
    registry.heartbeat(engine, "g2", LEASE, now=T0 + 13)
    registry.heartbeat(engine, "g3", LEASE, now=T0 + 13)
    run_tick(engine, now=T0 + 13)
    row = target_rows(engine)[stale.target_id]
    assert (row.status, row.last_gateway_id) == ("up", "g2")

    # All P1 gateways gone: P1 work waits as no_gateway, P2 is untouched.
    registry.deregister(engine, "g2", now=T0 + 14)
    report = run_tick(engine, now=T0 + 14)
    # p1-x is done; p1-y and the site-a task (both running on g2) wait, one per (partition, domain)
    assert report.no_gateway == {("P1", None): 1, ("P1", "site-a"): 1}
    states = {t.target_id: t.state for t in tasks(engine).values() if t.state != "done"}
    assert {states[i] for i in (ids["p1-x"], ids["p1-y"], ids["site"]) if i in states} == {
        "no_gateway"
    }
    # A P1 gateway without the domain takes the plain P1 tasks, not the site-a one.
    registry.register(engine, "g4", "P1", lease_seconds=LEASE, now=T0 + 15)
    registry.heartbeat(engine, "g3", LEASE, now=T0 + 15)
    report = run_tick(engine, now=T0 + 15)
    assert report.no_gateway == {("P1", "site-a"): 1}
    assert tasks(engine)[ids["site"]].state == "no_gateway"
    registry.register(engine, "g5", "P1", ["site-a"], lease_seconds=LEASE, now=T0 + 16)
    run_tick(engine, now=T0 + 16)
    assert tasks(engine)[ids["site"]].gateway_id == "g5"


def test_running_task_past_its_lease_is_reassigned_even_if_gateway_lives(store_url):
    engine = make_engine(store_url)
    registry.register(engine, "g1", "P1", lease_seconds=LEASE, now=T0)
    registry.register(engine, "g2", "P1", lease_seconds=LEASE, now=T0)
    registry.upsert_target(engine, "P1", "10.0.0.1:80", "tcp", timeout_seconds=2)
    run_tick(engine, now=T0 + 1)
    (task,) = tasks(engine).values()
    claim_tasks(engine, task.gateway_id, 1, LEASE, now=T0 + 1)  # lease: 1 + 10 + 2
    for t in (T0 + 5, T0 + 12):
        registry.heartbeat(engine, "g1", LEASE, now=t)
        registry.heartbeat(engine, "g2", LEASE, now=t)
    assert run_tick(engine, now=T0 + 12).reassigned == []
    registry.heartbeat(engine, "g1", LEASE, now=T0 + 14)
    registry.heartbeat(engine, "g2", LEASE, now=T0 + 14)
    report = run_tick(engine, now=T0 + 14)
    assert len(report.reassigned) == 1 and report.reassigned[0]["overran"]
    assert tasks(engine)[task.target_id].token == 2
