"""One release per environment, even under races and kills (issue #14, class 7).

The environment is taken with one INSERT ... ON CONFLICT DO NOTHING in the record store (SQLite
and PostgreSQL), held by run id, taken over by compare-and-set only from a holder whose run has
ended or whose process is gone. End to end with real `dagster job execute` processes, SIGSTOP,
SIGCONT and SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import dagster as dg
import pytest
import yaml

from orchestration.release import guard
from resources.db import make_engine
from resources.record_store import ensure_upgraded
from tests.conftest import run_config
from tests.job_cli import REPO, dagster_home, instance_at, job_env, job_execute_cmd
from tests.support.wait import wait_until

ENV = "test"


def _started_run(instance, environment=ENV) -> str:
    run_id = str(uuid.uuid4())
    instance.add_run(
        dg.DagsterRun(
            job_name="release",
            run_id=run_id,
            status=dg.DagsterRunStatus.STARTED,
            tags={"platform/environment": environment, "platform/kind": "release"},
        )
    )
    return run_id


def test_acquire_is_atomic_across_threads(store_url):
    """Many runs, all alive, take one environment at the same instant: exactly one wins."""
    engine = make_engine(store_url)
    with dg.instance_for_test() as instance:
        runs = [_started_run(instance) for _ in range(16)]
        barrier = threading.Barrier(len(runs))
        won, lost = [], []

        def take(run_id):
            barrier.wait()
            try:
                guard.acquire_release_lock(engine, instance, ENV, run_id, "release")
                won.append(run_id)
            except guard.ConcurrentReleaseError as exc:
                lost.append(str(exc))

        threads = [threading.Thread(target=take, args=(r,)) for r in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(won) == 1 and len(lost) == len(runs) - 1
        assert all(won[0] in message and "nothing was sent" in message for message in lost)
        assert guard.read_holder(engine, ENV).run_id == won[0]


# Each process signals it is ready (imported, connected) and starts its acquire when the test
# creates the go file: all contend at once however long start-up takes on a loaded machine.
ACQUIRE_SCRIPT = """
import sys, time
from pathlib import Path
from orchestration.release import guard
from resources.db import make_engine
from resources.record_store import ensure_upgraded
from tests.job_cli import instance_at
home, url, run_id, gate = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
engine = make_engine(url)
with instance_at(home) as instance, engine.connect():
    (gate / f"ready-{run_id}").touch()
    deadline = time.monotonic() + 300
    while not (gate / "go").exists():
        if time.monotonic() > deadline:
            sys.exit("no go file")
        time.sleep(0.002)
    try:
        guard.acquire_release_lock(engine, instance, "test", run_id, "release")
        print("WON", run_id)
    except guard.ConcurrentReleaseError as exc:
        print("LOST", exc)
