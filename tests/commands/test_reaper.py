"""The reaper: command runs of dead workers are closed (``lost``) with an actionable event."""

import signal
import socket
import subprocess
from datetime import timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from orchestration.commands import actions, reaper, store
from orchestration.commands import models as m
from orchestration.commands.cli import main as cli
from orchestration.commands.jobs import run_command_now_job
from orchestration.commands.pool import CommandPool
from orchestration.commands.runner import CommandResult
from orchestration.commands.sensors import command_dispatch_sensor
from orchestration.commands.timeutil import utcnow
from resources.record_store import RecordStoreResource, make_engine
from tests.commands.helpers import gated_command, seed
from tests.job_cli import REPO, dagster_home, job_env, job_execute_cmd
from tests.support.wait import wait_until


def _catalog(command: str = "sleep 60", timeout: int = 30) -> dict:
    return {
        "environments": [{"name": "staging"}],
        "commands": [{"name": "sleepy", "command": command, "timeout_seconds": timeout}],
    }


def _set(engine, run_id: int, **values) -> None:
    with engine.begin() as conn:
        conn.execute(m.command_runs.update().where(m.command_runs.c.id == run_id).values(**values))


def _kinds(engine, run_id: int) -> list[str]:
    return [e["kind"] for e in store.events_for(engine, run_id)]


def _dagster_run(instance, status: dg.DagsterRunStatus) -> str:
    run = instance.create_run_for_job(
        run_command_now_job, status=status,
        run_config={"ops": {"request_command_run": {"config": {
            "command": "sleepy", "environment": "staging"}}}},
    )  # fmt: skip
    return run.run_id


def _started(engine, dagster_run_id: str | None) -> int:
    run_id = actions.request_run(engine, "sleepy", "staging", status=m.QUEUED)
    assert store.claim_start(engine, run_id, dagster_run_id)
    return run_id


def test_dead_run_is_lost_only_once_its_heartbeat_is_stale(engine, instance):
    seed(engine, _catalog())
    failed = _started(engine, _dagster_run(instance, dg.DagsterRunStatus.FAILURE))
    vanished = _started(engine, "0" * 36)
    alive = _started(engine, _dagster_run(instance, dg.DagsterRunStatus.STARTED))
    now = utcnow()
    assert reaper.reap(instance, engine, now) == []  # fresh heartbeats: alive whatever Dagster says
    stale = now - reaper.STALE_AFTER - timedelta(seconds=1)
    for run_id in (failed, vanished, alive):
        _set(engine, run_id, heartbeat_at=stale)
    reaped = {r.command_run_id: r for r in reaper.reap(instance, engine, now)}
    assert set(reaped) == {failed, vanished}  # `alive`'s run is still STARTED, within its timeout
    row = store.get_run(engine, failed)
    assert row["status"] == m.LOST and row["finished_at"] is not None
    lost_event = store.events_for(engine, failed)[1]
    assert lost_event["kind"] == m.LOST
    assert lost_event["message"] == (
        f"worker lost: Dagster run {row['dagster_run_id']} ended FAILURE before the command "
        f"reported; retry with `platform-ops-commands retry {failed}`"
    )
    assert "no longer exists" in reaped[vanished].message
    assert _kinds(engine, failed) == ["started", m.LOST, "reaped"]
    # past timeout + grace with a silent worker: lost even though Dagster still says STARTED
    _set(engine, alive, started_at=now - timedelta(seconds=30) - reaper.LOST_GRACE - timedelta(1))
    (late,) = reaper.reap(instance, engine, now)
    assert late.command_run_id == alive and "is still STARTED but sent no heartbeat" in late.message
    assert reaper.reap(instance, engine, now) == []  # nothing left to reap, nothing reaped twice
    assert actions.retry_run(engine, failed) > failed  # lost is retryable


def test_a_late_real_result_replaces_lost_but_lost_never_replaces_a_result(engine, instance):
    seed(engine, _catalog())
    run_id = _started(engine, None)
    assert store.mark_lost(engine, run_id, "worker lost: test")
    now = utcnow()
    result = CommandResult(m.SUCCEEDED, 0, now, now, 1.5, "done\n", "", "")
    assert store.finish(engine, run_id, result)
    assert store.get_run(engine, run_id)["status"] == m.SUCCEEDED
    assert not store.mark_lost(engine, run_id, "worker lost: again")  # CAS: only from running
    assert store.get_run(engine, run_id)["status"] == m.SUCCEEDED
    assert _kinds(engine, run_id) == ["started", m.LOST, m.SUCCEEDED]


def test_queued_runs_of_an_ended_launchpad_run_are_cancelled(sqlite_store_url, instance):
    engine = make_engine(sqlite_store_url)
    seed(engine, _catalog())
    ended = _dagster_run(instance, dg.DagsterRunStatus.CANCELED)
    live = _dagster_run(instance, dg.DagsterRunStatus.STARTED)
    a = actions.request_run(engine, "sleepy", "staging", status=m.QUEUED, batch_key=f"run:{ended}")
    b = actions.request_run(engine, "sleepy", "staging", status=m.QUEUED, batch_key=f"run:{live}")
    (r,) = reaper.reap(instance, engine, utcnow())
    assert (r.command_run_id, r.status) == (a, m.CANCELLED)
    assert f"Dagster run {ended} ended CANCELED before starting it" in r.message
    assert store.get_run(engine, b)["status"] == m.QUEUED


