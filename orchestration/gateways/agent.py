"""The gateway agent: ``python -m orchestration.gateways.agent --id G --partition P ...``.

A long-running process next to the devices. It registers, renews its lease on a thread of its own
(so a slow check never lets the lease lapse), claims the tasks the coordinator assigned to it,
runs them on a small thread pool and reports each result under its assignment token. While it
has a backlog it claims again as soon as a check finishes; otherwise it polls every ``--poll``.

SIGTERM/SIGINT: stop claiming, let in-flight checks finish (bounded), deregister, exit 0 — the
next tick reassigns anything still assigned. SIGKILL needs nothing: the lease simply expires.
A bad argument or store URL (exit 2) or a store unreachable at start (exit 1) is one line on
stderr (``orchestration.cli_errors``); once running, store errors are logged and retried.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

from orchestration import cli_errors
from orchestration.gateways import registry
from orchestration.gateways.checks import run_check
from orchestration.gateways.db import make_engine
from orchestration.gateways.worker import ClaimedTask, claim_tasks, report_result

PROG = "python -m orchestration.gateways.agent"


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


class Agent:
    def __init__(
        self,
        engine: sa.Engine,
        gateway_id: str,
        partition: str,
        domains: list[str],
        heartbeat_seconds: float = 2.0,
        lease_seconds: float = 10.0,
        poll_seconds: float = 0.5,
        concurrency: int = 8,
    ) -> None:
        if lease_seconds <= heartbeat_seconds:
            raise ValueError("--lease must be longer than --heartbeat")
        self.engine = engine
        self.id = gateway_id
        self.partition = partition
        self.domains = domains
        self.heartbeat_seconds = heartbeat_seconds
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.concurrency = concurrency
        self.stopping = threading.Event()
        self._inflight = 0
        self._lock = threading.Lock()
        self._slot_freed = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------
    def _register(self) -> None:
        registry.register(
            self.engine,
            self.id,
            self.partition,
            self.domains,
            self.lease_seconds,
            host=f"{socket.gethostname()}:{os.getpid()}",
        )
        log(f"gateway {self.id} registered partition={self.partition} domains={self.domains}")

    def _heartbeat_loop(self) -> None:
        while not self.stopping.wait(self.heartbeat_seconds):
            try:
                if not registry.heartbeat(self.engine, self.id, self.lease_seconds, self._inflight):
                    self._register()
            except Exception as exc:  # store unreachable: keep trying, the lease decides
                log(cli_errors.scrub(f"heartbeat failed: {type(exc).__name__}: {exc}"))

    def run(self) -> int:
        self._register()
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        beat.start()
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="check")
        try:
            while not self.stopping.is_set():
                self._slot_freed.clear()
                free = self.concurrency - self._inflight
                try:
                    claimed = claim_tasks(self.engine, self.id, free, self.lease_seconds)
                except Exception as exc:
                    log(cli_errors.scrub(f"claim failed: {type(exc).__name__}: {exc}"))
                    self.stopping.wait(self.poll_seconds)
                    continue
                for task in claimed:
                    with self._lock:
                        self._inflight += 1
                    pool.submit(self._execute, task)
                if free > 0 and len(claimed) < free:
                    self.stopping.wait(self.poll_seconds)  # nothing more assigned: poll later
                else:
                    # Every slot busy and maybe more assigned (a backlog, e.g. after a failover):
                    # claim again as soon as a check finishes, not a poll interval later.
                    self._slot_freed.wait(self.poll_seconds)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self.stopping.set()
            registry.deregister(self.engine, self.id)
            log(f"gateway {self.id} deregistered")
        return 0

    # -- one task --------------------------------------------------------------------------
    def _execute(self, task: ClaimedTask) -> None:
        try:
            status, result = run_check(task.check_kind, task.address, task.timeout_seconds)
            result["gateway"] = self.id
            accepted = report_result(self.engine, self.id, task.id, task.token, status, result)
            if accepted:
                log(f"task {task.id} target {task.target_id} {task.address}: {status}")
            else:
                log(
                    f"task {task.id} result rejected: assignment token {task.token} is stale "
                    "(the task was reassigned)"
                )
        except Exception as exc:
            log(cli_errors.scrub(f"task {task.id} failed: {type(exc).__name__}: {exc}"))
        finally:
            with self._lock:
                self._inflight -= 1
            self._slot_freed.set()


# Argument bounds, checked by the parser before anything is written (an empty id, ``--poll nan``
# or ``--concurrency 0`` used to register first and fail after). Ids are the column widths of
# ``gateways.id`` / ``partition`` / the targets' ``domain``.
HEARTBEAT_S = (0.05, 3_600.0)
LEASE_S = (0.1, 86_400.0)
POLL_S = (0.01, 3_600.0)
CONCURRENCY = (1, 256)
seconds = cli_errors.bounded_number
name = cli_errors.identifier


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli_errors.OneLineArgumentParser(prog=PROG)
    parser.add_argument(
        "--id", required=True, type=name(200, "gateway id"), help="Stable across restarts."
    )
    parser.add_argument("--partition", required=True, type=name(100, "partition"))
    parser.add_argument(
        "--domain", action="append", default=[], type=name(100, "domain"),
        help="Endpoint domain served (repeatable).",
    )  # fmt: skip
    parser.add_argument(
        "--store-url",
        default=os.environ.get("RECORD_STORE_URL"),
        help="Record store URL (default $RECORD_STORE_URL).",
    )
    parser.add_argument(
        "--heartbeat", type=seconds(*HEARTBEAT_S), default=2.0, help="Seconds between renewals."
    )
    parser.add_argument("--lease", type=seconds(*LEASE_S), default=10.0, help="Lease in seconds.")
    parser.add_argument(
        "--poll", type=seconds(*POLL_S), default=0.5, help="Seconds between claim attempts."
    )
    parser.add_argument(
        "--concurrency", type=seconds(*CONCURRENCY, unit="checks", integer=True), default=8,
        help="Checks in flight at once.",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not args.store_url:
        parser.error("--store-url or $RECORD_STORE_URL is required")
    if args.lease <= args.heartbeat:
        parser.error(f"--lease ({args.lease}) must be longer than --heartbeat ({args.heartbeat})")
    cli_errors.store_url(args.store_url)
    return args


def main(argv: list[str] | None = None) -> int:
    return cli_errors.run(PROG, lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    agent = Agent(
        make_engine(args.store_url),
        args.id,
        args.partition,
        args.domain,
        heartbeat_seconds=args.heartbeat,
        lease_seconds=args.lease,
        poll_seconds=args.poll,
        concurrency=args.concurrency,
    )

    def _stop(signum, _frame):
        log(f"signal {signal.Signals(signum).name}: finishing in-flight checks, deregistering")
        agent.stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
