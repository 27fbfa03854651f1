"""The README's demo: real processes, loopback only, results printed from the Dagster instance.

It runs each job with ``dagster job execute`` exactly as an operator would, against the local
sandbox, then reads the run back from ``$DAGSTER_HOME`` and prints each step's outcome. State is
kept under ``.demo/`` so a second demo shows the jobs are idempotent (``--fresh`` forgets it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from dev.local_services import sandbox_env, sandbox_process
from orchestration.cli import REPO, dagster_home, write_home

DEMO_DIR = REPO / ".demo"


@dataclass(frozen=True)
class DemoJob:
    job: str
    config: Path | None = None


PLANNED_CONFIG = DEMO_DIR / "release-planned.yaml"
# Plan -> apply, as the runbook's prod procedure: release runs the config the plan run showed
# (its launchpad_yaml, with the plan id), so the release applies exactly what was planned.
DEMO_JOBS: list[DemoJob] = [
    DemoJob("release_plan", REPO / "config" / "release-test.yaml"),
    DemoJob("release", PLANNED_CONFIG),
]


def _area_demos() -> list[tuple[str, Callable[[dict[str, str], Path], list[str]]]]:
    """Each area's demo: ``demo(env, workdir) -> lines``, run after the release."""
    from dev.demo.commands import demo as commands_demo
    from dev.demo.gateways import demo as gateways_demo
    from dev.demo.maintenance import demo as maintenance_demo
    from dev.demo.triggers import demo as triggers_demo

    return [
        ("Maintenance: a day of schedules (sandbox + BigQuery emulator)", maintenance_demo),
        ("Triggers: seeded alerts, packages, traces", triggers_demo),
        ("Commands: operator commands, run now and dispatched", commands_demo),
        ("Gateways: polling by partition, failover after SIGKILL", gateways_demo),
    ]


# Metadata too large or too raw for the console summary.
_SKIP_KEYS = {
    "orgs",
    "tables_created",
    "applied",
    "columns_added",
    "unknown_applied",
    "summary",
    "launchpad_yaml",
    "plan_target",
}


def _write_planned_config() -> None:
    """The launchpad YAML of the last release_plan run, as the config the release runs with
    (falls back to config/release-test.yaml, without a plan id, if there is none)."""
    import dagster as dg

    instance = dg.DagsterInstance.get()
    text = None
    for run in instance.get_runs(dg.RunsFilter(job_name="release_plan"), limit=1):
        for record in instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.STEP_OUTPUT
        ).records:
            event = record.event_log_entry.dagster_event
            value = event.step_output_data.metadata.get("launchpad_yaml") if event else None
            if value is not None:
                text = str(value.value).split("```yaml\n", 1)[1].split("```", 1)[0]
    fallback = (REPO / "config" / "release-test.yaml").read_text()
    PLANNED_CONFIG.write_text(text or fallback)


def _execute(job: DemoJob, env: dict[str, str]) -> tuple[int, float]:
    cmd = [
        sys.executable, "-m", "dagster", "job", "execute",
        "-m", "orchestration.definitions", "-j", job.job,
    ]  # fmt: skip
    if job.config:
        cmd += ["-c", str(job.config)]
    started = time.monotonic()
    log_path = DEMO_DIR / f"{job.job}.log"
    with open(log_path, "wb") as log:
        code = subprocess.call(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return code, time.monotonic() - started


def _summarize(job_name: str) -> list[str]:
    import dagster as dg

    instance = dg.DagsterInstance.get()
    runs = instance.get_runs(dg.RunsFilter(job_name=job_name), limit=1)
    if not runs:
        return ["  (no run recorded)"]
    run = runs[0]
    lines = [f"  run {run.run_id[:8]}  status {run.status.value}"]
    for record in instance.get_records_for_run(run.run_id).records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        if event.event_type_value == "STEP_OUTPUT":
            md = {
                k: v.value
                for k, v in event.event_specific_data.metadata.items()
                if k not in _SKIP_KEYS
            }
            if md:
                pairs = ", ".join(f"{k}={v}" for k, v in md.items())
                lines.append(f"  {event.step_key}: {pairs}")
        elif event.event_type_value == "STEP_FAILURE":
            message = event.event_specific_data.error.message.strip().splitlines()[0]
            lines.append(f"  {event.step_key}: FAILED {message}")
    return lines


def run_demo(orgs: int = 25, fresh: bool = False) -> int:
    if fresh and DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)
    DEMO_DIR.mkdir(exist_ok=True)
    home = write_home(dagster_home(DEMO_DIR / "dagster_home"), postgres=False)
    os.environ["DAGSTER_HOME"] = str(home)
    failures = 0
    record_store = f"sqlite:///{DEMO_DIR / 'record_store.sqlite'}"
    with sandbox_process(DEMO_DIR / "sandbox", seed_orgs=orgs) as url:
        env = {
            **os.environ,
            **sandbox_env(url),
            "DAGSTER_HOME": str(home),
            "RECORD_STORE_URL": record_store,
        }
        print(f"Local platform sandbox at {url} ({orgs} active orgs); DAGSTER_HOME={home}")
        for job in DEMO_JOBS:
            code, seconds = _execute(job, env)
            verdict = "SUCCESS" if code == 0 else f"FAILED (exit {code})"
            print(
                f"\n{job.job}: {verdict} in {seconds:.1f}s  (log: {DEMO_DIR / (job.job + '.log')})"
            )
            for line in _summarize(job.job):
                print(line)
            failures += code != 0
            if job.job == "release_plan":
                _write_planned_config()
                print(f"  plan -> {PLANNED_CONFIG} (the release below applies this plan id)")
        for title, area_demo in _area_demos():
            print(f"\n== {title}")
            try:
                for line in area_demo(env, DEMO_DIR / title.split(":")[0].lower()):
                    print(line)
                    failures += "FAILED" in line
            except Exception as exc:  # one area's demo failing must not hide the others
                print(f"  FAILED: {type(exc).__name__}: {exc}")
                failures += 1
        state = httpx.get(f"{url}/_sandbox/state", timeout=10).json()
        synced = sum(1 for o in state.get("orgs", {}).values() if o.get("syncs"))
        print(f"\nSandbox now: {synced}/{len(state.get('orgs', {}))} orgs synced at least once")
    print(
        f"\nSee it in the UI: DAGSTER_HOME={home} RECORD_STORE_URL={record_store} "
        ".venv/bin/dagster dev -w workspace.yaml   (then open http://127.0.0.1:3000/runs)"
    )
    return 1 if failures else 0
