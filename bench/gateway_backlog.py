"""How fast one agent drains a backlog: it claims again when a check finishes, not a poll later.

One real agent (2 slots, a 3 s poll) and 12 quick checks on a loopback device. Prints the span
from the first start to the last finish next to the poll interval (goal: span < poll; waiting a
poll between claims would take 5 polls). The test suite proves only that the backlog drains
(``tests/gateways/test_agents.py``); the number is this script's, measured on a quiet machine:

    .venv/bin/python bench/gateway_backlog.py [--tasks 12] [--concurrency 2] [--poll 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestration.gateways import registry
from orchestration.gateways.assignment import run_tick
from orchestration.gateways.db import make_engine
from orchestration.gateways.models import poll_tasks
from resources.record_store import upgrade
from tests.gateways.devices import AgentProcess, DeviceServer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--poll", type=float, default=3.0)
    parser.add_argument("--check-seconds", type=float, default=0.05)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, DeviceServer() as device:
        url = f"sqlite:///{Path(tmp) / 'store.sqlite'}"
        upgrade(url)
        engine = make_engine(url)
        for i in range(args.tasks):
            path = f"/slow/{args.check_seconds}?d={i}"
            registry.upsert_target(engine, "P1", device.url(path), "http", None, 3600)
        registry.register(engine, "g1", "P1", lease_seconds=60)
        run_tick(engine)
        agent = AgentProcess(
            "g1", "P1", url, Path(tmp), poll=args.poll, concurrency=args.concurrency
        )
        try:
            while True:
                with engine.connect() as conn:
                    rows = conn.execute(sa.select(poll_tasks)).all()
                if rows and all(r.state == "done" for r in rows):
                    break
                if agent.proc.poll() is not None:
                    print(agent.output())
                    return 1
                time.sleep(0.05)
        finally:
            agent.stop()
        span = max(r.finished_at for r in rows) - min(r.started_at for r in rows)
        print(
            f"{args.tasks} checks of {args.check_seconds} s, {args.concurrency} slots: "
            f"span {span:.2f} s, poll {args.poll} s"
        )
        ok = span < args.poll
        print("PASS" if ok else "FAIL")
        engine.dispose()
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
