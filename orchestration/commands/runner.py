"""Runs one command as a subprocess: its environment's variables, a timeout, capped output.

Why it is built this way:
- Variables go in as *environment variables* of the child, never into the command text, so a value
  like ``$(rm -rf ~)`` or ``; reboot`` stays an inert string (the shell expands ``$NAME`` to the
  value but never re-parses it as code). The parent's own environment (platform secrets) is not
  inherited: only a small base (PATH, HOME, LANG, …) plus the variables.
- The child gets its own session/process group (``start_new_session=True``), so a timeout or a
  cancel signals the whole tree: SIGTERM, a grace period, then SIGKILL — a grandchild that ignores
  TERM dies too. Leftovers of a finished command are reaped the same way so none outlives it.
- Output is read line by line on two threads, masked (secret values → ``****``), handed to an
  ``on_line`` callback (the Dagster step streams it to the run log) and kept as a capped tail.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from orchestration.commands.models import CANCELLED, FAILED, SUCCEEDED, TIMED_OUT
from orchestration.commands.timeutil import utcnow

DEFAULT_TAIL_BYTES = 64 * 1024
MASK = "****"
BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL")
_READ_CHUNK = 64 * 1024


class Masker:
    """Replaces every secret value (longest first, so overlapping values mask fully)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


class Tail:
    """The last ``cap`` bytes of a stream, kept as whole (already masked) lines where possible."""

    def __init__(self, cap: int = DEFAULT_TAIL_BYTES) -> None:
        self.cap = cap
        self.lines: deque[str] = deque()
        self.size = 0
        self.truncated = False
        self.total_bytes = 0

    def add(self, line: str) -> None:
        n = len(line.encode())
        self.total_bytes += n
        if n > self.cap:  # a single huge line: keep its end
            line = line.encode()[-self.cap :].decode(errors="replace")
            n = len(line.encode())
            self.truncated = True
        self.lines.append(line)
        self.size += n
        while self.size > self.cap and self.lines:
            self.size -= len(self.lines.popleft().encode())
            self.truncated = True

    def text(self) -> str:
        return "".join(self.lines)


@dataclass
class CommandSpec:
    """Everything needed to run one command run (resolved from the record store)."""

    command_run_id: int
    name: str
    environment: str
    command: str
    timeout_seconds: float
    use_shell: bool = True
    working_dir: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        return ["/bin/sh", "-c", self.command] if self.use_shell else shlex.split(self.command)

    def child_env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
        env.update(self.variables)
        env.update(
            COMMAND_RUN_ID=str(self.command_run_id),
            COMMAND_NAME=self.name,
            COMMAND_ENVIRONMENT=self.environment,
        )
        return env


@dataclass
class CommandResult:
    status: str
    exit_code: int | None
    started_at: datetime
    finished_at: datetime
    duration_seconds: float
    stdout_tail: str
    stderr_tail: str
    message: str = ""
    pid: int | None = None


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _group_alive(pgid: int) -> bool:
    return _signal_group(pgid, 0)


def kill_group(pgid: int, grace_seconds: float) -> None:
    """SIGTERM to the whole group, then SIGKILL whatever is still there after the grace."""
    if not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(0.02)
    _signal_group(pgid, signal.SIGKILL)


class RunningCommand:
    """One started command; ``wait()`` returns its result; ``cancel()`` is thread-safe."""

    def __init__(
        self,
        spec: CommandSpec,
        *,
        on_line: Callable[[str, str], None] | None = None,
        grace_seconds: float = 5.0,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
    ) -> None:
        self.spec = spec
        self.on_line = on_line
        self.grace_seconds = grace_seconds
        self.mask = Masker(spec.secrets)
        self.tails = {"stdout": Tail(tail_bytes), "stderr": Tail(tail_bytes)}
        self._cancel = threading.Event()
        self.started_at = utcnow()
        self._t0 = time.monotonic()
        self.proc = subprocess.Popen(
            spec.argv(),
            env=spec.child_env(),
            cwd=spec.working_dir or None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
        self.pgid = self.proc.pid  # new session: the child leads its own process group
        self._readers = [
            threading.Thread(target=self._read, args=(name, pipe), daemon=True)
            for name, pipe in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, pipe) -> None:
        tail = self.tails[name]
        with pipe:
            while True:
                raw = pipe.readline(_READ_CHUNK)
                if not raw:
                    break
                line = self.mask(raw.decode(errors="replace"))
                tail.add(line)
                if self.on_line is not None:
                    with contextlib.suppress(Exception):  # a log hiccup never stops the command
                        self.on_line(name, line.rstrip("\n"))

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self) -> CommandResult:
        deadline = self._t0 + self.spec.timeout_seconds
        status, message = None, ""
        while True:
            try:
                self.proc.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                pass
            if self._cancel.is_set():
                status, message = CANCELLED, "cancelled: process group terminated"
                kill_group(self.pgid, self.grace_seconds)
            elif time.monotonic() >= deadline:
                status = TIMED_OUT
                message = (
                    f"timed out after {self.spec.timeout_seconds:g}s: process group sent SIGTERM, "
                    f"SIGKILL after {self.grace_seconds:g}s"
                )
                kill_group(self.pgid, self.grace_seconds)
        # Anything the command left behind in its group (background children) goes with it.
        if _group_alive(self.pgid):
            kill_group(self.pgid, min(self.grace_seconds, 1.0))
        for reader in self._readers:
            reader.join(timeout=5)
        exit_code = self.proc.returncode
        if status is None:
            status = SUCCEEDED if exit_code == 0 else FAILED
            if status == FAILED:
                message = f"exited with code {exit_code}"
        duration = time.monotonic() - self._t0
        return CommandResult(
            status=status,
            exit_code=exit_code,
            started_at=self.started_at,
            finished_at=utcnow(),
            duration_seconds=round(duration, 3),
            stdout_tail=self.tails["stdout"].text(),
            stderr_tail=self.tails["stderr"].text(),
            message=self.mask(message),
            pid=self.proc.pid,
        )


def run(spec: CommandSpec, **kwargs) -> CommandResult:
    """Start and wait; a command that cannot start (missing cwd or program) is a failed result."""
    try:
        running = RunningCommand(spec, **kwargs)
    except OSError as exc:
        now = utcnow()
        masker = Masker(spec.secrets)
        return CommandResult(FAILED, None, now, now, 0.0, "", masker(str(exc)),
                             masker(f"could not start: {exc}"))  # fmt: skip
    return running.wait()
