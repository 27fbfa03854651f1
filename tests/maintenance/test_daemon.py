"""``dagster-daemon run`` as a real subprocess picks up a schedule and its run succeeds.

To stay well under a minute without waiting for a cron boundary, the schedule's state is stored
as started two days ago: the daemon's first iteration finds the missed 00:00 ticks, launches one
run for the latest (the catch-up rule), the queued-run daemon launches it through the code
server, and it resets the sandbox's daily quota for that day.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from orchestration.maintenance.partitions import SLOT_TAG
from tests.conftest import TEST_API_KEY
from tests.daemon import Daemon, make_home, start_schedule_since, write_workspace

LOCATION = "maintenance_daemon_test"
MODULE = "tests.maintenance.code_location"


def _finished(instance: dg.DagsterInstance) -> bool:
    runs = instance.get_runs(dg.RunsFilter(job_name="quota_reset"))
    return bool(runs) and runs[0].status in (
        dg.DagsterRunStatus.SUCCESS,
        dg.DagsterRunStatus.FAILURE,
    )


@pytest.mark.slow
def test_daemon_launches_the_latest_missed_tick_and_the_run_succeeds(
    sandbox, tmp_path, monkeypatch
):
    home = make_home(tmp_path / "dagster_home", postgres=False)
    workspace = write_workspace(tmp_path / "workspace.yaml", MODULE, LOCATION)
    now = dt.datetime.now(dt.UTC)
    today = now.date().isoformat()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    env = {
        "DAGSTER_HOME": str(home),
        "CA_API_URL": sandbox.base_url,
        "CA_ROOT_API_KEY": TEST_API_KEY,
    }
    with dg.DagsterInstance.get() as instance:
        start_schedule_since(
            instance, MODULE, LOCATION, "quota_reset_schedule", now - dt.timedelta(days=2)
        )
        with Daemon(workspace, env, tmp_path / "daemon.log") as daemon:
            daemon.wait_for(lambda: _finished(instance), timeout=55)
            daemon_log = daemon.log_tail()
        runs = instance.get_runs(dg.RunsFilter(job_name="quota_reset"))
        assert runs, f"no quota_reset run; daemon log:\n{daemon_log}"
        run = runs[0]
        assert run.status == dg.DagsterRunStatus.SUCCESS, daemon_log
        assert run.tags["dagster/partition"] == run.tags[SLOT_TAG] == today
        assert run.tags["dagster/schedule_name"] == "quota_reset_schedule"
        # Two days down: exactly one run, for the latest missed 00:00 tick.
        assert len(runs) == 1
    assert sandbox.state()["effects"]["reset-daily"] == {today: 1}
