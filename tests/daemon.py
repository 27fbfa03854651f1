"""A real ``dagster-daemon run`` for tests: a temp DAGSTER_HOME, a workspace, the subprocess.

The daemon runs in its own process group (``start_new_session``) so that stopping it also stops
the code server and run workers it spawned: SIGTERM to the group, SIGKILL if it has not exited.
Its output goes to a log file whose tail the tests put into their assertion messages.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import dagster as dg
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.scheduler.instigation import (
    InstigatorState,
    InstigatorStatus,
    InstigatorType,
    ScheduleInstigatorData,
)
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

from orchestration.cli import write_home
from tests.support.wait import wait_until

REPO = Path(__file__).resolve().parents[1]


def make_home(path: Path, *, postgres: bool) -> Path:
    """``platform-ops home [--postgres]`` into ``path`` (PostgreSQL reads $DAGSTER_PG_URL)."""
    return write_home(path, postgres=postgres)


def write_workspace(path: Path, module: str, location: str, attribute: str = "defs") -> Path:
    """A workspace.yaml loading ``module`` (from the repo) as code location ``location``."""
    path.write_text(
        "load_from:\n"
        "  - python_module:\n"
        f"      module_name: {module}\n"
        f"      working_directory: {REPO}\n"
        f"      location_name: {location}\n"
        f"      attribute: {attribute}\n"
    )
    return path


class Daemon:
    """``dagster-daemon run -w <workspace>`` as a subprocess; use as a context manager."""

    def __init__(self, workspace: Path, env: Mapping[str, str], log_path: Path) -> None:
        self.workspace = workspace
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **env}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Daemon:
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dagster._daemon", "run", "-w", str(self.workspace)],
            cwd=REPO, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the whole group (daemon, code server, run workers), SIGKILL after ``grace``."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # Stragglers of the group (a run worker that outlived the daemon) go too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()
        self.proc = None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_for(
        self, done: Callable[[], object], timeout: float, what: str = "condition", poll: float = 0.5
    ) -> float:
        """Wait (``tests.support.wait.wait_until``) until ``done`` is truthy; the seconds taken.

        Gives up at once when the daemon exits, else after ``timeout``; either way the failure
        names ``what`` and carries the daemon log's tail, so a wait can never be ignored.
        """
        started = time.monotonic()
        try:
            wait_until(done, timeout=timeout, what=what, interval=poll, alive=self.alive)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; daemon log:\n{self.log_tail()}") from None
        return time.monotonic() - started


def start_schedule_since(
    instance: dg.DagsterInstance, module: str, location: str, name: str, since: dt.datetime
) -> None:
    """Store schedule ``name`` as RUNNING since ``since``, as if turned on back then.

    The daemon's next iteration then finds the ticks missed since ``since`` (and, with the
    catch-up rule, launches the latest) instead of waiting for the next cron boundary. The state
    is keyed by selector (location, repository, schedule), so it must name the daemon's location.
    """
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name=module, attribute="defs", working_directory=str(REPO)),
        location_name=location,
    )
    target = InProcessWorkspaceLoadTarget(origin)
    with create_test_daemon_workspace_context(target, instance) as context:
        entry = next(iter(context.create_request_context().get_code_location_entries().values()))
        (repo,) = entry.code_location.get_repositories().values()
        schedule = repo.get_schedule(name)
        instance.add_instigator_state(
            InstigatorState(
                schedule.get_remote_origin(),
                InstigatorType.SCHEDULE,
                InstigatorStatus.RUNNING,
                ScheduleInstigatorData(schedule.cron_schedule, since.timestamp()),
            )
        )