"""


def test_acquire_is_atomic_across_processes(store_url, tmp_path):
    home = dagster_home(tmp_path)
    with instance_at(home) as instance:
        runs = [_started_run(instance) for _ in range(6)]
    gate = tmp_path / "gate"
    gate.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ACQUIRE_SCRIPT, str(home), store_url, run_id, str(gate)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for run_id in runs
    ]
    wait_until(
        lambda: all((gate / f"ready-{run_id}").exists() for run_id in runs),
        timeout=180,
        what="every contender ready",
        alive=lambda: all(p.poll() is None for p in procs),
    )
    (gate / "go").touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    lines = [out.strip().splitlines()[-1] if out.strip() else err[-500:] for out, err in outputs]
    winners = [line.split()[1] for line in lines if line.startswith("WON")]
    assert len(winners) == 1, lines
    assert all(
        line.startswith("LOST") and winners[0] in line for line in lines if "WON" not in line
    )


@pytest.mark.parametrize("ended", ["FAILURE", "SUCCESS", "CANCELED", "missing"])
def test_an_ended_holder_is_taken_over_once(store_url, ended):
    engine = make_engine(store_url)
    with dg.instance_for_test() as instance:
        old = _started_run(instance)
        guard.acquire_release_lock(engine, instance, ENV, old, "release")
        if ended == "missing":
            instance.delete_run(old)
        else:
            run = instance.get_run_by_id(old)
            instance.handle_new_event(
                dg.EventLogEntry(
                    error_info=None,
                    level="INFO",
                    user_message="",
                    run_id=old,
                    timestamp=time.time(),
                    dagster_event=dg.DagsterEvent(
                        event_type_value={
                            "FAILURE": "PIPELINE_FAILURE",
                            "SUCCESS": "PIPELINE_SUCCESS",
                            "CANCELED": "PIPELINE_CANCELED",
                        }[ended],
                        job_name=run.job_name,
                    ),
                )
            )
            assert instance.get_run_by_id(old).is_finished
        runs = [_started_run(instance) for _ in range(8)]
        barrier = threading.Barrier(len(runs))
        won, logs = [], []

        def take(run_id):
            barrier.wait()
            try:
                guard.acquire_release_lock(engine, instance, ENV, run_id, "release", logs.append)
                won.append(run_id)
            except guard.ConcurrentReleaseError:
                pass

        threads = [threading.Thread(target=take, args=(r,)) for r in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(won) == 1
        assert len(logs) == 1 and old in logs[0]
        assert guard.read_holder(engine, ENV).run_id == won[0]


def test_free_never_frees_another_runs_lock_and_unlock(store_url):
    engine = make_engine(store_url)
    with dg.instance_for_test() as instance:
        holder = _started_run(instance)
        guard.acquire_release_lock(engine, instance, ENV, holder, "release")
        assert not guard.release_release_lock(engine, ENV, str(uuid.uuid4()))
        assert guard.read_holder(engine, ENV).run_id == holder
        # A holder on another machine (or in another container): its process cannot be checked.
        foreign = f"{uuid.uuid4()}:1:{os.getpid()}:1"
        other = _started_run(instance, "stage")
        guard.acquire_release_lock(
            engine, instance, "stage", other, "release", holder_process=foreign
        )
        with pytest.raises(guard.ConcurrentReleaseError, match=other):
            guard.acquire_release_lock(engine, instance, "stage", _started_run(instance), "release")
        # No process identity recorded: it cannot be checked, so unlocking it needs force.
        with pytest.raises(guard.UnlockRefused, match="--force"):
            guard.unlock_release(engine, instance, ENV)
        line = guard.unlock_release(engine, instance, ENV, force=True)
        assert holder in line and "marked run" in line and "canceled" in line
        assert instance.get_run_by_id(holder).status == dg.DagsterRunStatus.CANCELED
        assert guard.read_holder(engine, ENV) is None
        assert "nothing to do" in guard.unlock_release(engine, instance, ENV)


# -- end to end: real `dagster job execute` processes -------------------------------------------


def _config_file(tmp_path, store_url):
    config = run_config()
    config["resources"]["record_store"] = {"config": {"url": store_url}}
    path = tmp_path / "release.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _start_release(home, config):
    return subprocess.Popen(
        job_execute_cmd("release", config),
        cwd=REPO,
        env=job_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _runs(home):
    with instance_at(home) as instance:
        return instance.get_runs(dg.RunsFilter(job_name="release"))


def _steps(home, run_id):
    with instance_at(home) as instance:
        records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_START)
        return [r.event_log_entry.dagster_event.step_key for r in records.records]


def _keys(sandbox):
    return [r["idempotency_key"] for r in sandbox.requests if r["idempotency_key"]]


def test_two_concurrent_releases_exactly_one_proceeds(platform_env, store_url, tmp_path):
    """A is stopped (SIGSTOP) as soon as its run is STARTED, before its guard; B releases
    (slowly); A resumes while B runs. Before the fix both succeeded: A was not yet tagged when
    B looked, and B started after A."""
    home = dagster_home(tmp_path)
    config = _config_file(tmp_path, store_url)
    # The store exists (as in any deployment): A, stopped anywhere in its start-up, then holds
    # no upgrade lock that B would wait on.
    ensure_upgraded(store_url)
    engine = make_engine(store_url)
    platform_env.set_latency(250)  # B's release takes several seconds
    first = _start_release(home, config)
    a_run = wait_until(
        lambda: next((r for r in _runs(home) if r.status == dg.DagsterRunStatus.STARTED), None),
        timeout=90,
        what="A's run to start",
        interval=0.02,  # stop A early in its start-up, ideally before its guard
        alive=lambda: first.poll() is None,
    )
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = _start_release(home, config)
        # Resume A once B holds the environment (or B has already ended).
        wait_until(
            lambda: (
                second.poll() is not None
                or ((h := guard.read_holder(engine, ENV)) is not None and h.run_id != a_run.run_id)
            ),
            timeout=90,
            what="B to take the environment",
            interval=0.02,
        )
    finally:
        os.kill(first.pid, signal.SIGCONT)
    outputs = {"A": first.communicate(timeout=180)[0], "B": second.communicate(timeout=180)[0]}
    codes = {"A": first.returncode, "B": second.returncode}
    assert sorted(codes.values())[0] == 0 and sorted(codes.values())[1] != 0, codes
    loser = "A" if codes["A"] else "B"
    runs = {r.run_id: r for r in _runs(home)}
    assert len(runs) == 2
    winner_id = next(i for i, r in runs.items() if r.status == dg.DagsterRunStatus.SUCCESS)
    loser_id = next(i for i in runs if i != winner_id)
    assert "Another release for environment 'test' is running" in outputs[loser]
    assert winner_id in outputs[loser]
    assert _steps(home, loser_id) == ["release_preflight", "claim_environment"]
    keys = _keys(platform_env)
    assert keys and all(loser_id not in k for k in keys)  # the loser sent nothing
    assert guard.read_holder(engine, ENV) is None  # the winner freed it


def test_a_killed_release_does_not_block_the_next(platform_env, store_url, tmp_path):
    """SIGKILL while holding the environment: its run stays STARTED; the next release sees the
    holder's process is gone, marks that run failed and proceeds. Before the fix it was
    refused until someone marked the run."""
    home = dagster_home(tmp_path)
    config = _config_file(tmp_path, store_url)
    engine = make_engine(store_url)
    platform_env.set_latency(300)
    first = _start_release(home, config)
    holder = wait_until(
        lambda: guard.read_holder(engine, ENV),
        timeout=90,
        what="the first release's lock",
        alive=lambda: first.poll() is None,
    )
    assert holder.holder_process and holder.holder_process.split(":")[2] == str(first.pid)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=30)
    with instance_at(home) as instance:
        assert instance.get_run_by_id(holder.run_id).status == dg.DagsterRunStatus.STARTED
    platform_env.set_latency(0)
    second = _start_release(home, config)
    output = second.communicate(timeout=180)[0]
    assert second.returncode == 0, output[-3000:]
    assert f"over from release run {holder.run_id}" in output and "is gone" in output
    with instance_at(home) as instance:
        killed = instance.get_run_by_id(holder.run_id)
        assert killed.status == dg.DagsterRunStatus.FAILURE
    assert guard.read_holder(engine, ENV) is None
    assert json.dumps(_keys(platform_env))  # requests were made by the second run


# -- unlock and lost holdership (fix follow-up: unlock freed a live release) --------------------


def _identities() -> dict[str, tuple[str | None, str]]:
    """Every shape of holder identity -> the state unlock must see in it."""
    sleeper = subprocess.Popen(["sleep", "60"])
    alive = guard.process_identity(sleeper.pid)
    dead = subprocess.Popen(["true"])
    dead.wait()
    boot, namespace, pid, start = alive.split(":")
    return {
        "alive": (alive, guard.ALIVE),
        "this process": (guard.process_identity(), guard.ALIVE),
        "pid gone": (f"{boot}:{namespace}:{dead.pid}:1", guard.GONE),
        "pid reused": (f"{boot}:{namespace}:{pid}:{int(start) + 1}", guard.GONE),
        "other boot": (f"{uuid.uuid4()}:{namespace}:{pid}:{start}", guard.UNKNOWN),
        "other pid namespace": (f"{boot}:1:{pid}:{start}", guard.UNKNOWN),
        "none recorded": (None, guard.UNKNOWN),
        "empty": ("", guard.UNKNOWN),
        "malformed": ("a:b", guard.UNKNOWN),
        "pid not a number": (f"{boot}:{namespace}:x1:{start}", guard.UNKNOWN),
    }, sleeper


def test_unlock_frees_only_a_holder_known_gone_or_forced(store_url):
    """Each identity shape: alive here -> refused even with force, nothing changed; gone ->
    freed; cannot be checked -> refused naming --force, freed with it. Before the fix every one
    was freed (a live release too)."""
    engine = make_engine(store_url)
    identities, sleeper = _identities()
    try:
        with dg.instance_for_test() as instance:
            for label, (identity, state) in identities.items():
                assert guard.process_state(identity) == state, label
                holder = _started_run(instance)
                guard.acquire_release_lock(
                    engine, instance, ENV, holder, "release", holder_process=identity
                )
                forced = (False, True) if state != guard.GONE else (False,)
                for force in forced:
                    if state == guard.GONE or (force and state == guard.UNKNOWN):
                        line = guard.unlock_release(engine, instance, ENV, force=force)
                        assert holder in line and "canceled" in line, label
                        assert guard.read_holder(engine, ENV) is None, label
                        break
                    with pytest.raises(guard.UnlockRefused) as refused:
                        guard.unlock_release(engine, instance, ENV, force=force)
                    message = str(refused.value)
                    assert holder in message and "nothing was changed" in message, label
                    if state == guard.ALIVE:
                        assert identity.split(":")[2] in message and "Terminate" in message
                    else:
                        assert "another machine" in message and "--force" in message, label
                    assert guard.read_holder(engine, ENV).run_id == holder, label
                    run = instance.get_run_by_id(holder)
                    assert run.status == dg.DagsterRunStatus.STARTED, label
                if state == guard.ALIVE:  # marked ended while its process runs: still refused
                    instance.report_run_canceled(instance.get_run_by_id(holder))
                    with pytest.raises(guard.UnlockRefused, match="still running"):
                        guard.unlock_release(engine, instance, ENV, force=True)
                    assert guard.release_release_lock(engine, ENV, holder)
                assert guard.read_holder(engine, ENV) is None, label
    finally:
        sleeper.kill()
        sleeper.wait()


def test_ensure_held_stops_a_run_whose_environment_was_taken(store_url):
    engine = make_engine(store_url)
    with dg.instance_for_test() as instance:
        mine, other = _started_run(instance), _started_run(instance)
        guard.ensure_held(str(uuid.uuid4()), "run_bootstrap")  # never claimed here: no check
        guard.acquire_release_lock(engine, instance, ENV, mine, "release")
        guard.ensure_held(mine, "run_bootstrap")
        guard.unlock_release(engine, instance, ENV, force=True)
        with pytest.raises(guard.EnvironmentLostError, match="'run_bootstrap' stopped"):
            guard.ensure_held(mine, "run_bootstrap")
        guard.acquire_release_lock(engine, instance, ENV, other, "release")
        with pytest.raises(guard.EnvironmentLostError, match=f"run {other} holds it now"):
            guard.ensure_held(mine, "plan_org_batches")
        guard.ensure_held(other, "plan_org_batches")
        assert guard.release_release_lock(engine, ENV, other)
        guard.ensure_held(other, "plan_org_batches")  # freed by itself: forgotten, no check


def _stop_outside_a_transaction(proc: subprocess.Popen, home, engine) -> None:
    """SIGSTOP ``proc`` at a moment it holds no SQLite lock (the record store's, the Dagster
    instance's): stopped inside a write, it would block the unlock's writes for good."""
    import sqlite3

    def stopped_outside() -> bool:
        os.kill(proc.pid, signal.SIGSTOP)
        files = [*home.rglob("*.db")]
        if engine.dialect.name == "sqlite":
            files.append(engine.url.database)
        try:
            for path in files:
                probe = sqlite3.connect(path, timeout=0.05, isolation_level=None)
                try:
                    probe.execute("BEGIN EXCLUSIVE")
                    probe.execute("ROLLBACK")
                finally:
                    probe.close()
        except sqlite3.OperationalError:
            os.kill(proc.pid, signal.SIGCONT)
            return False
        return True

    # Bounded by time, not by a number of tries (a loaded machine makes each try slower).
    wait_until(
        stopped_outside,
        timeout=120,
        what="the release stopped outside its SQLite transactions",
        interval=0.005,
        alive=lambda: proc.poll() is None,
    )


def test_a_release_unlocked_while_running_stops_before_its_next_step(
    platform_env, store_url, tmp_path
):
    """A holds the environment, its holder row is made foreign (as from another machine) and
    `platform-ops release unlock test --force` frees it while A is stopped. Resumed, A fails at
    its next step sending nothing; B then releases alone. Before the fix A went on and succeeded
    beside B."""
    home = dagster_home(tmp_path)
    config = _config_file(tmp_path, store_url)
    engine = make_engine(store_url)
    platform_env.set_latency(200)
    first = _start_release(home, config)
    holder = wait_until(
        lambda: guard.read_holder(engine, ENV),
        timeout=90,
        what="A's lock",
        alive=lambda: first.poll() is None,
    )
    _stop_outside_a_transaction(first, home, engine)
    try:
        with engine.begin() as conn:
            conn.execute(
                guard.RELEASE_LOCKS.update().values(holder_process=f"{uuid.uuid4()}:1:1:1")
            )
        unlock = subprocess.run(
            [sys.executable, "-m", "orchestration.cli", "release", "unlock", ENV, "--force"],
            cwd=REPO, env=job_env(home, {"RECORD_STORE_URL": store_url}),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert unlock.returncode == 0 and holder.run_id in unlock.stdout, unlock.stderr
    finally:
        os.kill(first.pid, signal.SIGCONT)
    output = first.communicate(timeout=180)[0]
    assert first.returncode != 0, output[-3000:]
    assert f"This release no longer holds environment '{ENV}'" in output
    steps = _steps(home, holder.run_id)
    # A stops at the first step that starts after the unlock: nothing of that step is sent.
    assert steps[-1] in ("apply_migrations", "run_bootstrap"), steps
    if steps[-1] == "apply_migrations":
        assert all(holder.run_id not in k for k in _keys(platform_env))
    assert not [
        k
        for k in _keys(platform_env)
        if k.startswith((f"bootstrap:{holder.run_id}", f"org-sync:{holder.run_id}"))
    ]
    platform_env.set_latency(0)
    second = _start_release(home, config)
    assert second.communicate(timeout=180)[0] and second.returncode == 0
    assert guard.read_holder(engine, ENV) is None
