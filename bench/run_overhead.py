"""What one run costs through ``dagster job execute``, beside a trivial Dagster job (issue 17).

    .venv/bin/python bench/run_overhead.py [--repeats 5] [--compare /tmp/before] [--keep]

Every schedule tick, trigger request and command batch is a run that loads the code location in
a fresh process, so the platform's cost per run is what a light run pays above Dagster's own
floor. In ONE run, round-robin (each round runs every row once, after a warm-up round that is not
counted), this prints best-of and median of:

- ``trivial``: a one-op job with the in-process executor, in a file this bench writes (the floor);
- ``quota_reset``: ``dagster job execute -m orchestration.definitions -j quota_reset`` for today's
  partition against the local platform sandbox (started once for the bench);
- ``escalate_alerts``: the trigger run over 10 due alerts, each repeat on a fresh copy of a
  seeded record store, so every run really transitions 10 alerts and delivers their 10
  notifications (log only: no webhook);
- ``import``: ``python -c "import orchestration.definitions"``;
- ``validate``: ``dagster definitions validate -m orchestration.definitions``;

wall time and peak RSS of the whole process tree, and the ratios of the two light runs to the
trivial job beside the issue's targets (wall <= 1.2x, peak memory <= 1.5x). Then the top 10 of
``python -X importtime`` (cumulative) for the code location.

Every run is checked (exit code, the run's status in the instance, the sandbox's effect or the
record store's 10 transitions and 10 delivered notifications): a failed run stops the bench
rather than count as fast. All rows use a fresh SQLite DAGSTER_HOME each (the repo's
dagster.yaml) and the same environment.

Memory, psutil not being installed, is measured two ways and both are printed:

- ``tree``: the peak of the summed RSS of every process in the run's process group, sampled
  every 50 ms from /proc (never below ``ru_maxrss``). ``dagster job execute`` is not one
  process: for each step, Dagster's compute-log capture starts two ``tail -F`` and two
  ``watch_orphans.py`` helpers (about 22 MiB together); they are part of what a run costs, and
  the same for every job, so they add alike to both sides of a ratio.
- ``largest``: ``ru_maxrss`` from ``os.wait4``, the kernel's high-water mark of the largest
  single process of the tree (the process and every descendant it waited for; a maximum, not a
  sum). It is what ``/usr/bin/time -f %M`` prints, and the issue's "108 MiB".

``--compare PATH`` adds the rows of another checkout of the repository (same venv,
``PYTHONPATH=PATH``, cwd PATH), e.g. ``git worktree add --detach /tmp/before <commit>``, measured
in the same rounds, so before and after are side by side under the same machine load.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dev.local_services import sandbox_env, sandbox_process  # noqa: E402

TARGET_WALL = 1.2
TARGET_RSS = 1.5
DUE_ALERTS = 10
RUN_TIMEOUT = 300.0
MiB = 2**20
PAGE = os.sysconf("SC_PAGE_SIZE")

# Variables of the caller that would change what a run does; every row runs without them.
SCRUBBED = (
    "PYTHONPATH", "DAGSTER_HOME", "RECORD_STORE_URL", "TRIGGERS_WEBHOOK_URL",
    "PLATFORM_OPS_FAILURE_WEBHOOK_URL", "PLATFORM_OPS_TRACING", "BIGQUERY_EMULATOR_HOST",
)  # fmt: skip

# The floor every row is compared with: one op, the in-process executor (daemon_launch.py too).
TRIVIAL_JOB_BODY = """
@dg.op
def touch(context):
    context.log.info("trivial op ran")


@dg.job(executor_def=dg.in_process_executor)
def trivial():
    touch()
