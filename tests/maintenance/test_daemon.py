"""``dagster-daemon run`` as a real subprocess picks up a schedule and its run succeeds.

To stay well under a minute without waiting for a cron boundary, the schedule's state is stored
as started two days ago: the daemon's first iteration finds the missed 00:00 ticks, launches one
run for the latest (the catch-up rule), the queued-run daemon launches it through the code
server, and it resets the sandbox's daily quota for that day.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.scheduler.instigation import (
    InstigatorState,
    InstigatorStatus,
    InstigatorType,
    ScheduleInstigatorData,
)
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

from orchestration.maintenance.slots import SLOT_TAG
from tests.conftest import TEST_API_KEY

REPO = Path(__file__).resolve().parents[2]
LOCATION = "maintenance_daemon_test"
MODULE = "tests.maintenance.code_location"


def _seed_schedule_started(instance: dg.DagsterInstance, name: str, since: dt.datetime) -> None:
    """Store ``name`` as RUNNING since ``since`` (selector ids match the daemon's location)."""
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name=MODULE, attribute="defs", working_directory=str(REPO)),
        location_name=LOCATION,
    )
    target = InProcessWorkspaceLoadTarget(origin)
    with create_test_daemon_workspace_context(target, instance) as context:
        entry = next(iter(context.create_request_context().get_code_location_entries().values()))
        (repo,) = entry.code_location.get_repositories().values()
        schedule = repo.get_schedule(name)
        instance.add_instigator_state(
            InstigatorState(
                schedule.get_remote_origin(),
                InstigatorType.SCHEDULE,
                InstigatorStatus.RUNNING,
                ScheduleInstigatorData(schedule.cron_schedule, since.timestamp()),
            )
        )


@pytest.mark.slow
def test_daemon_launches_the_latest_missed_tick_and_the_run_succeeds(sandbox, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n"
        "  - python_module:\n"
        f"      module_name: {MODULE}\n"
        f"      working_directory: {REPO}\n"
        f"      location_name: {LOCATION}\n"
        "      attribute: defs\n"
    )
    now = dt.datetime.now(dt.UTC)
    today = now.date().isoformat()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "CA_API_URL": sandbox.base_url,
        "CA_ROOT_API_KEY": TEST_API_KEY,
        "PYTHONPATH": str(REPO),
    }
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.get() as instance:
            _seed_schedule_started(instance, "quota_reset_schedule", now - dt.timedelta(days=2))
            log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - closed below
            proc = subprocess.Popen(
                [sys.executable, "-m", "dagster._daemon", "run", "-w", str(workspace)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 55
                run = None
                while time.monotonic() < deadline:
                    runs = instance.get_runs(dg.RunsFilter(job_name="quota_reset"))
                    if runs and runs[0].status in (
                        dg.DagsterRunStatus.SUCCESS,
                        dg.DagsterRunStatus.FAILURE,
                    ):
                        run = runs[0]
                        break
                    time.sleep(0.5)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                log.close()
            daemon_log = (tmp_path / "daemon.log").read_text(errors="replace")[-4000:]
            assert run is not None, f"no finished quota_reset run; daemon log:\n{daemon_log}"
            assert run.status == dg.DagsterRunStatus.SUCCESS, daemon_log
            assert run.tags[SLOT_TAG] == today
            assert run.tags["dagster/schedule_name"] == "quota_reset_schedule"
            # Two days down: exactly one run, for the latest missed 00:00 tick.
            assert len(instance.get_runs(dg.RunsFilter(job_name="quota_reset"))) == 1
    finally:
        del os.environ["DAGSTER_HOME"]
    assert sandbox.state()["effects"]["reset-daily"] == {today: 1}
