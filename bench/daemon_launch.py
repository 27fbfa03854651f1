"""The same three runs as bench/run_overhead.py, launched by ``dagster-daemon`` (issue 17, "Also
measure and report"): time from the sensor tick to RUN_START and to RUN_SUCCESS.

    .venv/bin/python bench/daemon_launch.py [--repeats 5] [--compare /tmp/before] [--keep]
                                            [--dequeue-interval SECONDS]

Per checkout, ``dagster-daemon run`` on a fresh SQLite DAGSTER_HOME holding that checkout's
dagster.yaml (the queued run coordinator and the default run launcher: each run is a new process
started by the code server), a fresh record store, the local platform sandbox, and a workspace of
two code locations written by this bench:

- ``platform``: every job, asset and resource of ``orchestration.definitions`` (the run worker
  loads the whole code location, as in production) with only the instigators measured here:
  the shipped ``escalate_alerts_sensor`` (every 30 s; the bench inserts 10 due alerts and waits
  for its tick) and a bench sensor that asks for one ``quota_reset`` run of today's partition per
  request. The shipped schedules and the other sensors are left out, so no other run competes.
- ``trivial``: a one-op in-process job and the same kind of request sensor.

A request sensor reads a counter file the bench bumps and asks for one run per new value; its
ticks go through the same machinery as a schedule's (daemon -> code server evaluation -> run
created -> queued -> dequeued and launched -> run worker). For each run it reads from the
instance: the tick's timestamp (run tag ``dagster/tick``), the run's creation, RUN_STARTING (the
coordinator launched it), RUN_START (the worker's first event, after loading the code location)
and RUN_SUCCESS, and prints best-of and median of each step and of tick -> RUN_START and
tick -> RUN_SUCCESS. Memory: the summed RSS of the processes the run added to the daemon's
process group (the worker and its compute-log helpers), sampled every 50 ms, and the worker's
own high-water mark.

Runs one at a time, round-robin over (job, checkout) after a warm-up round (not counted). With
``--compare`` both daemons run side by side for the whole bench (each idles while the other's
run is measured). Every run is checked (SUCCESS; for escalate_alerts the 10 alerts escalated
and their 10 notifications delivered, log only). The daemons and everything they started are
stopped at the end whatever happens (SIGTERM to each process group, then SIGKILL).

``--dequeue-interval N`` is a what-if: the copied dagster.yaml gets the queued run coordinator's
``dequeue_interval_seconds: N`` (unset, Dagster's default is 5 s: a run waits 0-5 s in the
queue, the ``queue`` column).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import dagster as dg  # noqa: E402
from dagster._core.instance.ref import InstanceRef  # noqa: E402
from dagster._core.scheduler.instigation import InstigatorType  # noqa: E402
from dagster._core.storage.tags import TICK_ID_TAG  # noqa: E402
from run_overhead import (  # noqa: E402
    DUE_ALERTS,
    SEED_STORE,
    TRIVIAL_JOB_BODY,
    Checkout,
    GroupSampler,
    MiB,
    checkouts,
    group_members,
    kill_group,
)

from dev.local_services import sandbox_env, sandbox_process  # noqa: E402
from dev.seed import seed_alerts  # noqa: E402

WAIT_RUN = 240.0  # seconds for one run, tick included (the warm-up loads the code locations)
JOBS = ("trivial", "quota_reset", "escalate_alerts")
WORKSPACE = "workspace.yaml"
DELIVERED = "SELECT count(*) FROM notification_outbox WHERE delivered_at IS NOT NULL"

REQUEST_SENSOR = '''
def request_sensor(job_name, requests, partition=False):
    """One run of ``job_name`` per value the bench writes to ``requests`` (a counter)."""

    @dg.sensor(
        name=f"bench_{job_name}", job_name=job_name, minimum_interval_seconds=1,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def bench_requests(context):
        wanted = int(Path(requests).read_text() or 0) if Path(requests).exists() else 0
        if wanted <= int(context.cursor or 0):
            return dg.SkipReason("no new request")
        key = dt.datetime.now(dt.UTC).date().isoformat() if partition else None
        request = dg.RunRequest(run_key=f"bench-{wanted}", partition_key=key)
        return dg.SensorResult(run_requests=[request], cursor=str(wanted))

    return bench_requests
'''

PLATFORM_LOCATION = (
    '''"""Bench location (bench/daemon_launch.py): the platform's jobs, assets and resources with
