"""The Dagster wiring on a real instance: the sensor's decision, the job's tick and metadata."""

import time

import dagster as dg
import pytest
import sqlalchemy as sa

from orchestration.gateways import registry
from orchestration.gateways.db import make_engine
from orchestration.gateways.jobs import poll_devices_job
from orchestration.gateways.models import poll_tasks, targets
from orchestration.gateways.worker import claim_tasks, report_result
from resources.record_store import RecordStoreResource
from tests.gateways.devices import AgentProcess, DeviceServer
from tests.gateways.helpers import evaluate_sensor
from tests.job_cli import dagster_home, job_execute, runs_of
from tests.support.results import step_metadata
from tests.support.wait import wait_until

BOUND = 120.0  # waits end on their event; the bound only catches a hang


def live_ids(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return {g.id for g in registry.live_gateways(conn, time.time())}


def task_states(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(poll_tasks.c.state)).scalars())


def test_sensor_requests_a_run_only_when_there_is_work_and_job_is_idempotent(instance, store_url):
    engine = make_engine(store_url)
    resources = {"record_store": RecordStoreResource(url=store_url)}
    assert evaluate_sensor(instance, store_url).run_requests == []  # idle fleet: no run

    registry.register(engine, "g1", "P1", ["site-a"], lease_seconds=60)
    registry.upsert_target(engine, "P1", "127.0.0.1:9", "tcp", "site-a", 3600)
    registry.upsert_target(engine, "P9", "127.0.0.1:9", "tcp", None, 3600)
    (request,) = evaluate_sensor(instance, store_url).run_requests
    assert request.tags["platform/gateways-work"].startswith("due=2")

    first = poll_devices_job.execute_in_process(instance=instance, resources=resources)
    assert first.success
    md = step_metadata(first)
    assert (md["created"], md["assigned"], md["no_gateway"]) == (2, 1, 1)
    assert md["no_gateway_by_partition"] == [{"partition": "P9", "domain": None, "tasks": 1}]
    assert "| g1 | P1 | site-a | yes | 1 |" in md["gateways"]
    warnings = [
        e.message
        for e in instance.all_logs(first.run_id)
        if e.level == 30 and "no live gateway" in e.message
    ]
    assert warnings and "P9" in warnings[0]

    second = poll_devices_job.execute_in_process(instance=instance, resources=resources)
    md2 = step_metadata(second)
    assert (md2["created"], md2["assigned"], md2["reassigned"]) == (0, 0, 0)  # twice = once
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(poll_tasks)).scalar() == 2
    # Only the unroutable task is left: no candidate, so the sensor does not spin up runs.
    assert evaluate_sensor(instance, store_url).run_requests == []

    (task,) = claim_tasks(engine, "g1", 5, 60)
    assert report_result(engine, "g1", task.id, task.token, "down", {"error": "refused"})
    assert evaluate_sensor(instance, store_url).run_requests  # a result waits to be recorded
    third = poll_devices_job.execute_in_process(instance=instance, resources=resources)
    assert step_metadata(third)["recorded"] == 1
    with engine.connect() as conn:
        statuses = dict(conn.execute(sa.select(targets.c.partition, targets.c.status)).all())
    assert statuses == {"P1": "down", "P9": "unknown"}


@pytest.mark.slow
def test_dagster_job_execute_poll_devices_end_to_end(tmp_path, sqlite_store_url):
    """`dagster job execute -j poll_devices` twice, a real agent polling a real device between."""
    home = dagster_home(tmp_path)
    env = {"RECORD_STORE_URL": sqlite_store_url}
    engine = make_engine(sqlite_store_url)
    with DeviceServer() as device:
        tid = registry.upsert_target(engine, "P1", device.url("/health"), "http", None, 3600)
        agent = AgentProcess("edge-1", "P1", sqlite_store_url, tmp_path, lease=5, heartbeat=0.5)

        def agent_alive() -> bool:
            return agent.proc.poll() is None

        try:
            wait_until(lambda: live_ids(engine), BOUND, "a live agent", alive=agent_alive)
            job_execute(home, "poll_devices", env=env, timeout=120)  # creates + assigns the task
            wait_until(
                lambda: task_states(engine) == ["done"],
                BOUND,
                "the agent's result for the task the first run assigned",
                alive=agent_alive,
            )
            job_execute(home, "poll_devices", env=env, timeout=120)  # records it; nothing new
            assert task_states(engine) == ["done"]  # the target is not due again
        finally:
            assert agent.stop() == 0
    assert device.hits.count("/health") == 1  # two runs, one poll
    with engine.connect() as conn:
        row = conn.execute(sa.select(targets).where(targets.c.id == tid)).one()
    assert (row.status, row.last_gateway_id) == ("up", "edge-1")

    runs = runs_of(home, "poll_devices")
    assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS] * 2
    assert all(r.tags["platform/kind"] == "gateways" for r in runs)
