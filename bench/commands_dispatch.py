"""Dispatch tick over 10,000 enabled schedules (1,000 due): target under 2 s, SQLite and PostgreSQL.

    .venv/bin/python bench/commands_dispatch.py [--pg postgresql://postgres@127.0.0.1:5432/test]

Seeds the record store directly (bulk inserts), then times one ``dispatch.tick`` — the whole of
what the sensor does against the database: the schedule query, cron evaluation, the
ON CONFLICT insert of the due runs and their claim into batches — and a second, re-evaluated tick.
Then the reaper the sensor runs on each tick: with nothing running, with the 1,000 runs ``running``
(fresh heartbeats, 100 Dagster runs to look up), and with all 1,000 of them lost at once.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg

from orchestration.commands import dispatch, reaper
from orchestration.commands import models as m
from resources.record_store import make_engine, upgrade

NOW = datetime(2026, 3, 4, 12, 34, 5, tzinfo=UTC)
DUE = ["34 12 * * *", "*/2 * * * *", "34 * * * *", "* 12 * * *", "4-44/10 * * * *", "* * * * *"]


def seed(engine: sa.Engine, total: int, due: int) -> None:
    rng = random.Random(7)
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(m.environments.insert(), [
            {"name": f"env{i}", "enabled": True, "updated_at": long_ago} for i in range(5)
        ])  # fmt: skip
        conn.execute(m.commands.insert(), [
            {"name": f"cmd{i}", "command": "true", "enabled": True, "timeout_seconds": 60,
             "use_shell": True, "updated_at": long_ago} for i in range(total)
        ])  # fmt: skip
        conn.execute(m.schedules.insert(), [
            {"name": f"sched{i}", "command_id": i + 1, "enabled": True, "created_at": long_ago,
             "updated_at": long_ago} for i in range(total)
        ])  # fmt: skip
        crons = []
        for i in range(total):
            if i < due:
                crons.append(DUE[i % len(DUE)])
            else:  # never 12:34 (nor minute 34 of any hour)
                minute = rng.choice([x for x in range(60) if x != 34])
                crons.append(f"{minute} {rng.randrange(24)} * * *")
        conn.execute(m.schedule_crons.insert(), [
            {"schedule_id": i + 1, "cron": c} for i, c in enumerate(crons)
        ])  # fmt: skip
        conn.execute(m.schedule_environments.insert(), [
            {"schedule_id": i + 1, "environment_id": (i % 5) + 1} for i in range(total)
        ])  # fmt: skip


def bench(url: str, label: str, total: int, due: int) -> float:
    upgrade(url)
    engine = make_engine(url)
    seed(engine, total, due)
    start = NOW - timedelta(seconds=60)
    t0 = time.perf_counter()
    first = dispatch.tick(engine, NOW, start)
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    again = dispatch.tick(engine, NOW + timedelta(seconds=20), start)
    re_seconds = time.perf_counter() - t1
    queued = sum(len(v) for v in first.batches.values())
    assert first.created == due and again.created == 0 and queued == due, (first, again)
    print(
        f"{label:<10} {total} schedules, {first.created} due: tick {seconds:.2f}s "
        f"({len(first.batches)} batch(es)); re-evaluated tick {re_seconds:.2f}s "
        f"{'OK' if seconds < 2 else 'SLOWER THAN 2 s'}"
    )
    bench_reaper(engine, label)
    engine.dispose()
    return seconds


def bench_reaper(engine: sa.Engine, label: str) -> None:
    t = m.command_runs
    with dg.instance_for_test() as instance:
        now = datetime.now(UTC)
        timed = []
        for state in ("idle", "running", "lost"):
            with engine.begin() as conn:
                if state == "running":
                    ids = conn.execute(sa.select(t.c.id).where(t.c.status == m.QUEUED)).scalars()
                    for i, run_id in enumerate(ids):
                        conn.execute(
                            t.update().where(t.c.id == run_id).values(
                                status=m.RUNNING, started_at=now, heartbeat_at=now,
                                dagster_run_id=f"{i % 100:036d}",
                            )
                        )  # fmt: skip
                elif state == "lost":
                    conn.execute(
                        t.update()
                        .where(t.c.status == m.RUNNING)
                        .values(heartbeat_at=now - reaper.STALE_AFTER * 2)
                    )
            t0 = time.perf_counter()
            n = len(reaper.reap(instance, engine, now))
            timed.append(f"{state} {time.perf_counter() - t0:.3f}s ({n} reaped)")
    print(f"{label:<10} reaper: " + ", ".join(timed))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--due", type=int, default=1_000)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(bench(f"sqlite:///{tmp}/store.sqlite", "sqlite", args.schedules, args.due))
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(args.pg)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        print(f"postgresql  skipped: {exc.__class__.__name__}: {exc}")
        return 0 if all(r < 2 for r in results) else 1
    sep = "&" if "?" in args.pg else "?"
    try:
        url = f"{args.pg}{sep}options=-csearch_path%3D{schema}"
        results.append(bench(url, "postgresql", args.schedules, args.due))
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    return 0 if all(r < 2 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
