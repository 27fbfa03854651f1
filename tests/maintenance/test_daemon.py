"""``dagster-daemon run`` as a real subprocess picks up schedules and their runs succeed.

No cron boundary is waited for: each schedule's state is stored as started in the past, so the
daemon's first iteration finds the missed ticks and launches one run for the latest (the catch-up
rule, ``max_catchup_runs: 1``), and the queued-run daemon launches it through the code server.

- ``quota_reset`` (started two days ago) resets the sandbox's daily quota for today.
- ``deliver_trigger_notifications`` (started two minutes ago) runs on a record store that has no
  tables at all: the run's ``record_store`` resource upgrades it "when a run first uses it"
  (``auto_upgrade``), so the store is at every area's head afterwards. The fixtures of every
  other test upgrade first; this is the one place the upgrade happens under a real daemon, on
  PostgreSQL, the storage production uses.

Every wait is for an event (the runs ending), bounded generously for a loaded machine.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest
import sqlalchemy as sa
from alembic import util as alembic_util
from alembic.script import ScriptDirectory

from orchestration.maintenance.partitions import SLOT_TAG
from resources.db import make_engine
from resources.record_store import VERSION_TABLE, alembic_config
from tests.conftest import TEST_API_KEY
from tests.daemon import Daemon, make_home, start_schedule_since, write_workspace
from tests.maintenance.daemon_location import SWEEP_JOB
from tests.support.store import version_rows

LOCATION = "maintenance_daemon_test"
MODULE = "tests.maintenance.daemon_location"
# Daemon and code-server start, two run workers, on a loaded 2-core machine: room to spare.
TIMEOUT = 240


def _finished(instance: dg.DagsterInstance, job: str) -> list[dg.DagsterRun]:
    runs = instance.get_runs(dg.RunsFilter(job_name=job))
    return [r for r in runs if r.is_finished]


def _rows_at_every_head(url: str) -> set[str]:
    """The version rows of a store at every head, from the migration scripts (Alembic's
    ``ScriptDirectory``, not the project's own check): each head, except a head that another
    revision ``depends_on`` (``core_0001``): Alembic drops a dependency's row once a dependent is
    applied, its being applied then implied by the dependent's row."""
    script = ScriptDirectory.from_config(alembic_config(url))
    depended_on = {
        dependency
        for revision in script.walk_revisions()
        for dependency in alembic_util.to_tuple(revision.dependencies, default=())
    }
    return set(script.get_heads()) - depended_on


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT + 60)
def test_daemon_launches_the_latest_missed_ticks_and_a_run_upgrades_an_empty_store(
    sandbox, pg_schema_url, tmp_path, monkeypatch
):
    store_url = pg_schema_url  # a fresh schema: no tables, no version table
    assert _tables(store_url) == set()
    home = make_home(tmp_path / "dagster_home", postgres=False)
    workspace = write_workspace(tmp_path / "workspace.yaml", MODULE, LOCATION)
    now = dt.datetime.now(dt.UTC)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    env = {
        "DAGSTER_HOME": str(home),
        "CA_API_URL": sandbox.base_url,
        "CA_ROOT_API_KEY": TEST_API_KEY,
        "RECORD_STORE_URL": store_url,
    }
    with dg.DagsterInstance.get() as instance:
        start_schedule_since(
            instance, MODULE, LOCATION, "quota_reset_schedule", now - dt.timedelta(days=2)
        )
        start_schedule_since(
            instance,
            MODULE,
            LOCATION,
            f"{SWEEP_JOB.name}_schedule",
            now - dt.timedelta(minutes=2),
        )
        with Daemon(workspace, env, tmp_path / "daemon.log") as daemon:
            daemon.wait_for(
                lambda: _finished(instance, "quota_reset") and _finished(instance, SWEEP_JOB.name),
                timeout=TIMEOUT,
                what="a finished quota_reset run and a finished deliver_trigger_notifications run",
            )
            daemon_log = daemon.log_tail()
            # The latest missed 00:00 is of the day the daemon looked: read the clock around it.
            days = {now.date().isoformat(), dt.datetime.now(dt.UTC).date().isoformat()}
            # As they are now: stopping the daemon may interrupt a later minute's sweep.
            sweeps = _finished(instance, SWEEP_JOB.name)

        runs = instance.get_runs(dg.RunsFilter(job_name="quota_reset"))
        # Two days down: exactly one run, for the latest missed 00:00 tick (one more only if the
        # test crossed midnight: then that day's own tick).
        slots = [r.tags["dagster/partition"] for r in runs]
        assert 1 <= len(runs) <= len(days) and set(slots) <= days, (slots, daemon_log)
        assert len(set(slots)) == len(slots), slots
        for run in runs:
            assert run.status == dg.DagsterRunStatus.SUCCESS, daemon_log
            assert run.tags[SLOT_TAG] == run.tags["dagster/partition"]
            assert run.tags["dagster/schedule_name"] == "quota_reset_schedule"

        # The sweep's runs came from its schedule and succeeded on the store they upgraded.
        assert sweeps, daemon_log
        for sweep in sweeps:
            assert sweep.status == dg.DagsterRunStatus.SUCCESS, daemon_log
            assert sweep.tags["dagster/schedule_name"] == f"{SWEEP_JOB.name}_schedule"
    assert sandbox.state()["effects"]["reset-daily"] == dict.fromkeys(slots, 1)

    # The run's resource upgraded the empty store to every area's head (by Alembic's scripts).
    assert {VERSION_TABLE, "notification_outbox", "alerts"} <= _tables(store_url)
    expected = _rows_at_every_head(store_url)
    assert {"commands_0002", "release_0001"} <= expected  # not a degenerate expectation
    assert version_rows(store_url) == expected
