"""The issue's numbers for the default launcher, beside the containerised ones of test_stack.py:
launchRun -> RUN_START and the peak memory of one ``release`` run under ``dagster dev`` (the
repository's dagster.yaml: the shipped queued coordinator, runs as subprocesses).

    .venv/bin/python bench/default_launcher.py [runs]

Memory is the run worker's peak resident set (``VmHWM`` from /proc of the process the code
server spawns for the run); a container's cgroup figure also counts the page cache of the
files it read, so the two differ by what the kernel caches for the container.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from dagster_graphql import DagsterGraphQLClient

from dev.local_services import sandbox_env, sandbox_process
from tests.dagster_dev import dagster_dev
from tests.deploy.graphql import LOCATION, REPOSITORY, Webserver

REPO = Path(__file__).resolve().parents[1]
RELEASE_CONFIG = yaml.safe_load((REPO / "config" / "release-test.yaml").read_text())


def run_worker_rss(group: int, before: set[int]) -> int:
    """Bytes: the largest peak RSS among the run worker processes of ``dagster dev``'s process
    group started since the launch (the gRPC server spawns each run with multiprocessing)."""
    peak = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in before:
            continue
        try:
            if os.getpgid(int(proc.name)) != group:
                continue
            cmdline = (proc / "cmdline").read_bytes()
            status = (proc / "status").read_text()
        except (OSError, ProcessLookupError):
            continue
        if b"spawn_main" not in cmdline and b"execute_run" not in cmdline:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) * 1024)
    return peak


def sample_peak(group: int, peak: list[int], stop: threading.Event) -> None:
    before = {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}
    while not stop.wait(0.05):
        peak[0] = max(peak[0], run_worker_rss(group, before))


def main(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with (
            sandbox_process(work / "sandbox", seed_orgs=5) as url,
            dagster_dev(work / "home", env=sandbox_env(url)) as dev,
        ):
            port = int(dev.url.rsplit(":", 1)[1])
            web = Webserver(port)
            client = DagsterGraphQLClient("127.0.0.1", port_number=port, timeout=60)
            for attempt in range(runs):
                peak, stop = [0], threading.Event()
                sampler = threading.Thread(target=sample_peak, args=(dev.proc.pid, peak, stop))
                sampler.start()
                submitted = time.time()
                run_id = client.submit_job_execution(
                    "release", repository_location_name=LOCATION,
                    repository_name=REPOSITORY, run_config=RELEASE_CONFIG,
                )  # fmt: skip
                (run,) = web.wait_finished([run_id], 240)
                stop.set()
                sampler.join()
                assert run.status == "SUCCESS", run
                print(
                    f"[subprocess] run {attempt + 1}: launchRun -> RUN_START "
                    f"{run.started - submitted:.1f}s (dequeued/launched -> RUN_START "
                    f"{run.started - run.launched:.1f}s, RUN_START -> end "
                    f"{run.ended - run.started:.1f}s); peak RSS of the run worker "
                    f"{peak[0] / 2**20:.0f} MiB",
                    flush=True,
                )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
