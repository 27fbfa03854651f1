"""The run queue as shipped: the project's instance files, a real ``dagster-daemon`` dequeuing.

The queued coordinator copies the run's environment into tags, and the instance files' tag limits
read them: one release per environment at a time, at most N runs per trigger queue. The daemon
test loads ``dagster.yaml`` (SQLite) and ``dagster.postgres.yaml`` (PostgreSQL, a fresh database)
exactly as ``platform-ops home [--postgres]`` installs them, and runs one ``dagster-daemon`` per
file against ``tests/release/queue_location.py`` (the real ``release`` job plus a gate job that
stays in progress until the test opens its gate). Every wait is for an event.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from orchestration.definitions import defs
from orchestration.tags import ENVIRONMENT_TAG, RELEASE_ENVIRONMENT_TAG
from orchestration.triggers.catalog import ESCALATE_ALERTS
from orchestration.triggers.runs import QUEUE_TAG
from orchestration.triggers.runs import run_tags as trigger_run_tags
from tests.conftest import TEST_API_KEY, TEST_SUPABASE_TOKEN, run_config
from tests.daemon import REPO, Daemon, make_home, write_workspace
from tests.release import queue_location
from tests.support.postgres import fresh_database
from tests.support.runs import SHIPPED_COORDINATOR, job_origin, queued_run

INSTANCE_FILES = ("dagster.yaml", "dagster.postgres.yaml", "deploy/dagster.yaml")
LOCATION = "queue_test"
MODULE = "tests.release.queue_location"
TIMEOUT = 180  # daemon start, a code server, run workers: generous for a loaded 2-core machine
Status = dg.DagsterRunStatus
IN_PROGRESS = (Status.STARTING, Status.STARTED)


def _coordinator(path: str) -> dict:
    return yaml.safe_load((REPO / path).read_text())["run_coordinator"]


def _tag_limit(key: str) -> int:
    (limit,) = [
        entry["limit"]
        for entry in _coordinator("dagster.yaml")["config"]["tag_concurrency_limits"]
        if entry["key"] == key and entry["value"] == {"applyLimitPerUniqueValue": True}
    ]
    return int(limit)


def _submit(instance, job_name, environment=None):
    job = defs.get_job_def(job_name)
    config = (
        {"resources": {"environment": {"config": {"name": environment}}}} if environment else {}
    )
    return queued_run(instance, job, config)


def test_the_instance_files_queue_alike() -> None:
    """The daemon test runs the first two; production's file must queue the same way."""
    first, *others = (_coordinator(path) for path in INSTANCE_FILES)
    assert first["class"] == "EnvironmentTaggingRunCoordinator"
    assert first["module"] == "orchestration.run_coordinator"
    # The suite's queued test instances (tests.support.runs) use this coordinator too.
    assert {"module": first["module"], "class": first["class"]} == SHIPPED_COORDINATOR
    for path, other in zip(INSTANCE_FILES[1:], others, strict=True):
        assert other == first, path
    assert _tag_limit(RELEASE_ENVIRONMENT_TAG) == 1
    assert _tag_limit(QUEUE_TAG) >= 1


def test_release_runs_get_environment_tags_and_queue(tmp_path, monkeypatch):
    home = make_home(tmp_path / "home", postgres=False)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        stage = _submit(instance, "release", "stage")
        default = _submit(instance, "release")
        other = _submit(instance, "bootstrap", "prod")
    assert stage.status == Status.QUEUED
    assert stage.tags[ENVIRONMENT_TAG] == "stage"
    assert stage.tags[RELEASE_ENVIRONMENT_TAG] == "stage"
    assert default.tags[RELEASE_ENVIRONMENT_TAG] == "test"
    # Only release runs are limited; every run can be filtered by environment.
    assert other.tags[ENVIRONMENT_TAG] == "prod"
    assert RELEASE_ENVIRONMENT_TAG not in other.tags


@pytest.fixture
def dagster_pg_url(pg_url: str) -> Iterator[str]:
    """A fresh database for Dagster's PostgreSQL storage, dropped (connections and all) after."""
    with fresh_database(pg_url, "dagster_queue") as url:
        yield url


