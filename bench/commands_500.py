"""500 due trivial commands (``true``) in one minute: all started within 60 s of their slot.

    .venv/bin/python bench/commands_500.py [--commands 500] [--subprocess]

Seeds 500 every-minute schedules, evaluates the real dispatch sensor on a real (SQLite) Dagster
instance at the start of a minute, then executes the batch run(s) it requested — in process by
default, or with ``--subprocess`` through ``dagster job execute`` as a launched run would (adds the
run-worker start-up). Reports each command's start relative to its slot, from the record store.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dagster as dg  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from orchestration.commands import catalog  # noqa: E402
from orchestration.commands import models as m  # noqa: E402
from orchestration.commands.jobs import run_commands_job  # noqa: E402
from orchestration.commands.resources import CommandRunnerResource  # noqa: E402
from orchestration.commands.sensors import command_dispatch_sensor  # noqa: E402
from orchestration.commands.timeutil import as_utc, utcnow  # noqa: E402
from resources.record_store import RecordStoreResource, make_engine, upgrade  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commands", type=int, default=500)
    parser.add_argument("--subprocess", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/store.sqlite"
        upgrade(url)
        engine = make_engine(url)
        catalog.apply(engine, catalog.parse_catalog({
            "environments": [{"name": "bench", "variables": {"A": "1"}}],
            "commands": [{"name": f"c{i}", "command": "true"} for i in range(args.commands)],
            "schedules": [{"name": f"s{i}", "command": f"c{i}", "environments": ["bench"],
                           "cron": "* * * * *"} for i in range(args.commands)],
        }), prune=True)  # fmt: skip
        # wait for the start of a minute, so the slot is "now"
        time.sleep(60 - utcnow().second - utcnow().microsecond / 1e6 + 0.05)
        os.environ["DAGSTER_HOME"] = tmp
        with dg.instance_for_test(temp_dir=tmp) as instance:
            t0 = time.perf_counter()
            ctx = dg.build_sensor_context(
                instance=instance, resources={"record_store": RecordStoreResource(url=url)}
            )
            tick = command_dispatch_sensor.evaluate_tick(ctx)
            tick_s = time.perf_counter() - t0
            for request in tick.run_requests:
                if args.subprocess:
                    config = Path(tmp) / "run.yaml"
                    config.write_text(yaml.safe_dump(request.run_config))
                    subprocess.run(
                        [sys.executable, "-m", "dagster", "job", "execute", "-m",
                         "orchestration.definitions", "-j", "run_commands", "-c", str(config)],
                        cwd=REPO, env={**os.environ, "RECORD_STORE_URL": url}, check=True,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                else:
                    run_commands_job.execute_in_process(
                        run_config=request.run_config, instance=instance,
                        resources={"record_store": RecordStoreResource(url=url),
                                   "commands_runner": CommandRunnerResource()},
                    )  # fmt: skip
            total_s = time.perf_counter() - t0
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(m.command_runs.c.slot, m.command_runs.c.started_at,
                          m.command_runs.c.status)
            ).all()  # fmt: skip
    lags = sorted((as_utc(r.started_at) - as_utc(r.slot)).total_seconds() for r in rows)
    ok = sum(1 for r in rows if r.status == m.SUCCEEDED)
    within = sum(1 for lag in lags if lag <= 60)
    print(
        f"{len(rows)} command runs ({ok} succeeded) in {len(tick.run_requests)} Dagster run(s); "
        f"sensor tick {tick_s:.2f}s; all done {total_s:.1f}s after the tick\n"
        f"start after slot: first {lags[0]:.2f}s, median {lags[len(lags) // 2]:.2f}s, "
        f"last {lags[-1]:.2f}s; {within}/{len(rows)} within 60 s"
    )
    return 0 if within == len(rows) == args.commands else 1


if __name__ == "__main__":
    raise SystemExit(main())
