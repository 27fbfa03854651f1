"""`platform-ops release unlock ENV`: the runbook's way to free an environment whose release died
on another machine (its process cannot be checked from here), through the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import dagster as dg

from orchestration.release import guard
from resources.db import make_engine
from resources.record_store import ensure_upgraded
from tests.job_cli import REPO, dagster_home, instance_at, job_env
from tests.support.wait import wait_until

CLI = [sys.executable, "-m", "orchestration.cli", "release", "unlock"]


def _unlock(home, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], cwd=REPO, env=job_env(home), capture_output=True, text=True, timeout=120
    )


def test_unlock_frees_a_foreign_holder_and_cancels_its_run(tmp_path, store_url):
    home = dagster_home(tmp_path)
    ensure_upgraded(store_url)
    engine = make_engine(store_url)
    run_id = str(uuid.uuid4())
    with instance_at(home) as instance:
        instance.add_run(
            dg.DagsterRun(job_name="release", run_id=run_id, status=dg.DagsterRunStatus.STARTED)
        )
        # Held from another machine: the next release cannot tell it is dead, so it refuses.
        foreign = f"{uuid.uuid4()}:1:1:1"
        guard.acquire_release_lock(
            engine, instance, "stage", run_id, "release", holder_process=foreign
        )
        other = str(uuid.uuid4())
        instance.add_run(
            dg.DagsterRun(job_name="release", run_id=other, status=dg.DagsterRunStatus.STARTED)
        )
        try:
            guard.acquire_release_lock(engine, instance, "stage", other, "release")
            raise AssertionError("a live foreign holder must block")
        except guard.ConcurrentReleaseError:
            pass

    # Its process cannot be checked from here: refused without --force, nothing changed.
    refused = _unlock(home, "stage", "--store-url", store_url)
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused.stderr
    assert run_id in refused.stderr and "another machine" in refused.stderr
    assert "--force" in refused.stderr and "Traceback" not in refused.stderr
    assert guard.read_holder(engine, "stage").run_id == run_id

    done = _unlock(home, "stage", "--store-url", store_url, "--force")
    assert done.returncode == 0, done.stderr
    assert run_id in done.stdout and "canceled" in done.stdout
    assert guard.read_holder(engine, "stage") is None
    with instance_at(home) as instance:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.CANCELED

    again = _unlock(home, "stage", "--store-url", store_url)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_unlock_of_an_unknown_environment_is_one_line(tmp_path, sqlite_store_url):
    result = _unlock(dagster_home(tmp_path), "../prod", "--store-url", sqlite_store_url)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "unknown environment" in result.stderr
    assert "Traceback" not in result.stderr


def test_unlock_refuses_a_release_running_on_this_machine(platform_env, store_url, tmp_path):
    """A real release holds the environment mid-run: unlock (with or without --force) is one
    line naming its pid and run id, changes nothing, and the release finishes. Before the fix it
    marked the run canceled and freed the environment, and a second release ran beside it."""
    from tests.release.test_release_lock import (
        _config_file,
        _start_release,
        _stop_outside_a_transaction,
    )

    home = dagster_home(tmp_path)
    engine = make_engine(store_url)
    platform_env.set_latency(300)
    release = _start_release(home, _config_file(tmp_path, store_url))
    try:
        holder = wait_until(
            lambda: guard.read_holder(engine, "test"),
            timeout=90,
            what="the release's lock",
            alive=lambda: release.poll() is None,
        )
        # Stopped (SIGSTOP) it is still alive, and stays mid-run however slow the unlocks are.
        _stop_outside_a_transaction(release, home, engine)
        for extra in ((), ("--force",)):
            refused = _unlock(home, "test", "--store-url", store_url, *extra)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            line = refused.stderr.strip()
            assert line.count("\n") == 0 and "Traceback" not in line
            assert holder.run_id in line and f"process {release.pid} " in line
            assert "Terminate" in line and "nothing was changed" in line
            assert guard.read_holder(engine, "test") == holder
        with instance_at(home) as instance:
            assert instance.get_run_by_id(holder.run_id).status == dg.DagsterRunStatus.STARTED
    finally:
        os.kill(release.pid, signal.SIGCONT)
        platform_env.set_latency(0)
        output = release.communicate(timeout=180)[0]
    assert release.returncode == 0, output[-3000:]
    assert guard.read_holder(engine, "test") is None
