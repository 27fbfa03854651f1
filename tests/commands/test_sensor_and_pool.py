"""Sensor cursor catch-up, batches of 500, orphaned batches, and a terminated run's commands.

The sensor reads the time once per tick (``sensors.utcnow``); these tests pin it, so a tick's
"now" is a value the test chose, never the wall clock racing a five-minute boundary.
"""

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from orchestration.commands import actions, dispatch, sensors, store
from orchestration.commands import models as m
from orchestration.commands.jobs import run_commands_job
from orchestration.commands.pool import CommandPool
from orchestration.commands.runner import group_members, run_token
from orchestration.commands.sensors import BATCH_TAG, command_dispatch_sensor, reap_orphans
from orchestration.commands.timeutil import utcnow
from resources.record_store import RecordStoreResource, make_engine
from tests.commands.helpers import (
    T0,
    backdate_schedules,
    count_runs,
    running_row,
    seed,
    simple_catalog,
)
from tests.job_cli import REPO, dagster_home, instance_at, job_env, job_execute_cmd
from tests.support.wait import wait_until


@pytest.fixture
def sensor_now(monkeypatch: pytest.MonkeyPatch) -> Callable[[datetime], None]:
    """Pin the time the dispatch sensor reads for its tick."""

    def pin(now: datetime) -> None:
        monkeypatch.setattr(sensors, "utcnow", lambda: now)

    return pin


def _tick(instance: dg.DagsterInstance, url: str, cursor: str | None = None):
    resources = {"record_store": RecordStoreResource(url=url)}
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    return command_dispatch_sensor.evaluate_tick(ctx)


@pytest.mark.parametrize(
    ("now", "latest_slot"),
    [
        (T0.replace(minute=34, second=59, microsecond=900_000), T0.replace(minute=30)),
        (T0.replace(minute=35), T0.replace(minute=35)),  # the boundary itself is the new slot
    ],
)
def test_sensor_after_two_hours_down_runs_the_latest_missed_slot_once(
    sqlite_store_url, instance, sensor_now, now, latest_slot
):
    engine = make_engine(sqlite_store_url)
    seed(engine, simple_catalog("*/5 * * * *"))
    backdate_schedules(engine)
    sensor_now(now)
    cursor = (now - timedelta(hours=2)).isoformat()
    tick = _tick(instance, sqlite_store_url, cursor)
    assert count_runs(engine) == 1 and len(tick.run_requests) == 1
    with engine.connect() as conn:
        slot = conn.execute(sa.select(m.command_runs.c.slot)).scalar_one()
    assert slot.replace(tzinfo=None) == latest_slot.replace(tzinfo=None)
    assert tick.cursor == now.isoformat()
    # the tick evaluated again before its cursor was saved: no second run; the batch, still
    # unlaunched, is requested under the same run key (which Dagster launches once)
    again = _tick(instance, sqlite_store_url, cursor)
    assert [r.run_key for r in again.run_requests] == [tick.run_requests[0].run_key]
    assert count_runs(engine) == 1


def test_1201_due_commands_are_claimed_in_batches_of_500_and_each_runs_once(
    store_url, engine, instance, sensor_now, tmp_path
):
    """One tick with 1,201 due command runs: three claim UPDATEs (500, 500, 201 rows, counted on
    the wire), three batch run requests, every run in exactly one batch; each batch then runs on
    its runner pool (what its Dagster run does) and every command runs once, as its own record
    says and as its own output (its COMMAND_RUN_TOKEN appended to a file) shows."""
    ran = tmp_path / "ran.txt"
    note = f'echo "$COMMAND_RUN_TOKEN" >> {ran}'
    seed(engine, {"environments": [{"name": "staging"}],
                  "commands": [{"name": "note", "command": note}]})  # fmt: skip
    with engine.begin() as conn:
        command_id = conn.execute(sa.select(m.commands.c.id)).scalar_one()
        env_id = conn.execute(sa.select(m.environments.c.id)).scalar_one()
        conn.execute(m.command_runs.insert(), [
            {"command_id": command_id, "environment_id": env_id, "requested_by": "test",
             "not_before": T0, "status": m.PENDING, "attempt": 1, "created_at": T0}
            for _ in range(1201)
        ])  # fmt: skip
    assert sensors.BATCH_SIZE == 500
    claims: list[int] = []

    def count_claims(conn, cursor, statement: str, parameters, context, executemany) -> None:
        if statement.startswith("UPDATE command_runs SET status") and "batch_key" in statement:
            claims.append(cursor.rowcount)

    sensor_now(T0 + timedelta(seconds=5))
    sa.event.listen(sa.Engine, "after_cursor_execute", count_claims)
    try:
        tick = _tick(instance, store_url)
    finally:
        sa.event.remove(sa.Engine, "after_cursor_execute", count_claims)
    assert claims == [500, 500, 201]
    batches = {
        r.run_key: r.run_config["ops"]["plan_command_runs"]["config"]["command_run_ids"]
        for r in tick.run_requests
    }
    assert sorted(len(ids) for ids in batches.values()) == [201, 500, 500]
    every = [i for ids in batches.values() for i in ids]
    with engine.connect() as conn:
        all_ids = conn.execute(sa.select(m.command_runs.c.id)).scalars().all()
        in_db = dict(conn.execute(sa.select(m.command_runs.c.id, m.command_runs.c.batch_key)).all())
    assert sorted(every) == sorted(all_ids)  # each run in exactly one batch
    assert all(in_db[i] == key for key, ids in batches.items() for i in ids)
    assert {r.tags[BATCH_TAG] for r in tick.run_requests} == set(batches)

    for key, ids in batches.items():
        pool = CommandPool(engine, f"dagster-{key}")
        for run_id in ids:
            pool.ensure(run_id)
        pool.shutdown(cancel=False)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(m.command_runs.c.status, m.command_runs.c.dagster_run_id))
        by_run = {(status, dagster) for status, dagster in rows}
        started = conn.execute(
            sa.select(sa.func.count())
            .select_from(m.command_run_events)
            .where(m.command_run_events.c.kind == "started")
        ).scalar_one()
    assert by_run == {(m.SUCCEEDED, f"dagster-{key}") for key in batches}
    assert started == 1201
    # a batch launched again (a re-executed Dagster run) runs none of its commands a second time
    key, ids = min(batches.items(), key=lambda kv: len(kv[1]))
    again = CommandPool(engine, "dagster-relaunched")
    outcomes = [again.ensure(run_id).future.result() for run_id in ids]
    again.shutdown(cancel=False)
    assert not any(o.started_here for o in outcomes)
    expected = sorted(run_token(f"dagster-{key}", i) for key, ids in batches.items() for i in ids)
    assert sorted(ran.read_text().split()) == expected  # each command ran once, in its batch
    # the next tick has nothing left to claim or launch
    sensor_now(T0 + timedelta(seconds=65))
    assert _tick(instance, store_url, tick.cursor).run_requests == []