class Queue:
    """Submits runs of ``queue_location`` to the instance the daemon serves; reads them back."""

    def __init__(self, instance: dg.DagsterInstance, gates: Path) -> None:
        self.instance = instance
        self.gates = gates
        gates.mkdir()

    def submit(self, job_name: str, config: dict, tags: dict[str, str]) -> str:
        job = queue_location.defs.get_job_def(job_name)
        return queued_run(
            self.instance, job, config, tags, origin=job_origin(job_name, LOCATION, MODULE)
        ).run_id

    def gate(self, name: str, tags: dict[str, str], environment: str = "test") -> str:
        config = {
            "ops": {"wait_for_gate": {"config": {"path": str(self.gates / name)}}},
            "resources": {"environment": {"config": {"name": environment}}},
        }
        return self.submit(queue_location.GATE_JOB, config, tags)

    def open(self, name: str) -> None:
        (self.gates / name).touch()

    def status(self, run_id: str) -> Status:
        return self.instance.get_run_by_id(run_id).status

    def statuses(self, run_ids: list[str]) -> list[Status]:
        return [self.status(run_id) for run_id in run_ids]

    def record(self, run_id: str):
        return self.instance.get_run_record_by_id(run_id)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "storage", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_the_shipped_queue_holds_a_second_release_and_limits_a_trigger_queue(
    storage, request, sandbox, sqlite_store_url, tmp_path, monkeypatch
):
    postgres = storage == "postgres"
    if postgres:
        monkeypatch.setenv("DAGSTER_PG_URL", request.getfixturevalue("dagster_pg_url"))
    home = make_home(tmp_path / "dagster_home", postgres=postgres)  # the repo's file, as shipped
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    workspace = write_workspace(tmp_path / "workspace.yaml", MODULE, LOCATION)
    per_queue = _tag_limit(QUEUE_TAG)
    env = {
        "DAGSTER_HOME": str(home),
        "RECORD_STORE_URL": sqlite_store_url,
        "CA_API_URL": sandbox.base_url,
        "CA_ROOT_API_KEY": TEST_API_KEY,
        "SUPABASE_ACCESS_TOKEN": TEST_SUPABASE_TOKEN,
        # Stage names its Supabase project and API (test defaults to the sandbox for both).
        "SUPABASE_API_URL": sandbox.base_url,
        "SUPABASE_PROJECT_REF": "sandbox",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    with (
        dg.DagsterInstance.get() as instance,
        Daemon(workspace, env, tmp_path / "daemon.log") as daemon,
    ):
        kind = "Postgres" if postgres else "Sqlite"
        assert type(instance.run_storage).__name__.startswith(kind)
        queue = Queue(instance, tmp_path / "gates")
        # A release of "test" in progress until its gate opens, and N+1 runs of one trigger queue.
        first = queue.gate("release", {"platform/kind": "release"})
        trigger_tags = trigger_run_tags(ESCALATE_ALERTS)
        workers = [queue.gate(f"worker-{n}", trigger_tags) for n in range(per_queue + 1)]
        daemon.wait_for(
            lambda: (
                queue.status(first) == Status.STARTED
                and queue.statuses(workers).count(Status.STARTED) >= per_queue
            ),
            TIMEOUT,
            what=f"the gated release and {per_queue} trigger workers started",
        )

        # A second release of "test" (the real job) and one of "stage", submitted after them.
        held = queue.submit("release", run_config(), {})
        other = queue.submit("release", run_config("stage"), {})
        daemon.wait_for(
            lambda: queue.status(other) in (Status.SUCCESS, Status.FAILURE),
            TIMEOUT,
            what="the stage release to finish",
        )
        # The daemon launched a run queued after them, so it passed over these on purpose.
        assert queue.status(other) == Status.SUCCESS, daemon.log_tail()
        assert queue.status(held) == Status.QUEUED
        assert instance.get_run_by_id(held).tags[RELEASE_ENVIRONMENT_TAG] == "test"
        assert queue.status(first) == Status.STARTED
        worker_statuses = queue.statuses(workers)
        assert worker_statuses.count(Status.STARTED) == per_queue, worker_statuses
        assert worker_statuses.count(Status.QUEUED) == 1, worker_statuses

        # The first release ends: the held one starts after it, and succeeds.
        queue.open("release")
        daemon.wait_for(
            lambda: queue.status(held) in (Status.SUCCESS, Status.FAILURE),
            TIMEOUT,
            what="the held release to finish",
        )
        assert queue.status(held) == Status.SUCCESS, daemon.log_tail()
        assert queue.status(first) == Status.SUCCESS
        assert queue.record(held).start_time >= queue.record(first).end_time

        # The workers end: the queued one starts only once another has finished.
        for n in range(per_queue + 1):
            queue.open(f"worker-{n}")
        daemon.wait_for(
            lambda: all(s == Status.SUCCESS for s in queue.statuses(workers)),
            TIMEOUT,
            what="every trigger worker to succeed",
        )
        records = [queue.record(run_id) for run_id in workers]
        for record in records:
            running = [r for r in records if r.start_time <= record.start_time < r.end_time]
            assert len(running) <= per_queue, [(r.start_time, r.end_time) for r in records]
        last = max(records, key=lambda r: r.start_time)
        assert last.start_time >= min(r.end_time for r in records if r is not last)
