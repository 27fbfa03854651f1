"""Archive N finished runs: runs/s and the instance's size before and after, in one run.

    .venv/bin/python bench/archive_runs.py [--runs 10000] [--events-per-run 5]

Runs are synthesized straight into a real SQLite instance (a run record plus engine events),
which is what the archive reads; executing 10,000 real jobs would only measure Dagster.
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
    args = parser.parse_args()
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
        f"(SQLite files keep freed pages until VACUUM); archive={archived_bytes / 1e6:.1f} MB"
    )
    return 0 if len(report.archived) == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