only the measured instigators."""
import datetime as dt
from pathlib import Path

import dagster as dg

import orchestration.definitions

REQUESTS = "__REQUESTS__"
'''
    + REQUEST_SENSOR
    + """


def bench_definitions(platform):
    # A function, so that ``defs`` is the module's only Definitions (the location's target).
    escalate = next(s for s in platform.sensors if s.name == "escalate_alerts_sensor")
    return dg.Definitions(
        assets=platform.assets,
        asset_checks=platform.asset_checks,
        jobs=platform.jobs,
        resources=platform.resources,
        executor=platform.executor,
        loggers=platform.loggers,
        sensors=[escalate, request_sensor("quota_reset", REQUESTS, partition=True)],
    )


defs = bench_definitions(orchestration.definitions.defs)
"""
)

TRIVIAL_LOCATION = (
    '''"""Bench location (bench/daemon_launch.py): the floor, a one-op in-process job."""
import datetime as dt
from pathlib import Path

import dagster as dg

REQUESTS = "__REQUESTS__"

'''
    + TRIVIAL_JOB_BODY
    + REQUEST_SENSOR
    + """
defs = dg.Definitions(jobs=[trivial], sensors=[request_sensor("trivial", REQUESTS)])
"""
)


@dataclass
class Launch:
    """One run's timeline (epoch seconds) and memory."""

    tick: float
    created: float
    launched: float
    started: float
    ended: float
    tree: int
    largest: int


