"""The parent's waiting logic as a plain function: windowing, mixed results, timeout, reuse.

A scripted status source stands in for the engine here; the GraphQL path itself (submission
through the webserver, the queue, the launcher) is covered end to end by test_children.py.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import pytest
from dagster_graphql import DagsterGraphQLClientError

from orchestration.policies.children import (
    CHILD_KEY_TAG,
    MAX_POLL_ERRORS,
    WEBSERVER_URL_ENV,
    ChildRunsConfigError,
    ChildRunsResource,
    ChildSpec,
    EarlierChild,
    fail_on_failed_children,
    pick_earlier_children,
    wait_for_children,
    webserver_client_args,
)

S = dg.DagsterRunStatus


@dataclass
class ScriptedRuns:
    """Each submitted run walks through ``script[key]`` one status per poll (last one sticks)."""

    script: Mapping[str, list[dg.DagsterRunStatus]]
    earlier: Mapping[str, EarlierChild] = field(default_factory=dict)
    submitted: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    polls: dict[str, int] = field(default_factory=dict)
    key_of: dict[str, str] = field(default_factory=dict)
    max_in_flight: int = 0
    fail_status_queries: int = 0

    def submit(self, job_name: str, run_config: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        key = tags[CHILD_KEY_TAG]
        run_id = f"run-{key}-{len(self.submitted)}"
        self.submitted.append((key, dict(tags)))
        self.key_of[run_id] = key
        unfinished = [r for r in self.key_of if self._current(r) not in (S.SUCCESS, S.FAILURE)]
        self.max_in_flight = max(self.max_in_flight, len(unfinished))
        return run_id

    def _current(self, run_id: str) -> dg.DagsterRunStatus:
        steps = self.script[self.key_of[run_id]]
        return steps[min(self.polls.get(run_id, 0), len(steps) - 1)]

    def status(self, run_id: str) -> dg.DagsterRunStatus:
        if self.fail_status_queries:
            self.fail_status_queries -= 1
            raise DagsterGraphQLClientError("Error when connecting to url http://127.0.0.1:1")
        self.key_of.setdefault(run_id, run_id.split("-")[1])
        status = self._current(run_id)
        self.polls[run_id] = self.polls.get(run_id, 0) + 1
        return status

    def error(self, run_id: str) -> str:
        return f"sync_org_batch: {self.key_of[run_id]} refused"

    def earlier_children(self, root_run_id: str, job_name: str) -> Mapping[str, EarlierChild]:
        assert root_run_id == "root-1" and job_name == "org_sync_all"
        return self.earlier


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _wait(runs: ScriptedRuns, keys: list[str], clock: Clock, lines: list[str], **kw: Any):
    return wait_for_children(
        runs,
        "org_sync_all",
        [ChildSpec(k, {"ops": {}}) for k in keys],
        tags={"platform/parent_run_id": "parent-2"},
        root_run_id="root-1",
        max_parallel=kw.pop("max_parallel", 2),
        poll_interval_seconds=kw.pop("poll", 1.0),
        wait_timeout_seconds=kw.pop("timeout", 60.0),
        log=lines.append,
        clock=clock,
        sleep=clock.sleep,
    )


def test_mixed_results_are_all_reported_and_the_window_is_kept():
    queued_then = [S.QUEUED, S.STARTED]
    runs = ScriptedRuns(
        {
            "a": [*queued_then, S.SUCCESS],
            "b": [*queued_then, S.STARTED, S.FAILURE],
            "c": [S.QUEUED, S.SUCCESS],
        }
    )
    clock, lines = Clock(), []
    results = _wait(runs, ["a", "b", "c"], clock, lines, max_parallel=2)
    assert [(r.key, r.success) for r in results] == [("a", True), ("b", False), ("c", True)]
    assert runs.max_in_flight == 2  # c waited for a slot
    assert [k for k, _ in runs.submitted] == ["a", "b", "c"]
    assert all(t["platform/parent_run_id"] == "parent-2" for _, t in runs.submitted)
    assert clock.sleeps == [1.0] * 4  # one poll interval between polls, none after the last
    b = next(r for r in results if r.key == "b")
    assert b.error == "sync_org_batch: b refused" and b.status == "FAILURE"
    assert [line for line in lines if not line.startswith("child runs of ")] == [
        "child a submitted as run run-a-0",
        "child b submitted as run run-b-1",
        "child a (run run-a-0) ended: SUCCESS",
        "child c submitted as run run-c-2",  # into the slot a freed, not before
        "child b (run run-b-1) ended: FAILURE (sync_org_batch: b refused)",
        "child c (run run-c-2) ended: SUCCESS",
    ]
    with pytest.raises(dg.Failure) as failed:
        fail_on_failed_children(results)
    assert f"1 of 3 child run(s) failed: b (run {b.run_id}): sync_org_batch: b refused" in str(
        failed.value.description
    )
    assert failed.value.metadata["failed_children"].value == ["b"]


def test_timeout_names_every_unfinished_child_with_its_run_id():
    runs = ScriptedRuns({"a": [S.SUCCESS], "slow": [S.STARTED], "later": [S.QUEUED]})
    clock, lines = Clock(), []
    with pytest.raises(dg.Failure) as timed_out:
        _wait(runs, ["a", "slow", "later", "never"], clock, lines, max_parallel=2, timeout=5)
    text = timed_out.value.description
    slow_id = next(r for r, k in runs.key_of.items() if k == "slow")
    assert "timed out after 5s waiting for 3 child run(s) of org_sync_all" in text
    assert f"slow (run {slow_id})" in text and "never (not submitted)" in text
    assert "a (run" not in text  # finished children are not named as unfinished
    assert timed_out.value.metadata["unfinished_children"].value == ["later", "slow", "never"]
    assert clock.now == 5.0 and clock.sleeps == [1.0] * 5  # gave up at the deadline, not later


def test_earlier_children_are_reused_or_waited_for_never_resubmitted():
    runs = ScriptedRuns(
        {"ok": [S.SUCCESS], "running": [S.STARTED, S.SUCCESS], "failed": [S.SUCCESS]},
        earlier={
            "ok": EarlierChild("run-ok-old", S.SUCCESS),
            "running": EarlierChild("run-running-old", S.STARTED),
        },
    )
    clock, lines = Clock(), []
    results = {r.key: r for r in _wait(runs, ["ok", "running", "failed"], clock, lines)}
    assert [k for k, _ in runs.submitted] == ["failed"]  # only the key with no usable run
    assert results["ok"].reused and results["ok"].run_id == "run-ok-old"
    assert results["running"].run_id == "run-running-old" and not results["running"].reused
    assert all(r.success for r in results.values())
    assert fail_on_failed_children(list(results.values()))["reused_children"].value == ["ok"]


def test_pick_earlier_children_prefers_a_success_and_drops_failures():
    found = [  # newest first, as the instance lists runs
        ("k", EarlierChild("r3", S.FAILURE)),
        ("k", EarlierChild("r2", S.SUCCESS)),
        ("k", EarlierChild("r1", S.STARTED)),
        ("f", EarlierChild("r4", S.CANCELED)),
        ("q", EarlierChild("r5", S.QUEUED)),
    ]
    picked = pick_earlier_children(found)
    assert picked == {"k": EarlierChild("r2", S.SUCCESS), "q": EarlierChild("r5", S.QUEUED)}


def test_a_webserver_that_stays_away_fails_the_step_naming_the_children():
    runs = ScriptedRuns({"a": [S.SUCCESS]}, fail_status_queries=MAX_POLL_ERRORS)
    clock, lines = Clock(), []
    with pytest.raises(dg.Failure) as failed:
        _wait(runs, ["a"], clock, lines)
    assert WEBSERVER_URL_ENV in failed.value.description
    assert "a (run run-a-0)" in failed.value.description
    # A shorter outage is ridden out.
    runs = ScriptedRuns({"a": [S.SUCCESS]}, fail_status_queries=MAX_POLL_ERRORS - 1)
    assert [r.success for r in _wait(runs, ["a"], Clock(), [])] == [True]


def test_webserver_url_setting(monkeypatch):
    monkeypatch.setenv(WEBSERVER_URL_ENV, "https://dagster.internal:8443/ops/")
    assert webserver_client_args(ChildRunsResource().webserver_url) == {
        "hostname": "dagster.internal",
        "port_number": 8443,
        "use_https": True,
        "path_prefix": "/ops",
    }
    monkeypatch.delenv(WEBSERVER_URL_ENV)
    assert ChildRunsResource().webserver_url == "http://127.0.0.1:3000"
    for bad in ["dagster-webserver:3000", "http://h:99999", "http://user:secret@h:3000", ""]:
        with pytest.raises(ChildRunsConfigError) as err:
            webserver_client_args(bad)
        message = str(err.value)
        assert message.startswith(WEBSERVER_URL_ENV) and "\n" not in message
        assert "secret" not in message and "internal address" in message
