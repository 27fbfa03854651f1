"""Sensor evaluation on a real instance → the batch job it requests → command runs and events."""

import re
import threading
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from orchestration.commands import actions, store
from orchestration.commands import models as m
from orchestration.commands.jobs import retry_command_run_job, run_command_now_job, run_commands_job
from orchestration.commands.resources import CommandRunnerResource
from orchestration.commands.sensors import command_dispatch_sensor
from orchestration.policies.recipes import RECIPE_TAG
from resources.record_store import RecordStoreResource, make_engine
from tests.commands.helpers import count_runs, gated_command, seed
from tests.support.wait import wait_until


def _resources(url: str) -> dict:
    return {
        "record_store": RecordStoreResource(url=url, auto_upgrade=False),
        "commands_runner": CommandRunnerResource(kill_grace_seconds=0.2),
    }


def _catalog() -> dict:
    return {
        "environments": [
            {"name": "staging",
             "variables": {"WHO": "; reboot", "TOKEN": {"value": "tok-98765", "secret": True}}},
            {"name": "off", "enabled": False},
        ],
        "commands": [
            {"name": "greet", "command": 'echo "hi $WHO token=$TOKEN"'},
            {"name": "boom", "command": 'echo "bad $TOKEN" >&2; exit 7'},
            {"name": "slow", "command": "sleep 30", "timeout_seconds": 1},
        ],
        "schedules": [
            {"name": "greet-every-minute", "command": "greet",
             "environments": ["staging", "off"], "cron": "* * * * *"},
            {"name": "boom-every-minute", "command": "boom", "environments": ["staging"],
             "cron": ["* * * * *", "*/2 * * * *"]},
        ],
    }  # fmt: skip


def _evaluate(instance, url, cursor=None):
    ctx = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"record_store": RecordStoreResource(url=url)}
    )
    return command_dispatch_sensor.evaluate_tick(ctx)


def _events(engine, run_id):
    return [e["kind"] for e in store.events_for(engine, run_id)]


def test_sensor_tick_launches_one_batch_and_each_command_is_its_own_step(
    store_url, engine, instance, caplog
):
    seed(engine, _catalog())
    tick = _evaluate(instance, store_url)
    assert len(tick.run_requests) == 1
    request = tick.run_requests[0]
    ids = request.run_config["ops"]["plan_command_runs"]["config"]["command_run_ids"]
    assert len(ids) == 2  # greet@staging, boom@staging (the disabled env is skipped)
    assert count_runs(engine) == 2
    # a re-evaluated tick (cursor not yet saved) creates nothing and requests the same batch
    again = _evaluate(instance, store_url)
    assert [r.run_key for r in again.run_requests] == [request.run_key]
    assert count_runs(engine) == 2

    result = run_commands_job.execute_in_process(
        run_config=request.run_config, instance=instance, resources=_resources(store_url),
        raise_on_error=False,
    )  # fmt: skip
    by_name = {store.get_run(engine, i)["command_name"]: i for i in ids}
    greet, boom = by_name["greet"], by_name["boom"]
    steps = {e.step_key: e.event_type_value for e in result.all_events if e.is_step_event}
    assert steps[f"execute_command_run[run_{greet}]"] == "STEP_SUCCESS"
    assert steps[f"execute_command_run[run_{boom}]"] == "STEP_FAILURE"
    failure = next(
        e for e in result.all_events
        if e.is_step_failure and e.step_key == f"execute_command_run[run_{boom}]"
    )  # fmt: skip
    message = failure.step_failure_data.error.message
    assert "exited with code 7" in message and "bad ****" in message
    assert "tok-98765" not in message

    greet_row = store.get_run(engine, greet)
    assert (greet_row["status"], greet_row["exit_code"]) == (m.SUCCEEDED, 0)
    assert greet_row["dagster_run_id"] == result.run_id
    assert _events(engine, greet) == ["started", "succeeded"]
    final = store.events_for(engine, greet)[-1]
    assert final["stdout_tail"] == "hi ; reboot token=****\n"
    assert store.get_run(engine, boom)["status"] == m.FAILED

    logs = [r.user_message for r in instance.all_logs(result.run_id)]
    assert any("[stdout] hi ; reboot token=****" in line for line in logs)
    assert not any("tok-98765" in line for line in logs)

    # the same batch run again (idempotent): nothing re-runs, each step reports the record
    rerun = run_commands_job.execute_in_process(
        run_config=request.run_config, instance=instance, resources=_resources(store_url),
        raise_on_error=False,
    )  # fmt: skip
    assert _events(engine, greet) == ["started", "succeeded"]
    assert _events(engine, boom) == ["started", "failed"]
    assert rerun.output_for_node("execute_command_run")[f"run_{greet}"] == greet