@dataclass
class Stack:
    """One checkout's daemon, instance, record store and request counters."""

    checkout: Checkout
    work: Path
    api: dict[str, str]
    dequeue_interval: int | None = None
    proc: subprocess.Popen | None = None
    requests: dict[str, int] = field(default_factory=dict)
    launches: dict[str, list[Launch]] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.work / "dagster_home"

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.work / 'records.sqlite'}"

    def prepare(self) -> None:
        self.home.mkdir(parents=True)
        shutil.copyfile(self.checkout.root / "dagster.yaml", self.home / "dagster.yaml")
        if self.dequeue_interval is not None:  # what-if: the queue's loop, everything else as is
            settings = yaml.safe_load((self.home / "dagster.yaml").read_text())
            settings["run_coordinator"]["config"]["dequeue_interval_seconds"] = (
                self.dequeue_interval
            )
            (self.home / "dagster.yaml").write_text(yaml.safe_dump(settings))
        seeded = subprocess.run(
            [sys.executable, "-c", SEED_STORE, self.store_url, "0"],
            cwd=self.checkout.root, env=self.checkout.env(), capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        if seeded.returncode:
            raise SystemExit(f"{self.checkout.name}: record store setup failed:\n{seeded.stderr}")
        locations = []
        for name, source in (("platform", PLATFORM_LOCATION), ("trivial", TRIVIAL_LOCATION)):
            job = "quota_reset" if name == "platform" else "trivial"
            module = self.work / f"{name}_location.py"
            module.write_text(source.replace("__REQUESTS__", str(self.work / f"requests-{job}")))
            locations.append(
                f"  - python_file:\n      relative_path: {module}\n"
                f"      working_directory: {self.checkout.root}\n"
                f"      location_name: {name}\n"
            )
        (self.work / WORKSPACE).write_text("load_from:\n" + "".join(locations))
        # Create the instance's SQLite databases now: the daemon and its two code servers
        # starting together on an empty home can both stamp the schedule storage (two Alembic
        # heads, "more than one head present", and no location loads).
        with self.instance():
            pass

    def start(self) -> None:
        env = self.checkout.env(
            DAGSTER_HOME=str(self.home), RECORD_STORE_URL=self.store_url, **self.api
        )
        self._log = open(self.work / "daemon.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dagster._daemon", "run", "-w", str(self.work / WORKSPACE)],
            cwd=self.checkout.root, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def stop(self) -> None:
        """SIGTERM the daemon's group (code servers, run workers), SIGKILL what is left."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        kill_group(self.proc.pid)  # a code server or run worker still starting goes too
        self._log.close()
        self.proc = None

    def log_tail(self) -> str:
        return (self.work / "daemon.log").read_text(errors="replace")[-3000:]

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home)))

    def request(self, job: str) -> None:
        """Ask for one more run: bump the job's counter, or insert 10 due alerts."""
        if job == "escalate_alerts":
            engine = sa.create_engine(self.store_url)
            seed_alerts(engine, due=DUE_ALERTS)
            engine.dispose()
            return
        self.requests[job] = self.requests.get(job, 0) + 1
        path = self.work / f"requests-{job}"
        path.with_suffix(".tmp").write_text(str(self.requests[job]))
        path.with_suffix(".tmp").replace(path)  # the sensor never reads half a number

    def measure(self, job: str, runs_so_far: int) -> Launch:
        """Request a run of ``job``, wait until it finishes, check it, return its timeline."""
        assert self.proc is not None
        sampler = GroupSampler(
            self.proc.pid, exclude=group_members(self.proc.pid), hwm=True, ignore=code_server
        )
        sampler.start()
        try:
            self.request(job)
            run = self.wait_finished(job, runs_so_far + 1)
        finally:
            sampler.stop()
        self.check(job, run, runs_so_far + 1)
        with self.instance() as instance:
            record = instance.get_run_record_by_id(run.run_id)
            starting = instance.get_records_for_run(
                run.run_id, of_type=dg.DagsterEventType.RUN_STARTING
            ).records
            tick = tick_time(instance, run.tags[TICK_ID_TAG])
        assert record is not None and record.start_time and record.end_time, run
        return Launch(
            tick=tick,
            created=record.create_timestamp.timestamp(),
            launched=starting[0].timestamp if starting else float("nan"),
            started=record.start_time,
            ended=record.end_time,
            tree=sampler.peak,
            largest=sampler.largest,
        )

    def wait_finished(self, job: str, count: int) -> dg.DagsterRun:
        deadline = time.monotonic() + WAIT_RUN
        with self.instance() as instance:
            while time.monotonic() < deadline:
                runs = instance.get_runs(dg.RunsFilter(job_name=job))
                if len(runs) >= count and runs[0].is_finished:
                    return runs[0]
                if self.proc is None or self.proc.poll() is not None:
                    raise SystemExit(f"{self.checkout.name}: the daemon exited:\n{self.log_tail()}")
                time.sleep(0.2)
        raise SystemExit(
            f"{self.checkout.name}: no finished run of {job} within {WAIT_RUN:.0f}s "
            f"({count} expected); daemon log:\n{self.log_tail()}"
        )

    def check(self, job: str, run: dg.DagsterRun, count: int) -> None:
        problem = None
        if run.status != dg.DagsterRunStatus.SUCCESS:
            problem = f"run {run.run_id} of {job} is {run.status.value}"
        elif job == "escalate_alerts":
            engine = sa.create_engine(self.store_url)
            with engine.connect() as conn:
                escalated = conn.execute(
                    sa.text("SELECT count(*) FROM alerts WHERE state = 'escalated'")
                ).scalar_one()
                delivered = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM notification_outbox WHERE delivered_at IS NOT NULL"
                    )
                ).scalar_one()
            engine.dispose()
            if escalated != delivered or escalated != DUE_ALERTS * count:
                problem = (
                    f"{escalated} alerts escalated and {delivered} notifications delivered after "
                    f"{count} runs; {DUE_ALERTS * count} each expected"
                )
        if problem:
            raise SystemExit(f"{self.checkout.name}: {problem}; daemon log:\n{self.log_tail()}")