def test_orphaned_batch_of_a_finished_run_is_cancelled(sqlite_store_url, instance):
    engine = make_engine(sqlite_store_url)
    seed(engine, simple_catalog())
    orphan = actions.request_run(engine, "hello", "staging")
    fresh = actions.request_run(engine, "hello", "staging")
    now = utcnow()
    old_key, new_key = "tick:20200101T000000:dead:0", f"tick:{now:%Y%m%dT%H%M%S}:beef:0"
    with engine.begin() as conn:
        for run_id, key in ((orphan, old_key), (fresh, new_key)):
            conn.execute(
                m.command_runs.update()
                .where(m.command_runs.c.id == run_id)
                .values(status=m.QUEUED, batch_key=key)
            )
    for key in (old_key, new_key):
        instance.create_run_for_job(
            run_commands_job, tags={BATCH_TAG: key}, status=dg.DagsterRunStatus.FAILURE,
            run_config={"ops": {"plan_command_runs": {"config": {"command_run_ids": []}}}},
        )  # fmt: skip
    batches = dispatch.unlaunched_batches(engine)
    assert reap_orphans(instance, engine, batches, now) == 1
    assert store.get_run(engine, orphan)["status"] == m.CANCELLED
    assert store.get_run(engine, fresh)["status"] == m.QUEUED  # too young to judge
    assert list(batches) == [new_key]


@pytest.mark.slow
def test_a_terminated_dagster_run_cancels_its_commands_through_the_resource_teardown(
    sqlite_store_url, tmp_path
):
    """A real `dagster job execute` of run_command_now runs `sleep 300`; the run is terminated
    the way the deployment's run launcher does it (DockerRunLauncher.terminate: the run is marked
    CANCELING, then `docker stop` sends SIGTERM to the run worker, which Dagster turns into an
    interrupt). The commands_runner resource's teardown must kill the command's process group and
    record it cancelled; nothing in the test touches the pool."""
    url = sqlite_store_url
    engine = make_engine(url)
    seed(engine, {"environments": [{"name": "staging"}],
                  "commands": [{"name": "sleepy", "command": "sleep 300",
                                "timeout_seconds": 600}]})  # fmt: skip
    home = dagster_home(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(
        "ops:\n  request_command_run:\n    config: {command: sleepy, environment: staging}\n"
    )
    log = tmp_path / "worker.log"
    row: dict | None = None
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            job_execute_cmd("run_command_now", config), cwd=REPO,
            env=job_env(home, {"RECORD_STORE_URL": url}), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        row = wait_until(
            lambda: running_row(engine), timeout=120, what="the command running with its pgid",
            alive=lambda: worker.poll() is None,
        )  # fmt: skip
        assert group_members(row["pgid"])  # the sleep is alive in its own group
        with instance_at(home) as instance:
            instance.report_run_canceling(instance.get_run_by_id(row["dagster_run_id"]))
        worker.send_signal(signal.SIGTERM)
        wait_until(
            lambda: store.get_run(engine, row["id"])["status"] != m.RUNNING,
            timeout=90, what="the command run to leave running after SIGTERM",
        )  # fmt: skip
        worker.wait(timeout=120)  # teardown done, the worker exits
    finally:
        _stop(worker, row)
    after = store.get_run(engine, row["id"])
    assert after["status"] == m.CANCELLED, _tail(log)
    assert after["dagster_run_id"] == row["dagster_run_id"]
    assert [e["kind"] for e in store.events_for(engine, row["id"])] == ["started", m.CANCELLED]
    wait_until(lambda: group_members(row["pgid"]) == [], what="the command's group to be gone")
    with instance_at(home) as instance:
        assert instance.get_run_by_id(row["dagster_run_id"]).status == dg.DagsterRunStatus.CANCELED


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def _stop(worker: subprocess.Popen, row: dict | None) -> None:
    """Test clean-up: the worker and, if the guarantee failed, the command it left behind."""
    if worker.poll() is None:
        worker.kill()
        worker.wait(timeout=30)
    if row is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(row["pgid"], signal.SIGKILL)