def test_pool_heartbeats_and_records_the_process_group(sqlite_store_url, tmp_path):
    """The command waits on a gate the test opens only after a second heartbeat was seen, so a
    slow machine makes the test slower, never a finished command with no beat to compare."""
    engine = make_engine(sqlite_store_url)
    gate = tmp_path / "gate"
    seed(engine, _catalog(command=gated_command(gate)))
    run_id = actions.request_run(engine, "sleepy", "staging", status=m.QUEUED)
    pool = CommandPool(engine, "dagster-run-x", heartbeat_seconds=0.1)
    try:
        handle = pool.ensure(run_id)
        first = wait_until(
            lambda: (row := store.get_run(engine, run_id))["pgid"] is not None and row,
            what="the command's process group recorded",
        )
        wait_until(
            lambda: store.get_run(engine, run_id)["heartbeat_at"] > first["heartbeat_at"],
            what="a heartbeat after the one recorded with the process group",
        )
    finally:
        gate.touch()
        pool.shutdown(cancel=False)
    assert first["pgid"] == handle.running.pgid and first["worker_host"] == socket.gethostname()
    assert handle.future.result().result.status == m.SUCCEEDED
    assert store.get_run(engine, run_id)["status"] == m.SUCCEEDED


def test_kill_orphans_never_touches_a_group_of_another_program():
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        said = reaper.kill_orphans(424242, other.pid, socket.gethostname(), 0.2)
        assert "belongs to another program" in said
        assert other.poll() is None
        assert "on host elsewhere" in reaper.kill_orphans(1, other.pid, "elsewhere", 0.2)
    finally:
        other.kill()
        other.wait()


def _running(engine, n: int) -> list[dict] | None:
    """The ``n`` command runs running with their process group recorded, once there are ``n``."""
    with engine.connect() as conn:
        rows = [
            dict(r)
            for r in conn.execute(
                sa.select(m.command_runs).where(
                    m.command_runs.c.status == m.RUNNING, m.command_runs.c.pgid.is_not(None)
                )
            ).mappings()
        ]
    return rows if len(rows) == n else None


@pytest.mark.slow
def test_sigkilled_dagster_runs_are_reaped_and_their_commands_killed(
    sqlite_store_url, tmp_path, monkeypatch
):
    """Two real `dagster job execute` runs of `sleep 60`, both SIGKILLed. One is marked failed
    the way run monitoring would; the other stays STARTED and goes the heartbeat/timeout path.
    One sensor tick on the same instance reaps both, kills the orphaned `sleep`s, and a retry of
    each is a new command run."""
    url = sqlite_store_url
    engine = make_engine(url)
    seed(engine, _catalog())
    home = dagster_home(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(
        "ops:\n  request_command_run:\n    config: {command: sleepy, environment: staging}\n"
    )
    env = job_env(home, {"RECORD_STORE_URL": url})
    cmd = job_execute_cmd("run_command_now", config)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    dg.DagsterInstance.get().dispose()  # create the instance's storage once, not in two racing CLIs
    procs = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    try:
        rows = wait_until(
            lambda: _running(engine, 2), timeout=120, what="2 command runs running with a pgid",
            alive=lambda: all(p.poll() is None for p in procs),
        )  # fmt: skip
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
    assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2
    assert all(reaper.group_members(r["pgid"]) for r in rows)  # the sleeps outlived the worker
    monitored, silent = sorted(rows, key=lambda r: r["id"])

    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(monitored["dagster_run_id"])
        assert run.status == dg.DagsterRunStatus.STARTED
        instance.report_run_failed(run)  # what run monitoring does for a dead run worker
        now = utcnow()
        stale = now - reaper.STALE_AFTER - timedelta(seconds=1)
        _set(engine, monitored["id"], heartbeat_at=stale)
        _set(engine, silent["id"], heartbeat_at=stale,
             started_at=now - timedelta(seconds=31) - reaper.LOST_GRACE)  # fmt: skip
        ctx = dg.build_sensor_context(
            instance=instance, resources={"record_store": RecordStoreResource(url=url)}
        )
        tick = command_dispatch_sensor.evaluate_tick(ctx)
        assert tick.run_requests == []

    for row, how in ((monitored, "ended FAILURE before the command reported"),
                     (silent, "still STARTED")):  # fmt: skip
        after = store.get_run(engine, row["id"])
        assert after["status"] == m.LOST
        events = store.events_for(engine, row["id"])
        assert [e["kind"] for e in events] == ["started", m.LOST, "reaped"]
        assert f"worker lost: Dagster run {row['dagster_run_id']}" in events[1]["message"]
        assert how in events[1]["message"]
        assert f"platform-ops-commands retry {row['id']}" in events[1]["message"]
        assert f"orphaned process group {row['pgid']} terminated" in events[2]["message"]
        assert reaper.group_members(row["pgid"]) == []

    assert cli(["--store-url", url, "retry", str(monitored["id"])]) == 0
    (retry,) = store.list_runs(engine, store.RunFilter(status=m.PENDING))
    assert (retry["retry_of"], retry["attempt"]) == (monitored["id"], 2)