def code_server(pid: int) -> bool:
    """A code server, or a fork of the daemon or of a code server that has not exec'd yet: the
    daemon starts fresh code servers every minute (its workspace reload) while a run may be
    going on, and they are not the run's memory."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return any(part in cmdline for part in (b"grpc", b"code-server", b"dagster._daemon"))


def tick_time(instance: dg.DagsterInstance, tick_id: str) -> float:
    """The timestamp of the sensor tick ``tick_id`` (when the daemon started evaluating it)."""
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        for tick in instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=200):
            if str(tick.tick_id) == str(tick_id):
                return tick.timestamp
    raise LookupError(f"no sensor tick {tick_id} in the instance")


STEPS = (  # (column, what it is, seconds of a run)
    ("sensor", "tick -> run created (the sensor's evaluation)", lambda r: r.created - r.tick),
    ("queue", "created -> RUN_STARTING (the coordinator's dequeue loop)",
     lambda r: r.launched - r.created),
    ("worker", "RUN_STARTING -> RUN_START (a process loads the code location)",
     lambda r: r.started - r.launched),
    ("run", "RUN_START -> RUN_SUCCESS (the job itself)", lambda r: r.ended - r.started),
    ("to START", "tick -> RUN_START", lambda r: r.started - r.tick),
    ("to SUCCESS", "tick -> RUN_SUCCESS", lambda r: r.ended - r.tick),
)  # fmt: skip


def report(stacks: list[Stack], repeats: int) -> list[str]:
    head = "".join(f"{name:>13}" for name, _, _ in STEPS)
    lines = [
        "seconds, best/median; memory MiB, median",
        f"{'':<23}{head}{'tree':>7}{'worker':>7}",
    ]
    for job in JOBS:
        for stack in stacks:
            runs = stack.launches[job]
            line = f"{stack.checkout.name:<6} {job:<16}"
            for _, _, get in STEPS:
                values = [get(r) for r in runs]
                line += f"{min(values):>7.2f}/{statistics.median(values):<5.2f}"
            line += f"{statistics.median([r.tree / MiB for r in runs]):>7.0f}"
            line += f"{statistics.median([r.largest / MiB for r in runs]):>7.0f}"
            lines.append(line)
    lines += [f"  {name:<10} {meaning}" for name, meaning, _ in STEPS]
    lines += [
        "  tree       the processes the run added (worker and its log helpers), summed",
        "  worker     the run's largest process (its high-water mark)",
        f"({repeats} runs of each after a warm-up, one at a time, round-robin)",
    ]
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="runs per job counted (after a warm-up)")
    p.add_argument("--compare", type=Path, help="another checkout, its own daemon, same rounds")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (daemon logs)")
    p.add_argument(
        "--dequeue-interval",
        type=int,
        metavar="SECONDS",
        help="what-if: the queued run coordinator's dequeue_interval_seconds (Dagster's "
        "default, 5, when dagster.yaml does not set it)",
    )
    args = p.parse_args()
    if args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats}: must be at least 1 (the issue asks for 5)")
    if args.dequeue_interval is not None and args.dequeue_interval < 1:
        raise SystemExit(
            f"--dequeue-interval {args.dequeue_interval}: must be a whole number of seconds >= 1"
        )
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="daemon_launch_"))
    stacks: list[Stack] = []
    try:
        with sandbox_process(work / "sandbox") as url:
            for co in checkouts(args.compare):
                stack = Stack(co, work / co.name, sandbox_env(url), args.dequeue_interval)
                stack.prepare()
                stacks.append(stack)
            for stack in stacks:
                stack.start()
            for round_no in range(args.repeats + 1):
                what = "warm-up" if round_no == 0 else f"round {round_no}/{args.repeats}"
                for job in JOBS:
                    for stack in stacks:
                        launch = stack.measure(job, round_no)
                        if round_no:
                            stack.launches.setdefault(job, []).append(launch)
                        print(
                            f"  [{what}] {stack.checkout.name:<6} {job:<16} tick -> RUN_START "
                            f"{launch.started - launch.tick:5.2f}s, -> RUN_SUCCESS "
                            f"{launch.ended - launch.tick:5.2f}s, run tree "
                            f"{launch.tree / MiB:4.0f} MiB",
                            flush=True,
                        )
    finally:
        for stack in stacks:
            stack.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print("\n".join(report(stacks, args.repeats)))
    print(f"\nbench took {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
