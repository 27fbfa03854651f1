"""org_sync_all over N orgs with a fixed sandbox latency: measured wall time vs the ideal.

Ideal = N * latency / concurrency (every call in flight at the configured concurrency, zero
overhead). Both are printed side by side from the same run, with their ratio (goal <= 1.5).

    .venv/bin/python bench/org_sync.py [--orgs 1000] [--latency-ms 50] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg
import httpx

from dev.local_services import sandbox_env, sandbox_process
from orchestration.definitions import defs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=250)
    args = parser.parse_args()

    # The sandbox runs as its own process, as a real API would: sharing this process's GIL
    # with the client threads would measure the sandbox, not the job.
    with (
        tempfile.TemporaryDirectory() as tmp,
        sandbox_process(Path(tmp), seed_orgs=args.orgs) as url,
    ):
        os.environ.update(sandbox_env(url))
        httpx.post(f"{url}/_sandbox/latency", json={"ms": args.latency_ms}).raise_for_status()
        job = defs.get_job_def("org_sync_all")
        config = {
            "ops": {
                "plan_org_batches": {"config": {"batch_size": args.batch_size}},
                "sync_org_batch": {"config": {"concurrency": args.concurrency}},
            }
        }
        with dg.instance_for_test() as instance:
            started = time.perf_counter()
            result = job.execute_in_process(instance=instance, run_config=config)
            wall = time.perf_counter() - started
        assert result.success
        state = httpx.get(f"{url}/_sandbox/state").json()
        synced = sum(1 for o in state["orgs"].values() if o["syncs"])
    ideal = max(args.orgs * args.latency_ms / 1000 / args.concurrency, 1e-9)
    print(f"orgs={args.orgs} latency={args.latency_ms}ms concurrency={args.concurrency}")
    print(f"synced={synced}  measured={wall:.2f}s  ideal={ideal:.2f}s  ratio={wall / ideal:.2f}")
    return 0 if synced == args.orgs else 1


if __name__ == "__main__":
    sys.exit(main())