"""
TRIVIAL_JOB = (
    '''"""The floor: one op, in-process executor (written by bench/run_overhead.py)."""
import dagster as dg

'''
    + TRIVIAL_JOB_BODY
)

# Runs inside the measured checkout: its own Alembic tree upgrades the store, its seeder fills it.
SEED_STORE = """
import sys
from dev.seed import seed_alerts
from resources.record_store import make_engine, upgrade
upgrade(sys.argv[1])
engine = make_engine(sys.argv[1])
seed_alerts(engine, due=int(sys.argv[2]))
engine.dispose()
"""


# --------------------------------------------------------------------------- process trees


def high_water_mark(pid: int) -> int:
    """Bytes: the process's peak resident set so far (``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def parent_and_group(pid: int) -> tuple[int, int] | None:
    """(parent pid, process group) of ``pid``; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state ppid pgrp ...
    return int(fields[1]), int(fields[2])


def group_members(pgid: int) -> set[int]:
    """The pids of process group ``pgid`` now."""
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit() and (ids := parent_and_group(int(name))) and ids[1] == pgid:
            found.add(int(name))
    return found


class GroupSampler(threading.Thread):
    """Peak of the summed RSS of the processes of process group ``pgid`` (sampled from /proc),
    leaving out ``exclude`` (processes that were there before what is measured started) and, at
    each sample, processes for which ``ignore(pid)`` is true.

    A child that has been forked but has not exec'd yet (its command line is still its
    parent's) is not counted: until ``exec`` it shares (vfork) or copies its parent's pages, and
    counting it would count the parent twice — ``subprocess`` starting ``tail`` from a 110 MiB
    process would show as 220 MiB.

    Only pids not seen before have their ``stat`` read (to learn their group), so a sample costs
    a directory listing plus a ``cmdline`` and a ``statm`` per member: cheap enough not to slow
    what it measures. With ``hwm``, each member's own high-water mark (``VmHWM``) is read too:
    ``largest`` is then the largest single process, for processes this one cannot ``wait4``
    (a daemon's run worker).
    """

    def __init__(
        self,
        pgid: int,
        every: float = 0.05,
        exclude: Iterable[int] = (),
        hwm: bool = False,
        ignore: Callable[[int], bool] = lambda pid: False,
    ) -> None:
        super().__init__(daemon=True)
        self.pgid = pgid
        self.ignore = ignore  # a process for which it is true is not counted (that sample)
        self.every = every
        self.hwm = hwm
        self.peak = 0
        self.largest = 0
        self._members: dict[int, int] = {}  # pid -> parent pid
        self._others: set[int] = set(exclude)
        self._halt = threading.Event()

    def sample(self) -> None:
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in self._others or int(name) in self._members:
                continue
            ids = parent_and_group(int(name))
            if ids is None or ids[1] != self.pgid:
                self._others.add(int(name))
            else:
                self._members[int(name)] = ids[0]
        cmdlines = {}
        for pid in list(self._members):
            try:
                cmdlines[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                del self._members[pid]
        total = 0
        for pid, parent in self._members.items():
            if cmdlines[pid] == cmdlines.get(parent) or self.ignore(pid):
                continue  # not exec'd yet, or not to be counted
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
                if self.hwm:
                    self.largest = max(self.largest, high_water_mark(pid))
            except (OSError, IndexError):
                continue  # it ended between the two reads
        self.peak = max(self.peak, total)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()


@dataclass
class Sample:
    wall: float
    rss: int  # bytes: peak summed RSS of the process group (sampled), at least ``largest``
    largest: int  # bytes: ru_maxrss, the largest single process of the tree
    code: int
    log: Path


def kill_group(pgid: int, timeout: float = 10.0) -> None:
    """SIGKILL every process of group ``pgid`` and wait (bounded) until none is left, so that
    nothing the measured command started outlives it (or writes into a removed temp dir)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return  # the group is empty
        time.sleep(0.05)


def measure(cmd: Sequence[str], cwd: Path, env: dict[str, str], log: Path) -> Sample:
    """Run ``cmd`` in its own process group; wall time and peak RSS of its tree.

    ``os.wait4`` (not ``Popen.wait``) so the kernel's rusage of the reaped tree comes back; a
    watchdog kills the group after RUN_TIMEOUT, and whatever the group left behind is killed.
    """
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        sampler = GroupSampler(proc.pid)
        sampler.start()
        watchdog = threading.Timer(RUN_TIMEOUT, kill_group, (proc.pid,))
        watchdog.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - started
        finally:
            watchdog.cancel()
            sampler.stop()
            kill_group(proc.pid)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return Sample(
        wall=wall,
        rss=max(usage.ru_maxrss * 1024, sampler.peak),
        largest=usage.ru_maxrss * 1024,
        code=proc.returncode,
        log=log,
    )


# --------------------------------------------------------------------------- checkouts and rows


@dataclass(frozen=True)
class Checkout:
    """A checkout of the repository, run with the same venv: ``now`` (this one) or ``before``."""

    name: str
    root: Path

    def env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
        return {**base, "PYTHONPATH": str(self.root), **extra}


def checkouts(compare: Path | None) -> list[Checkout]:
    found = [Checkout("now", REPO)]
    if compare is not None:
        root = compare.resolve()
        if not (root / "orchestration" / "definitions.py").is_file():
            raise SystemExit(
                f"--compare {compare}: not a checkout of this repository (no "
                "orchestration/definitions.py); make one with `git worktree add --detach "
                f"{compare} <commit>`"
            )
        found.append(Checkout("before", root))
    return found


def fresh_home(path: Path, checkout: Checkout) -> Path:
    path.mkdir(parents=True)
    shutil.copyfile(checkout.root / "dagster.yaml", path / "dagster.yaml")
    return path


def dagster_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dagster", *args]


def latest_run(home: Path, job: str) -> tuple[int, str]:
    """(number of runs of ``job``, status of the latest) in the instance at ``home``."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name=job))
        return len(runs), (runs[0].status.value if runs else "NONE")


@dataclass
class Row:
    """One line of the table: a command, what to prepare before it, how to check it succeeded."""

    checkout: Checkout
    label: str
    command: Callable[[int], tuple[list[str], dict[str, str]]]
    check: Callable[[int, Sample], str | None] = lambda i, s: None  # an error or None
    job: str | None = None  # the Dagster job of a run row (the ratios are of these)
    samples: list[Sample] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.checkout.name:<6} {self.label}"


def run_row(row: Row, round_no: int, work: Path) -> Sample:
    cmd, env = row.command(round_no)
    log = work / "logs" / f"{row.checkout.name}-{row.label}-{round_no}.log"
    sample = measure(cmd, row.checkout.root, env, log)
    error = f"exit code {sample.code}" if sample.code else row.check(round_no, sample)
    if error:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{row.name}, round {round_no}: {error}; its output ends:\n{tail}")
    return sample


def job_check(home: Path, job: str, extra: Callable[[], str | None] | None = None):
    """The run is recorded as SUCCESS and is a new run (one per round so far)."""

    def check(round_no: int, sample: Sample) -> str | None:
        count, status = latest_run(home, job)
        if status != "SUCCESS" or count != round_no + 1:
            return f"run of {job} is {status} ({count} runs recorded, {round_no + 1} expected)"
        return extra() if extra else None

    return check


def build_rows(checkout_list: list[Checkout], work: Path, sandbox_url: str) -> list[Row]:
    trivial_file = work / "trivial_job.py"
    trivial_file.write_text(TRIVIAL_JOB)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    api = sandbox_env(sandbox_url)
    now = checkout_list[0]
    scratch = f"sqlite:///{work / 'scratch-store.sqlite'}"  # jobs that do not use the store

    rows: list[Row] = []
    home = fresh_home(work / "home-trivial", now)
    rows.append(
        Row(
            now,
            "trivial",
            lambda i, h=home: (
                dagster_cmd("job", "execute", "-f", str(trivial_file), "-j", "trivial"),
                now.env(DAGSTER_HOME=str(h), RECORD_STORE_URL=scratch, **api),
            ),
            job_check(home, "trivial"),
            job="trivial",
        )
    )
    # Probe by probe, each checkout in turn: before and after of one probe run back to back.
    per_checkout = [checkout_rows(co, work, api, today, scratch) for co in checkout_list]
    for same_probe in zip(*per_checkout, strict=True):
        rows += same_probe
    return rows


def checkout_rows(
    co: Checkout, work: Path, api: dict[str, str], today: str, scratch: str
) -> list[Row]:
    base = work / co.name
    base.mkdir()

    # quota_reset: today's partition, as its schedule asks; the sandbox applies it once per day.
    qhome = fresh_home(base / "home-quota_reset", co)
    tags = json.dumps({"dagster/partition": today})

    def sandbox_applied() -> str | None:
        import httpx

        effects = httpx.get(f"{api['CA_API_URL']}/_sandbox/state", timeout=10).json()["effects"]
        return None if effects.get("reset-daily", {}).get(today) else "sandbox saw no reset"

    def quota_cmd(i: int) -> tuple[list[str], dict[str, str]]:
        cmd = dagster_cmd(
            "job", "execute", "-m", "orchestration.definitions", "-j", "quota_reset",
            "--tags", tags,
        )  # fmt: skip
        return cmd, co.env(DAGSTER_HOME=str(qhome), RECORD_STORE_URL=scratch, **api)

    quota = Row(
        co, "quota_reset", quota_cmd, job_check(qhome, "quota_reset", sandbox_applied),
        job="quota_reset",
    )  # fmt: skip

    # escalate_alerts: a fresh copy of the seeded store per round (10 due alerts, ids 1..10).
    template = base / "store-template.sqlite"
    seeded = subprocess.run(
        [sys.executable, "-c", SEED_STORE, f"sqlite:///{template}", str(DUE_ALERTS)],
        cwd=co.root, env=co.env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if seeded.returncode:
        raise SystemExit(f"{co.name}: seeding the record store failed:\n{seeded.stderr[-3000:]}")
    ehome = fresh_home(base / "home-escalate_alerts", co)
    config = base / "escalate.yaml"
    ids = list(range(1, DUE_ALERTS + 1))
    config.write_text(
        json.dumps({"ops": {"escalate_alerts_worker": {"config": {"record_ids": ids}}}})
    )

    def store(i: int) -> Path:
        return base / f"store-{i}.sqlite"

    def escalate_cmd(i: int) -> tuple[list[str], dict[str, str]]:
        shutil.copyfile(template, store(i))
        return (
            dagster_cmd(
                "job", "execute", "-m", "orchestration.definitions", "-j", "escalate_alerts",
                "-c", str(config),
            ),
            co.env(DAGSTER_HOME=str(ehome), RECORD_STORE_URL=f"sqlite:///{store(i)}", **api),
        )  # fmt: skip

    def transitions_done(i: int, sample: Sample) -> str | None:
        with contextlib.closing(sqlite3.connect(store(i))) as db:
            escalated = db.execute("SELECT count(*) FROM alerts WHERE state='escalated'").fetchone()
            delivered = db.execute(
                "SELECT count(*) FROM notification_outbox WHERE delivered_at IS NOT NULL"
            ).fetchone()
        if (escalated[0], delivered[0]) != (DUE_ALERTS, DUE_ALERTS):
            return (
                f"{escalated[0]} alerts escalated and {delivered[0]} notifications delivered, "
                f"{DUE_ALERTS} each expected"
            )
        return None

    escalate = Row(
        co,
        "escalate_alerts",
        escalate_cmd,
        lambda i, s: job_check(ehome, "escalate_alerts")(i, s) or transitions_done(i, s),
        job="escalate_alerts",
    )

    vhome = fresh_home(base / "home-validate", co)
    env = co.env(DAGSTER_HOME=str(vhome), RECORD_STORE_URL=scratch, **api)
    imports = Row(
        co, "import", lambda i: ([sys.executable, "-c", "import orchestration.definitions"], env)
    )
    validate = Row(
        co,
        "validate",
        lambda i: (dagster_cmd("definitions", "validate", "-m", "orchestration.definitions"), env),
    )
    return [quota, escalate, imports, validate]


# --------------------------------------------------------------------------- report


def importtime_top(co: Checkout, count: int = 10) -> tuple[float, list[tuple[float, str]]]:
    """-X importtime of the code location: (seconds of ``import dagster``, the ``count`` largest
    cumulative entries outside it). ``import dagster`` is the floor every job pays, the trivial
    one too; what is left is what the platform adds."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import orchestration.definitions"],
        cwd=co.root, env=co.env(), capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"{co.name}: importing the code location failed:\n{proc.stderr[-3000:]}")
    entries = []  # (cumulative seconds, depth, name) in the order Python prints: children first
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            entries.append((int(m.group(2)) / 1e6, len(m.group(3)) // 2, m.group(4)))
    dagster_s, outside, inside_below = 0.0, [], None
    for seconds, depth, name in reversed(entries):  # parents first
        if inside_below is not None and depth > inside_below:
            continue  # imported by ``import dagster``
        inside_below = None
        if name == "dagster":
            dagster_s, inside_below = seconds, depth
            continue
        outside.append((seconds, depth, name))
    outside.sort(reverse=True)
    return dagster_s, [(seconds, "  " * depth + name) for seconds, depth, name in outside[:count]]


def stats(values: Sequence[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


def report(rows: list[Row], repeats: int) -> list[str]:
    """Best-of and median per row; for the two light runs, each median over the trivial job's
    (best-of over best-of in brackets) beside the issue's target."""
    columns = (
        ("wall", "s", lambda s: s.wall),
        ("tree", " MiB", lambda s: s.rss / MiB),
        ("largest", " MiB", lambda s: s.largest / MiB),
    )
    trivial = next(r for r in rows if r.label == "trivial")
    floor = {name: stats([get(s) for s in trivial.samples]) for name, _, get in columns}
    targets = {"wall": TARGET_WALL, "tree": TARGET_RSS, "largest": TARGET_RSS}
    head = "".join(f"{name + ' best':>14}{'median':>10}" for name, _, _ in columns)
    lines = [f"{'':<23}{head}"]
    verdicts = []
    for row in rows:
        line = f"{row.name:<23}"
        ratios = []
        for name, unit, get in columns:
            best, med = stats([get(s) for s in row.samples])
            line += f"{best:>{14 - len(unit)}.{2 if unit == 's' else 0}f}{unit}"
            line += f"{med:>{10 - len(unit)}.{2 if unit == 's' else 0}f}{unit}"
            if row.job and row.label != "trivial":
                x, x_best = med / floor[name][1], best / floor[name][0]
                mark = "ok" if x <= targets[name] else "MISS"
                ratios.append(f"{name} {x:.2f}x ({x_best:.2f}x) {mark}")
        lines.append(line)
        if ratios:
            verdicts.append(f"{row.name:<23}{', '.join(ratios)}")
    lines += [
        "",
        f"ratio to trivial, medians (best-of): targets wall <= {TARGET_WALL}x, "
        f"memory <= {TARGET_RSS}x",
        *verdicts,
        "",
        f"({repeats} rounds after one warm-up, round-robin; wall = the whole command; tree = "
        "summed RSS of its process group; largest = its largest process, as /usr/bin/time %M)",
    ]
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="rounds counted (after one warm-up)")
    p.add_argument("--compare", type=Path, help="another checkout measured in the same rounds")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (run logs)")
    args = p.parse_args()
    if args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats}: must be at least 1 (the issue asks for 5)")
    started = time.monotonic()
    co_list = checkouts(args.compare)
    work = Path(tempfile.mkdtemp(prefix="run_overhead_"))
    (work / "logs").mkdir()
    try:
        with sandbox_process(work / "sandbox") as url:
            rows = build_rows(co_list, work, url)
            rounds = args.repeats + 1
            for round_no in range(rounds):
                what = "warm-up" if round_no == 0 else f"round {round_no}/{args.repeats}"
                for row in rows:
                    sample = run_row(row, round_no, work)
                    if round_no:
                        row.samples.append(sample)
                    print(
                        f"  [{what}] {row.name:<23} {sample.wall:6.2f}s "
                        f"tree {sample.rss / MiB:4.0f} MiB  "
                        f"largest {sample.largest / MiB:4.0f} MiB",
                        flush=True,
                    )
        print()
        print("\n".join(report(rows, args.repeats)))
        for co in co_list:
            dagster_s, top = importtime_top(co)
            print(
                f"\npython -X importtime -c 'import orchestration.definitions' ({co.name}): "
                f"import dagster {dagster_s:.2f}s (every job's floor); the 10 largest "
                "cumulative imports besides it (indented by depth):"
            )
            for seconds, name in top:
                print(f"  {seconds:6.2f}s  {name}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nbench took {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
