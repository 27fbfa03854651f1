"""A scheduler that was down over several slots launches one run, for the latest slot.

Evaluated through Dagster's own scheduler loop (``launch_scheduled_runs``, what the daemon calls
every iteration, with the instance scheduler's ``max_catchup_runs`` as the daemon passes it) on a
real SQLite instance carrying the shipped ``scheduler`` settings, with a queued run coordinator so
runs are recorded but not executed. The schedules are partitioned, so the latest-only rule rests
on ``max_catchup_runs: 1`` in every shipped instance file (Dagster's default would be 5).
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._scheduler.scheduler import launch_scheduled_runs

UTC = dt.UTC
LOG = logging.getLogger("test_catch_up")
REPO = Path(__file__).resolve().parents[2]
SHIPPED = ["dagster.yaml", "dagster.postgres.yaml", "deploy/dagster.yaml"]
PARTITION = "dagster/partition"


def shipped_scheduler(name: str = "dagster.yaml") -> dict:
    return yaml.safe_load((REPO / name).read_text())["scheduler"]


def make_instance(scheduler: dict | None):
    coordinator = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}
    overrides = {"run_coordinator": coordinator}
    if scheduler is not None:
        overrides["scheduler"] = scheduler
    return dg.instance_for_test(overrides=overrides)


@pytest.fixture
def queued_instance():
    with make_instance(shipped_scheduler()) as instance:
        yield instance


@pytest.fixture
def workspace_context(queued_instance):
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="tests.maintenance.code_location", attribute="defs")
    )
    target = InProcessWorkspaceLoadTarget(origin)
    with create_test_daemon_workspace_context(target, queued_instance) as context:
        yield context


def tick(context, when: dt.datetime) -> None:
    # A fresh iteration-times map: the daemon process was restarted after its downtime.
    catchup = context.instance.scheduler.max_catchup_runs  # what the daemon passes
    list(
        launch_scheduled_runs(
            context, LOG, end_datetime_utc=when, iteration_times={}, max_catchup_runs=catchup
        )
    )


def test_every_shipped_instance_file_launches_only_the_latest_missed_tick():
    for name in SHIPPED:
        scheduler = shipped_scheduler(name)
        assert scheduler["class"] == "DagsterDaemonScheduler", name
        assert scheduler["config"]["max_catchup_runs"] == 1, name


def runs_of(instance, job: str) -> list[dg.DagsterRun]:
    return list(reversed(instance.get_runs(dg.RunsFilter(job_name=job))))


def test_downtime_over_three_slots_launches_one_run_for_the_latest(
    workspace_context, queued_instance
):
    # The daemon first sees the RUNNING-by-default schedules at 10:00 on Nov 20 ...
    tick(workspace_context, dt.datetime(2026, 11, 20, 10, 0, tzinfo=UTC))
    assert queued_instance.get_runs() == []
    # ... and next at 09:00 on Nov 23: the 00:00 ticks of the 21st, 22nd and 23rd were missed.
    tick(workspace_context, dt.datetime(2026, 11, 23, 9, 0, tzinfo=UTC))

    for job, slot in [
        ("quota_reset", "2026-11-23"),
        ("quota_cleanup", "2026-11-23"),
        ("stale_cleanup", "2026-11-23"),
        ("alerts", "2026-11-23"),  # 08:00 on the 23rd had passed at 09:00
    ]:
        runs = runs_of(queued_instance, job)
        assert [r.tags[PARTITION] for r in runs] == [slot], job
        assert runs[0].tags["dagster/schedule_name"] == f"{job}_schedule"
    assert runs_of(queued_instance, "quota_monthly") == []  # no 1st of the month in the gap

    # Evaluating the same moment again (a restarted daemon) launches nothing more.
    tick(workspace_context, dt.datetime(2026, 11, 23, 9, 0, 30, tzinfo=UTC))
    assert len(queued_instance.get_runs()) == 4


def test_monthly_catch_up_after_a_down_month_end(workspace_context, queued_instance):
    tick(workspace_context, dt.datetime(2026, 10, 30, 12, 0, tzinfo=UTC))
    tick(workspace_context, dt.datetime(2026, 12, 1, 0, 6, tzinfo=UTC))
    runs = runs_of(queued_instance, "quota_monthly")
    # Nov 1 and Dec 1 were both missed: only December's reset runs.
    assert [r.tags[PARTITION] for r in runs] == ["2026-12"]
    assert runs[0].run_config.get("ops") is None  # the slot is the partition, not config
    assert [r.tags[PARTITION] for r in runs_of(queued_instance, "quota_reset")] == ["2026-12-01"]


def test_dagster_itself_launches_only_the_latest_tick_even_with_its_default_catchup():
    # A tripwire, not a wish: Dagster 1.13 snapshots every schedule with no partition set, so
    # its scheduler launches only the latest missed tick whatever max_catchup_runs says (the
    # partitioned schedules log "has no partition set, so not trying to catch up"). Should a
    # Dagster upgrade start catching up partitioned schedules, this fails and the shipped
    # max_catchup_runs: 1 (checked above) becomes what keeps catch-up latest-only.
    with make_instance(None) as instance:
        assert instance.scheduler.max_catchup_runs == 5
        origin = InProcessCodeLocationOrigin(
            LoadableTargetOrigin(module_name="tests.maintenance.code_location", attribute="defs")
        )
        target = InProcessWorkspaceLoadTarget(origin)
        with create_test_daemon_workspace_context(target, instance) as context:
            tick(context, dt.datetime(2026, 11, 20, 10, 0, tzinfo=UTC))
            tick(context, dt.datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
        runs = runs_of(instance, "quota_reset")
        assert [r.tags[PARTITION] for r in runs] == ["2026-11-23"]
