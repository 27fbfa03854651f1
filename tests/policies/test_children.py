"""Parent/child runs through Dagster's engine: `dagster dev` (webserver + daemon, the repo's
dagster.yaml with its queued coordinator, the default subprocess launcher) and the sandbox.

Everything goes through the webserver's GraphQL as an operator's tooling would: the parent is
launched there, its step submits each child there, and the checks read runs and events there.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pytest
from dagster_graphql import DagsterGraphQLClient

from dev.sandbox.server import Fault, SandboxServer
from orchestration.policies.children import (
    CHILD_KEY_TAG,
    PARENT_RUN_TAG,
    ROOT_PARENT_RUN_TAG,
    webserver_client_args,
)
from tests.conftest import TEST_API_KEY, TEST_SUPABASE_TOKEN, run_config
from tests.dagster_dev import DagsterDev, dagster_dev
from tests.support.sandbox import running_sandbox
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

RUNS_QUERY = """query($tags: [ExecutionTag!]) {
  runsOrError(filter: {tags: $tags}) { ... on Runs { results {
    runId jobName status tags { key value } } } } }"""
EVENTS_QUERY = """query($runId: ID!) {
  logsForRun(runId: $runId, limit: 1000) { ... on EventConnection { events {
    __typename
    ... on ExecutionStepFailureEvent { error { message } }
    ... on ExecutionStepOutputEvent { metadataEntries {
      label ... on JsonMetadataEntry { jsonString } } }
  } } } }"""
REEXECUTE = """mutation($parentRunId: String!) {
  launchPipelineReexecution(reexecutionParams: {parentRunId: $parentRunId, strategy: FROM_FAILURE})
  { __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


@dataclass(frozen=True)
class DevStack:
    """`dagster dev` with the sandbox behind it, and the GraphQL calls the tests make."""

    dev: DagsterDev
    sandbox: SandboxServer
    client: DagsterGraphQLClient

    def launch_parent(self, orgs_per_child: int) -> str:
        config = run_config(
            ops={"sync_tenants_as_children": {"config": {"orgs_per_child": orgs_per_child}}}
        )
        # The port is chosen when `dagster dev` starts; operators set PLATFORM_OPS_WEBSERVER_URL.
        config["resources"]["child_runs"] = {
            "config": {"webserver_url": self.dev.url, "poll_interval_seconds": 0.5}
        }
        return self.client.submit_job_execution("org_sync_by_tenant", run_config=config)

    def wait(self, run_id: str, timeout: float = 180) -> dg.DagsterRunStatus:
        """The run's final status; a run still going after ``timeout`` fails with the log tail."""

        def finished() -> dg.DagsterRunStatus | None:
            status = self.client.get_run_status(run_id)
            return status if status in FINISHED else None

        try:
            return wait_until(finished, timeout, what=f"run {run_id} to finish", interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.dev.log_tail()}") from None

    def runs(self, **tags: str) -> list[dict[str, Any]]:
        tag_list = [{"key": k, "value": v} for k, v in tags.items()]
        data = self.dev.graphql(RUNS_QUERY, {"tags": tag_list})
        runs = data["runsOrError"]["results"]
        for run in runs:
            run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
        return runs

    def children(self, parent_id: str) -> dict[str, dict[str, Any]]:
        runs = self.runs(**{PARENT_RUN_TAG: parent_id})
        return {r["tags"][CHILD_KEY_TAG]: r for r in runs}

    def events(self, run_id: str) -> list[dict[str, Any]]:
        return self.dev.graphql(EVENTS_QUERY, {"runId": run_id})["logsForRun"]["events"]

    def output_metadata(self, run_id: str) -> dict[str, Any]:
        import json

        return {
            e["label"]: json.loads(e["jsonString"])
            for event in self.events(run_id)
            if event["__typename"] == "ExecutionStepOutputEvent"
            for e in event["metadataEntries"]
            if "jsonString" in e
        }

    def syncs(self) -> dict[str, int]:
        return {slug: o["syncs"] for slug, o in self.sandbox.state()["orgs"].items()}


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[DevStack]:
    """One `dagster dev` and one sandbox for this module (start-up is most of the cost)."""
    home = tmp_path_factory.mktemp("children")
    with running_sandbox(home, orgs=5) as sandbox:
        env = {
            "CA_API_URL": sandbox.base_url,
            "CA_ROOT_API_KEY": TEST_API_KEY,
            "SUPABASE_ACCESS_TOKEN": TEST_SUPABASE_TOKEN,
        }
        with dagster_dev(home / "dagster_home", env) as dev:
            client = DagsterGraphQLClient(**webserver_client_args(dev.url), timeout=30)
            yield DevStack(dev, sandbox, client)


def _assert_queued_run_of_its_own(stack: DevStack, child: dict[str, Any], parent_id: str) -> None:
    assert child["runId"] != parent_id and child["jobName"] == "org_sync_all"
    kinds = [e["__typename"] for e in stack.events(child["runId"])]
    # Into the coordinator's queue first, then launched by the daemon (RUN_STARTING is the
    # launcher's), then started in a process of its own: its own run, not a step of the parent.
    assert "RunEnqueuedEvent" in kinds and "RunStartEvent" in kinds, kinds
    assert kinds.index("RunEnqueuedEvent") < kinds.index("RunStartingEvent")
    assert kinds.index("RunStartingEvent") < kinds.index("RunStartEvent")
    # The project's coordinator tagged it at submit time.
    assert child["tags"]["platform/environment"] == "test"


def test_children_are_queued_runs_of_their_own_and_the_parent_names_them(stack):
    before = stack.syncs()
    parent_id = stack.launch_parent(orgs_per_child=2)
    assert stack.wait(parent_id) == dg.DagsterRunStatus.SUCCESS, stack.dev.log_tail()
    children = stack.children(parent_id)
    assert sorted(children) == ["org-0001..org-0002", "org-0003..org-0004", "org-0005..org-0005"]
    for child in children.values():
        assert child["status"] == "SUCCESS"
        assert child["tags"][ROOT_PARENT_RUN_TAG] == parent_id
        _assert_queued_run_of_its_own(stack, child, parent_id)
    assert len({c["runId"] for c in children.values()}) == 3
    metadata = stack.output_metadata(parent_id)
    assert sorted(metadata["child_run_ids"]) == sorted(c["runId"] for c in children.values())
    assert metadata["failed_children"] == [] and metadata["reused_children"] == []
    assert all(n == before[slug] + 1 for slug, n in stack.syncs().items())


def test_a_failed_child_fails_the_parent_and_reexecution_reruns_only_it(stack):
    stack.sandbox.add_fault(Fault(method="POST", path="/admin/orgs/org-0003/sync", status=400))
    try:
        before = stack.syncs()
        parent_id = stack.launch_parent(orgs_per_child=3)
        assert stack.wait(parent_id) == dg.DagsterRunStatus.FAILURE
    finally:
        stack.sandbox.clear_faults()
    children = stack.children(parent_id)
    failed, ok = children["org-0001..org-0003"], children["org-0004..org-0005"]
    assert failed["status"] == "FAILURE" and ok["status"] == "SUCCESS"
    (message,) = [
        e["error"]["message"]
        for e in stack.events(parent_id)
        if e["__typename"] == "ExecutionStepFailureEvent"
    ]
    assert "1 of 2 child run(s) failed" in message
    assert f"org-0001..org-0003 (run {failed['runId']})" in message and "org-0003" in message
    assert ok["runId"] not in message
    # org-0004 is in the other child and synced: one org failing never stops the others.
    assert stack.syncs()["org-0004"] == before["org-0004"] + 1

    # Re-executed from failure: the succeeded child is reused, only the failed key runs again.
    answer = stack.dev.graphql(REEXECUTE, {"parentRunId": parent_id})["launchPipelineReexecution"]
    assert answer["__typename"] == "LaunchRunSuccess", answer
    again_id = answer["run"]["runId"]
    assert stack.wait(again_id) == dg.DagsterRunStatus.SUCCESS, stack.dev.log_tail()
    rerun = stack.children(again_id)
    assert list(rerun) == ["org-0001..org-0003"]
    assert rerun["org-0001..org-0003"]["tags"][ROOT_PARENT_RUN_TAG] == parent_id
    _assert_queued_run_of_its_own(stack, rerun["org-0001..org-0003"], again_id)
    metadata = stack.output_metadata(again_id)
    assert metadata["reused_children"] == ["org-0004..org-0005"]
    assert ok["runId"] in metadata["child_run_ids"]
    assert stack.syncs()["org-0004"] == before["org-0004"] + 1  # not synced a second time
    assert len(stack.runs(**{ROOT_PARENT_RUN_TAG: parent_id})) == 3
