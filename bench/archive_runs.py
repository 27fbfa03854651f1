"""Archive N finished runs: runs/s and the instance's size before and after, in one run.
Then the record-store history: trigger_history rows and command runs (with events) per second.

    .venv/bin/python bench/archive_runs.py [--runs 10000] [--events-per-run 5]
        [--history-rows 100000] [--command-runs 10000] [--store-url postgresql://...]

Runs are synthesized straight into a real SQLite instance (a run record plus engine events),
which is what the archive reads; executing 10,000 real jobs would only measure Dagster. History
rows are inserted in bulk into a migrated record store (a temporary SQLite file by default).
"""

import argparse
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg

from orchestration.policies import archive


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--events-per-run", type=int, default=5)
    parser.add_argument("--history-rows", type=int, default=100_000)
    parser.add_argument("--command-runs", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--store-url", default=None, help="default: a temporary SQLite file")
    args = parser.parse_args()
    ok = True
    if args.runs:
        ok = bench_runs(args)
    if args.history_rows or args.command_runs:
        ok = bench_records(args) and ok
    return 0 if ok else 1


def bench_runs(args: argparse.Namespace) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        with dg.instance_for_test(temp_dir=str(home)) as instance:
            started = time.perf_counter()
            for _ in range(args.runs):
                run = dg.DagsterRun(
                    job_name="bench", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.SUCCESS
                )
                instance.add_run(run)
                for i in range(args.events_per_run):
                    instance.report_engine_event(f"bench event {i}", run)
            setup = time.perf_counter() - started
            before = _size(home)
            cutoff = datetime.now(UTC) + timedelta(seconds=1)
            started = time.perf_counter()
            report = archive.archive_runs(instance, Path(tmp) / "archive", cutoff, limit=args.runs)
            seconds = time.perf_counter() - started
            after = _size(home)
            archived_bytes = _size(Path(tmp) / "archive")
    print(f"runs={args.runs} events/run={args.events_per_run} (setup {setup:.1f}s)")
    print(
        f"archived={len(report.archived)} failed={len(report.failed)} in {seconds:.1f}s "
        f"-> {len(report.archived) / seconds:.0f} runs/s"
    )
    print(
        f"instance size before={before / 1e6:.1f} MB after={after / 1e6:.1f} MB "
        "(per-run event files removed; runs.db and index.db keep freed pages until VACUUM); "
        f"archive={archived_bytes / 1e6:.1f} MB"
    )
    return len(report.archived) == args.runs


def _seed_records(engine, history_rows: int, command_runs: int) -> None:
    import sqlalchemy as sa

    from orchestration.commands import models as cm
    from orchestration.triggers import models as tm

    old = datetime.now(UTC) - timedelta(days=45)
    with engine.begin() as conn:
        for start in range(0, history_rows, 10_000):
            conn.execute(
                tm.trigger_history.insert(),
                [
                    {"trigger": "bench", "record_id": i, "attempt": 1, "status": "succeeded",
                     "error": None, "run_id": "bench", "actor": "bench", "started_at": old,
                     "finished_at": old}
                    for i in range(start, min(start + 10_000, history_rows))
                ],
            )  # fmt: skip
        if command_runs:
            cid = conn.execute(
                cm.commands.insert().values(name="bench", command="true", updated_at=old)
            ).inserted_primary_key[0]
            eid = conn.execute(
                cm.environments.insert().values(name="bench", updated_at=old)
            ).inserted_primary_key[0]
            conn.execute(
                cm.command_runs.insert(),
                [
                    {"command_id": cid, "environment_id": eid, "requested_by": "bench",
                     "not_before": old, "status": "succeeded", "created_at": old,
                     "started_at": old, "finished_at": old, "exit_code": 0,
                     "duration_seconds": 0.1}
                    for _ in range(command_runs)
                ],
            )  # fmt: skip
            ids = [r[0] for r in conn.execute(sa.select(cm.command_runs.c.id))]
            for start in range(0, len(ids), 5_000):
                conn.execute(
                    cm.command_run_events.insert(),
                    [
                        {"command_run_id": rid, "kind": kind, "at": old,
                         "stdout_tail": "ok\n" if kind == "succeeded" else None}
                        for rid in ids[start : start + 5_000]
                        for kind in ("started", "succeeded")
                    ],
                )  # fmt: skip


def bench_records(args: argparse.Namespace) -> bool:
    from orchestration.policies import record_archive
    from resources.db import make_engine
    from resources.record_store import upgrade

    with tempfile.TemporaryDirectory() as tmp:
        url = args.store_url or f"sqlite:///{tmp}/record_store.sqlite"
        upgrade(url)
        engine = make_engine(url)
        started = time.perf_counter()
        _seed_records(engine, args.history_rows, args.command_runs)
        setup = time.perf_counter() - started
        cutoff = datetime.now(UTC) - timedelta(days=30)
        ok = True
        for spec in record_archive.TABLES:
            started = time.perf_counter()
            report = record_archive.archive_table(
                engine, Path(tmp) / "archive", spec, cutoff, batch_size=args.batch_size
            )
            seconds = time.perf_counter() - started
            expected = args.history_rows if spec.name == "trigger_history" else args.command_runs
            ok = ok and report.archived == expected
            size = sum(Path(f).stat().st_size for f in report.files)
            print(
                f"{spec.name}: archived={report.archived} (+{report.children} events) "
                f"files={len(report.files)} in {seconds:.1f}s -> "
                f"{report.archived / max(seconds, 1e-9):.0f} rows/s; {size / 1e6:.1f} MB gz "
                f"(setup {setup:.1f}s, {url.split(':', 1)[0]})"
            )
        engine.dispose()
    return ok


if __name__ == "__main__":
    sys.exit(main())
