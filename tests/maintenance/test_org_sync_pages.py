"""``org_sync_all`` over more orgs than one page: 2,500 active orgs, the client's 1,000 a page.

One real run of the shipped job (``execute_job`` on a persistent instance) against the sandbox,
then a re-execution of the whole run, both against the same 2,500 orgs (module-scoped: the
listing, the fan-out and the replay are views of the same two runs). In the first run the sandbox
holds its first sync answers until ``CONCURRENCY`` calls are in flight at once, so the bound is
reached however fast or slow the machine, and observed exactly from the server's side
(``max_in_flight``): reached, never passed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg
import pytest

from dev.sandbox.server import SandboxServer
from dev.sandbox.state import DATASETS_PER_SYNC, encode_cursor
from orchestration.definitions import defs
from tests.conftest import TEST_API_KEY, TEST_SUPABASE_TOKEN, run_config
from tests.support.results import step_metadata
from tests.support.sandbox import running_sandbox
from tests.support.wait import InFlightGate

ORGS = 2500
PAGE = 1000  # what the client asks per page (PlanOrgSyncConfig.page_size's default)
BATCH = 250  # orgs per mapped step (PlanOrgSyncConfig.batch_size's default)
CONCURRENCY = 8
# The client's per-request timeout in these runs: well past the gate's 60 s hold, so no held call
# times out and is retried meanwhile (a retry is one more call in flight: it would fill the gate
# for a client whose bound is one short, and the run would pass).
CLIENT_TIMEOUT_S = 300.0
SLUGS = [f"org-{i:04d}" for i in range(1, ORGS + 1)]
TABLE_ROW = re.compile(r"^\| (?P<org>[^ |]+) \| (?P<result>[^|]+) \|$")


def org_sync_all() -> dg.JobDefinition:
    """The shipped job, reconstructable (``execute_job`` and re-execution need a handle)."""
    return defs.get_job_def("org_sync_all")


@dataclass
class Runs:
    sandbox: SandboxServer
    instance: dg.DagsterInstance
    first: dg.DagsterRun
    first_events: list[dg.EventLogEntry]
    first_metadata: dict[str, dict]  # step key -> its output metadata
    first_requests: list[dict]
    first_max_in_flight: int
    first_gate: InFlightGate
    second: dg.DagsterRun
    second_requests: list[dict]


def _config() -> dict:
    config = run_config(ops={"sync_org_batch": {"config": {"concurrency": CONCURRENCY}}})
    api = config["resources"]["platform_api"]["config"]
    config["resources"]["platform_api"] = {"config": {**api, "timeout_seconds": CLIENT_TIMEOUT_S}}
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """The first run over 2,500 orgs, then a re-execution of the whole run (parent: the first)."""
    directory = tmp_path_factory.mktemp("org_sync_pages")
    with (
        running_sandbox(directory, orgs=ORGS) as sandbox,
        dg.instance_for_test() as instance,
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setenv("CA_API_URL", sandbox.base_url)
        mp.setenv("CA_ROOT_API_KEY", TEST_API_KEY)
        mp.setenv("SUPABASE_ACCESS_TOKEN", TEST_SUPABASE_TOKEN)
        mp.delenv("SUPABASE_API_URL", raising=False)
        mp.delenv("SUPABASE_PROJECT_REF", raising=False)
        job = dg.reconstructable(org_sync_all)
        # Every sync_org answer waits until CONCURRENCY are in flight (60 s at most), then all go.
        gate = InFlightGate(CONCURRENCY)
        sandbox.set_before_answer(lambda op, in_flight: op == "sync_org" and gate.arrive(in_flight))
        with dg.execute_job(job, instance=instance, run_config=_config()) as first:
            assert first.success
            first_id = first.run_id
            steps = {e.step_key for e in first.all_events if e.is_step_success}
            first_metadata = {step: step_metadata(first, step) for step in steps}
        first_requests, first_max = sandbox.requests, sandbox.max_in_flight("sync_org")
        sandbox.clear_requests()
        sandbox.set_before_answer(None)  # the replay is about keys, not overlap
        with dg.execute_job(
            job,
            instance=instance,
            run_config=_config(),
            reexecution_options=dg.ReexecutionOptions(parent_run_id=first_id),
        ) as second:
            assert second.success
            second_id = second.run_id
        yield Runs(
            sandbox=sandbox,
            instance=instance,
            first=instance.get_run_by_id(first_id),
            first_events=[
                r.event_log_entry for r in instance.get_records_for_run(first_id).records
            ],
            first_metadata=first_metadata,
            first_requests=first_requests,
            first_max_in_flight=first_max,
            first_gate=gate,
            second=instance.get_run_by_id(second_id),
            second_requests=sandbox.requests,
        )


def _sync_posts(requests: list[dict]) -> list[dict]:
    return [r for r in requests if r["method"] == "POST" and r["path"].endswith("/sync")]


def _listings(requests: list[dict]) -> list[dict]:
    return [r["query"] for r in requests if r["method"] == "GET" and r["path"] == "/admin/orgs"]


def test_the_listing_reads_three_pages_following_the_cursor(runs: Runs) -> None:
    expected = [
        {"status": "active", "limit": str(PAGE)},
        {"status": "active", "limit": str(PAGE), "cursor": encode_cursor("org-1000")},
        {"status": "active", "limit": str(PAGE), "cursor": encode_cursor("org-2000")},
    ]
    assert _listings(runs.first_requests) == expected
    assert _listings(runs.second_requests) == expected  # a re-execution lists afresh


def test_every_org_is_synced_exactly_once_within_the_concurrency_bound(runs: Runs) -> None:
    posts = _sync_posts(runs.first_requests)
    # Every org POSTed under one key of its own (a client retry of a call whose answer was lost
    # repeats path and key: the server replays it, so it is allowed here and counted below).
    sent = {(r["path"], r["idempotency_key"]) for r in posts}
    assert sorted(sent) == [
        (f"/admin/orgs/{s}/sync", f"org-sync:{runs.first.run_id}:{s}") for s in SLUGS
    ]
    assert {r["status"] for r in posts} == {200}
    # The first POST of each key applied (a lost answer's retry, if any, was replayed).
    first_of_key: dict[str, dict] = {}
    for r in posts:
        first_of_key.setdefault(r["idempotency_key"], r)
    assert {r["replayed"] for r in first_of_key.values()} == {False}
    orgs = runs.sandbox.state()["orgs"]
    assert sorted(orgs) == SLUGS
    assert Counter(o["syncs"] for o in orgs.values()) == {1: ORGS}
    # The first answers were held until CONCURRENCY calls were in flight: the bound is reached
    # (not merely approached) and never passed, on any machine.
    assert runs.first_gate.full.is_set() and not runs.first_gate.timed_out, (
        f"{CONCURRENCY} sync calls were never in flight at once"
    )
    assert runs.first_max_in_flight == CONCURRENCY


def test_each_batch_reports_its_org_table_and_progress(runs: Runs) -> None:
    outputs = runs.first_metadata
    batch_steps = sorted(step for step in outputs if step.startswith("sync_org_batch["))
    assert len(batch_steps) == ORGS // BATCH
    for index, step in enumerate(batch_steps):
        batch = SLUGS[index * BATCH : (index + 1) * BATCH]
        metadata = outputs[step]
        assert (metadata["synced_count"], metadata["failed_count"]) == (BATCH, 0)
        assert metadata["failed_orgs"] == []
        lines = metadata["orgs"].splitlines()
        assert lines[:2] == ["| org | result |", "|---|---|"]
        rows = [TABLE_ROW.match(line) for line in lines[2:]]
        assert all(rows), metadata["orgs"]
        assert [(m["org"], m["result"]) for m in rows] == [  # type: ignore[index]
            (slug, f"synced {DATASETS_PER_SYNC} dataset(s)") for slug in batch
        ]
    summary = outputs["summarize_org_sync"]
    assert summary == {
        "orgs_synced": ORGS,
        "orgs_skipped": 0,
        "datasets_synced": ORGS * DATASETS_PER_SYNC,
    }

    messages = [e.user_message for e in runs.first_events]
    assert f"{ORGS} active org(s) in {ORGS // BATCH} batch(es)" in messages
    for index in range(1, ORGS // BATCH + 1):
        label = f"org sync batch {index} ({(index - 1) * BATCH + 1}-{index * BATCH} of {ORGS}): "
        done = [int(m[len(label) :].split("/")[0]) for m in messages if m and m.startswith(label)]
        # Throttled lines, counting up, the last always logged: 250/250.
        assert done and done == sorted(set(done)) and done[-1] == BATCH, (label, done)
        assert f"{label}{BATCH}/{BATCH} (100%)" in " ".join(messages)


def test_re_executing_the_whole_run_replays_every_key_and_applies_nothing_twice(
    runs: Runs,
) -> None:
    first_id = runs.first.run_id
    assert runs.second.parent_run_id == runs.second.root_run_id == first_id
    keys = [f"org-sync:{first_id}:{slug}" for slug in SLUGS]
    first_posts, second_posts = _sync_posts(runs.first_requests), _sync_posts(runs.second_requests)
    assert sorted({r["idempotency_key"] for r in first_posts}) == keys
    # The re-execution sends every org again with the root run's key, not its own run id ...
    assert sorted({r["idempotency_key"] for r in second_posts}) == keys
    assert {r["status"] for r in second_posts} == {200}
    assert {r["replayed"] for r in second_posts} == {True}
    # ... and the sandbox replays them: still one apply per org, one stored key per org.
    state = runs.sandbox.state()
    assert sum(o["syncs"] for o in state["orgs"].values()) == ORGS
    assert Counter(o["syncs"] for o in state["orgs"].values()) == {1: ORGS}
    assert state["idempotency_keys"] == ORGS