def test_run_now_retry_and_timeout(sqlite_store_url, instance):
    engine = make_engine(sqlite_store_url)
    seed(engine, _catalog())
    config = {
        "ops": {"request_command_run": {"config": {"command": "slow", "environment": "staging"}}}
    }
    result = run_command_now_job.execute_in_process(
        run_config=config, instance=instance, resources=_resources(sqlite_store_url),
        raise_on_error=False,
    )  # fmt: skip
    run_id = result.output_for_node("request_command_run", "command_run_id")
    row = store.get_run(engine, run_id)
    assert row["status"] == m.TIMED_OUT and row["requested_by"] == "dagster:run_command_now"
    assert _events(engine, run_id) == ["started", "timed_out"]

    retry_config = {"ops": {"request_retry": {"config": {"command_run_id": run_id}}}}
    retried = retry_command_run_job.execute_in_process(
        run_config=retry_config, instance=instance, resources=_resources(sqlite_store_url),
        raise_on_error=False,
    )  # fmt: skip
    retry_id = retried.output_for_node("request_retry", "command_run_id")
    retry = store.get_run(engine, retry_id)
    assert (retry["retry_of"], retry["attempt"], retry["status"]) == (run_id, 2, m.TIMED_OUT)
    # retrying the same run again: the same retry, not run a second time
    twice = retry_command_run_job.execute_in_process(
        run_config=retry_config, instance=instance, resources=_resources(sqlite_store_url),
        raise_on_error=False,
    )  # fmt: skip
    assert twice.output_for_node("request_retry", "command_run_id") == retry_id
    assert _events(engine, retry_id) == ["started", "timed_out"]
    with pytest.raises(actions.ActionError, match="only failed, timed_out, cancelled"):
        actions.retry_run(engine, _succeeded_run(engine, instance, sqlite_store_url))


@pytest.mark.parametrize("job", [run_commands_job, run_command_now_job, retry_command_run_job])
def test_command_jobs_never_retry_a_step(job):
    """The ``command`` recipe: one attempt per step (a command is not idempotent), and no retry
    policy at all, so an unexpected error is shown as itself, not "Exceeded max_retries of 0"."""
    assert job.tags[RECIPE_TAG] == "command"
    assert job.op_retry_policy is None


def test_a_failed_command_step_fails_once_and_the_command_ran_once(sqlite_store_url, instance):
    engine = make_engine(sqlite_store_url)
    seed(engine, _catalog())
    config = {
        "ops": {"request_command_run": {"config": {"command": "boom", "environment": "staging"}}}
    }
    result = run_command_now_job.execute_in_process(
        run_config=config, instance=instance, resources=_resources(sqlite_store_url),
        raise_on_error=False,
    )  # fmt: skip
    assert not result.success
    kinds = [e.event_type_value for e in result.all_events]
    assert "STEP_UP_FOR_RETRY" not in kinds
    assert kinds.count("STEP_FAILURE") == 1
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "exited with code 7" in failure.step_failure_data.error.message  # not "Exceeded max_…"
    run_id = result.output_for_node("request_command_run", "command_run_id")
    assert _events(engine, run_id) == ["started", "failed"]
    assert instance.get_run_by_id(result.run_id).tags[RECIPE_TAG] == "command"


def _succeeded_run(engine, instance, url) -> int:
    config = {
        "ops": {"request_command_run": {"config": {"command": "greet", "environment": "staging"}}}
    }
    result = run_command_now_job.execute_in_process(
        run_config=config, instance=instance, resources=_resources(url)
    )
    return result.output_for_node("request_command_run", "command_run_id")


def test_run_in_seconds_is_left_to_the_dispatcher(sqlite_store_url, instance):
    engine = make_engine(sqlite_store_url)
    seed(engine, _catalog())
    with engine.begin() as conn:
        conn.execute(m.schedules.update().values(enabled=False))
    config = {"ops": {"request_command_run": {"config": {
        "command": "greet", "environment": "staging", "in_seconds": 3600}}}}  # fmt: skip
    result = run_command_now_job.execute_in_process(
        run_config=config, instance=instance, resources=_resources(sqlite_store_url)
    )
    run_id = result.output_for_node("request_command_run", "command_run_id")
    assert store.get_run(engine, run_id)["status"] == m.PENDING
    assert _evaluate(instance, sqlite_store_url).run_requests == []
    with engine.begin() as conn:  # an hour passes
        conn.execute(
            m.command_runs.update().values(not_before=sa.func.datetime("now", "-1 second"))
        )
    (request,) = _evaluate(instance, sqlite_store_url).run_requests
    assert request.run_config["ops"]["plan_command_runs"]["config"]["command_run_ids"] == [run_id]


PROGRESS_LINE = re.compile(r"^commands: (\d+)/(\d+) \(\d+%\), [\d.]+/s, ETA ")


def _progress(instance: dg.DagsterInstance, run_id: str) -> list[tuple[int, int]]:
    """(done, total) of every batch progress line in the run's event log, in order."""
    return [
        (int(match[1]), int(match[2]))
        for entry in instance.all_logs(run_id)
        if (match := PROGRESS_LINE.match(entry.user_message or ""))
    ]


