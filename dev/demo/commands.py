"""The README demo's commands part: sync the example catalog, run a command through Dagster, let
the dispatcher launch a queued one, and print what the record store holds.

``dev/demo/__init__.py`` calls ``demo(env, workdir)``; ``env`` is the process
environment for subprocesses (with ``DAGSTER_HOME``), ``workdir`` a directory to keep state in.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO / "config" / "commands.example.yaml"


def _dagster_execute(job: str, config: dict, env: dict[str, str], workdir: Path) -> int:
    path = workdir / f"{job}.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "dagster", "job", "execute", "-m", "orchestration.definitions",
           "-j", job, "-c", str(path)]  # fmt: skip
    with open(workdir / f"{job}.log", "wb") as log:
        return subprocess.call(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def demo(env: dict[str, str], workdir: Path) -> list[str]:
    import dagster as dg

    from orchestration.commands import catalog, store
    from orchestration.commands.cli import main as cli
    from orchestration.commands.sensors import command_dispatch_sensor
    from resources.record_store import RecordStoreResource, make_engine, upgrade

    workdir.mkdir(parents=True, exist_ok=True)
    url = env.get("RECORD_STORE_URL") or f"sqlite:///{workdir / 'commands_store.sqlite'}"
    env = {**env, "RECORD_STORE_URL": url, "EXAMPLE_PROD_TOKEN": "demo-prod-token-not-real"}
    upgrade(url)
    engine = make_engine(url)
    lines: list[str] = []
    os.environ.setdefault("EXAMPLE_PROD_TOKEN", env["EXAMPLE_PROD_TOKEN"])
    result = catalog.sync_file(engine, CATALOG)
    lines.append(f"catalog {CATALOG.name}: {result.summary()}")

    config = {
        "ops": {"request_command_run": {"config": {"command": "hello", "environment": "staging"}}}
    }
    code = _dagster_execute("run_command_now", config, env, workdir)
    latest = store.list_runs(engine, store.RunFilter(command="hello", limit=1))
    if latest:
        run = latest[0]
        tail = store.events_for(engine, run["id"])[-1]["stdout_tail"] or ""
        lines.append(
            f"run_command_now (exit {code}): command run {run['id']} {run['status']} "
            f"in {run['duration_seconds']}s; stdout: {tail.strip()!r}"
        )

    buf = io.StringIO()
    with contextlib.redirect_stderr(io.StringIO()):
        cli(["--store-url", url, "run", "disk-report", "--env", "staging"], out=buf)
    queued_id = int(buf.getvalue().strip())
    lines.append(f"CLI run disk-report --env staging: command run {queued_id} pending")

    home = env.get("DAGSTER_HOME")
    old_home = os.environ.get("DAGSTER_HOME")
    if home:
        os.environ["DAGSTER_HOME"] = home
    try:
        instance = dg.DagsterInstance.get() if home else dg.DagsterInstance.ephemeral()
        ctx = dg.build_sensor_context(
            instance=instance, resources={"record_store": RecordStoreResource(url=url)}
        )
        tick = command_dispatch_sensor.evaluate_tick(ctx)
    finally:
        if old_home is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = old_home
    lines.append(f"command_dispatch_sensor tick: {len(tick.run_requests)} batch run(s) requested")
    for request in tick.run_requests:
        code = _dagster_execute("run_commands", request.run_config, env, workdir)
        ids = request.run_config["ops"]["plan_command_runs"]["config"]["command_run_ids"]
        for run_id in ids:
            row = store.get_run(engine, run_id)
            lines.append(
                f"  run_commands (exit {code}): command run {run_id} {row['command_name']} "
                f"{row['status']} exit_code={row['exit_code']}"
            )
    lines.append(f"history: python -m orchestration.commands.cli --store-url {url} list-runs")
    engine.dispose()
    return lines


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        for line in demo({**os.environ, "DAGSTER_HOME": str(home)}, Path(tmp)):
            print(line)
