"""A three-day backfill, launched the Dagster way, and the partition view it leaves behind.

``dagster job backfill`` (what an operator types; the UI's partition view launches the same
partition runs) submits one run per partition through the shipped run coordinator; a real
``dagster-daemon run`` dequeues and executes them against the sandbox. Then the partition view's
data is read through Dagster's GraphQL API (what the UI asks): the three days are successful,
the other days of the range are listed without a run.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import dagster as dg
import pytest
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster_graphql.test.utils import execute_dagster_graphql

from orchestration.maintenance.partitions import PARTITIONS_START, SLOT_TAG
from tests.conftest import TEST_API_KEY
from tests.daemon import REPO, Daemon, make_home, write_workspace

LOCATION = "maintenance_backfill_test"
MODULE = "tests.maintenance.code_location"
# job, endpoint, idempotency-key prefix
BACKFILLED = [
    ("quota_reset", "/admin/quota/reset-daily", "quota-reset-daily"),
    ("alerts", "/admin/alerts/process-all", "alerts-process-all"),
]

PARTITION_VIEW = """
query PartitionView($selector: RepositorySelector!, $name: String!) {
  partitionSetOrError(repositorySelector: $selector, partitionSetName: $name) {
    __typename
    ... on PartitionSet {
      pipelineName
      partitionsOrError { ... on Partitions { results { name } } }
      partitionStatusesOrError {
        __typename
        ... on PartitionStatuses { results { partitionName runStatus } }
      }
    }
  }
}
"""


def _done(instance: dg.DagsterInstance, expected: int) -> bool:
    runs = [r for job, _, _ in BACKFILLED for r in instance.get_runs(dg.RunsFilter(job_name=job))]
    return len(runs) == expected and all(r.is_finished for r in runs)


def _partition_view(instance: dg.DagsterInstance, job: str) -> dict:
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name=MODULE, attribute="defs", working_directory=str(REPO)),
        location_name=LOCATION,
    )
    target = InProcessWorkspaceLoadTarget(origin)
    with create_test_daemon_workspace_context(target, instance) as process_context:
        context = process_context.create_request_context()
        (repo,) = context.get_code_location(LOCATION).get_repositories().values()
        selector = {"repositoryLocationName": LOCATION, "repositoryName": repo.name}
        result = execute_dagster_graphql(
            context, PARTITION_VIEW, {"selector": selector, "name": f"{job}_partition_set"}
        )
    return result.data["partitionSetOrError"]


@pytest.mark.slow
def test_backfill_of_three_days_runs_each_day_once(sandbox, tmp_path, monkeypatch):
    home = make_home(tmp_path / "dagster_home", postgres=False)
    workspace = write_workspace(tmp_path / "workspace.yaml", MODULE, LOCATION)
    today = dt.datetime.now(dt.UTC).date()
    days = [(today - dt.timedelta(days=n)).isoformat() for n in (3, 2, 1)]
    env = {
        "DAGSTER_HOME": str(home),
        "CA_API_URL": sandbox.base_url,
        "CA_ROOT_API_KEY": TEST_API_KEY,
    }
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    for job, _, _ in BACKFILLED:
        cmd = [
            sys.executable, "-m", "dagster", "job", "backfill", "-w", str(workspace),
            "-j", job, "--partitions", ",".join(days), "--noprompt",
        ]  # fmt: skip
        proc = subprocess.run(
            cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **env},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "Launched backfill job" in proc.stdout, proc.stdout

    with dg.DagsterInstance.get() as instance:
        # Submitted, not run: the queued run coordinator holds them until the daemon takes them.
        queued = instance.get_runs()
        assert len(queued) == 6 and {r.status for r in queued} == {dg.DagsterRunStatus.QUEUED}
        with Daemon(workspace, env, tmp_path / "daemon.log") as daemon:
            daemon.wait_for(
                lambda: _done(instance, 6), timeout=240, what="the 6 backfill runs to finish"
            )
            daemon_log = daemon.log_tail()

        for job, path, action in BACKFILLED:
            runs = instance.get_runs(dg.RunsFilter(job_name=job))
            assert len(runs) == 3, daemon_log
            assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), daemon_log
            # Three runs, three distinct partitions, each the slot the op used.
            assert sorted(r.tags["dagster/partition"] for r in runs) == days
            assert all(r.tags[SLOT_TAG] == r.tags["dagster/partition"] for r in runs)
            assert all("dagster/backfill" in r.tags for r in runs)
            # Each endpoint called once per key.
            sent = [r for r in sandbox.requests if r["method"] == "POST" and r["path"] == path]
            assert sorted(r["idempotency_key"] for r in sent) == [f"{action}:{d}" for d in days]
            assert all(r["status"] == 200 for r in sent)

            # The partition view: every day from the start, the three backfilled ones green.
            view = _partition_view(instance, job)
            assert view["__typename"] == "PartitionSet" and view["pipelineName"] == job
            names = [p["name"] for p in view["partitionsOrError"]["results"]]
            # The day in progress is the last: today, or tomorrow if the test crossed midnight.
            now = dt.datetime.now(dt.UTC).date()
            assert names[0] == PARTITIONS_START.isoformat()
            assert names[-1] in {today.isoformat(), now.isoformat()}
            statuses = {
                p["partitionName"]: p["runStatus"]
                for p in view["partitionStatusesOrError"]["results"]
            }
            assert {d: statuses[d] for d in days} == dict.fromkeys(days, "SUCCESS")
            assert statuses[names[-1]] is None  # no run for today yet

    effects = sandbox.state()["effects"]
    assert effects["reset-daily"] == dict.fromkeys(days, 1)
    assert effects["process-all"] == dict.fromkeys(days, 1)