def test_batch_reports_run_level_progress_monotonic_to_total(
    sqlite_store_url, instance, monkeypatch, tmp_path
):
    """Each finished command moves the batch's done/total; read back from the run's event log.

    Each command after the first waits for a gate that a watcher opens only once the progress
    line of the previous command's step is in the run's event log, so the batch finishes one
    command per step whatever the machine's load, and the line of step n says n/4.
    """
    from orchestration.commands import ops

    monkeypatch.setattr(ops, "PROGRESS_EVERY_SECONDS", 0.0)  # a line per finished command
    engine = make_engine(sqlite_store_url)
    gates = [tmp_path / f"gate{n}" for n in (1, 2, 3)]
    seed(engine, {
        "environments": [{"name": "staging"}],
        "commands": [
            {"name": "fast", "command": "echo fast"},
            {"name": "fails", "command": gated_command(gates[0], "exit 3")},
            {"name": "mid", "command": gated_command(gates[1], "echo mid")},
            {"name": "slow", "command": gated_command(gates[2], "echo slow")},
        ],
    })  # fmt: skip
    # steps run in this order; every command starts at once on the pool
    ids = [
        actions.request_run(engine, name, "staging", status=m.QUEUED, batch_key="progress-test")
        for name in ("fast", "fails", "mid", "slow")
    ]
    errors: list[BaseException] = []

    def open_gates() -> None:
        try:
            (run,) = wait_until(lambda: instance.get_runs(limit=1), what="the batch run")
            for done, gate in enumerate(gates, 1):
                wait_until(
                    lambda done=done: (done, len(ids)) in _progress(instance, run.run_id),
                    what=f"the progress line {done}/{len(ids)}",
                )
                gate.touch()
        except BaseException as exc:  # reported by the test, after opening every gate
            errors.append(exc)
            for gate in gates:
                gate.touch()

    watcher = threading.Thread(target=open_gates, name="gate-watcher")
    watcher.start()
    config = {"ops": {"plan_command_runs": {"config": {"command_run_ids": ids}}}}
    try:
        result = run_commands_job.execute_in_process(
            run_config=config, instance=instance, resources=_resources(sqlite_store_url),
            raise_on_error=False,
        )  # fmt: skip
    finally:
        for gate in gates:
            gate.touch()
        watcher.join()
    assert not errors, errors
    assert _progress(instance, result.run_id) == [(1, 4), (2, 4), (3, 4), (4, 4)]
    statuses = [store.get_run(engine, i)["status"] for i in ids]
    assert statuses == [m.SUCCEEDED, m.FAILED, m.SUCCEEDED, m.SUCCEEDED]


class _SteppedClock:
    """Monotonic seconds, 1 s further at each reading; reading n (n >= 1) then opens gate n.

    Progress reads the clock once when built and once per batch update, and each command's step
    updates the batch once its own command is done. Command n + 1 waits for gate n, so it can
    finish only after step n has counted: step n always sees exactly n commands done.
    """

    def __init__(self, gates: list[Path]) -> None:
        self.readings = 0
        self.gates = gates

    def __call__(self) -> float:
        now = float(self.readings)
        if 1 <= self.readings <= len(self.gates):
            self.gates[self.readings - 1].touch()
        self.readings += 1
        return now


def test_batch_progress_is_throttled_at_the_shipped_interval(
    sqlite_store_url, instance, monkeypatch, tmp_path
):
    """The batch job builds its Progress with the 2 s interval, not a line per command.

    Only the clock is injected (Progress's seam); the interval is the one ops.py ships. Updates
    at t = 1, 2, 3, 4 s: with 2 s the lines are 1/4, 3/4 and the last; an interval of 1 s or
    less (e.g. 0) would add 2/4, one of 3 s or more would drop 3/4.
    """
    from functools import partial

    from orchestration.commands import ops
    from orchestration.policies.progress import Progress

    gates = [tmp_path / f"gate{n}" for n in (1, 2, 3)]
    clock = _SteppedClock(gates)
    monkeypatch.setattr(ops, "Progress", partial(Progress, clock=clock))
    engine = make_engine(sqlite_store_url)
    seed(engine, {
        "environments": [{"name": "staging"}],
        "commands": [
            {"name": "first", "command": "echo first"},
            *({"name": f"then{n}", "command": gated_command(gate, f"echo {n}")}
              for n, gate in enumerate(gates, 1)),
        ],
    })  # fmt: skip
    ids = [
        actions.request_run(engine, name, "staging", status=m.QUEUED, batch_key="throttle-test")
        for name in ("first", "then1", "then2", "then3")
    ]
    config = {"ops": {"plan_command_runs": {"config": {"command_run_ids": ids}}}}
    try:
        result = run_commands_job.execute_in_process(
            run_config=config, instance=instance, resources=_resources(sqlite_store_url)
        )
    finally:
        for gate in gates:  # a command never left waiting out its 120 s
            gate.touch()
    assert result.success
    assert clock.readings == 5  # built once, one update per command's step
    assert _progress(instance, result.run_id) == [(1, 4), (3, 4), (4, 4)]
