"""Runs one command as a subprocess: its environment's variables, a timeout, capped output.

Why it is built this way:
- Variables go in as *environment variables* of the child, never into the command text, so a value
  like ``$(rm -rf ~)`` or ``; reboot`` stays an inert string (the shell expands ``$NAME`` to the
  value but never re-parses it as code). The parent's own environment (platform secrets) is not
  inherited: only a small base (PATH, HOME, LANG, …) plus the variables.
- The child gets its own session/process group (``start_new_session=True``), so a timeout or a
  cancel signals the whole tree: SIGTERM, a grace period, then SIGKILL — a grandchild that ignores
  TERM dies too. Leftovers of a finished command are reaped the same way so none outlives it.
- A process can leave the group (``setsid``, a double fork), so the group is not enough: the child
  environment carries ``COMMAND_RUN_TOKEN`` (unique per command run: the Dagster run id, a uuid4,
  and the command run id), and ending a run also ends every process of this user whose
  /proc/<pid>/environ holds exactly that token. The reaper (another process, after the worker
  died) can rebuild the token from the row, which a subreaper could not give it.
- Output is read in chunks of ``read_size`` on two threads and masked over the *stream*
  (``masking.MaskedLines``: a secret straddling two reads is still masked whole), then handed line
  by line to an ``on_line`` callback (the Dagster step streams it to the run log) and kept as a
  capped tail. Everything downstream (run log, tails in the store, step metadata) is built from
  this masked text only, made ``printable`` after masking (a NUL byte, ``find -print0``, binary
  output: PostgreSQL text refuses NUL, and a terminal obeys ESC), as are messages.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from orchestration.commands.masking import MaskedLines, mask_text, printable
from orchestration.commands.models import CANCELLED, FAILED, SUCCEEDED, TIMED_OUT
from orchestration.commands.timeutil import utcnow

DEFAULT_TAIL_BYTES = 64 * 1024
BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL")
READ_SIZE = 64 * 1024  # bytes per read of a pipe; also the longest line handed on in one piece
TOKEN_VAR = "COMMAND_RUN_TOKEN"
PROC = "/proc"


class Masker:
    """Masks a whole text (a message, an exception) the way the output stream is masked, then
    makes it ``printable`` (storable, no control characters)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = [s for s in secrets if s]

    def __call__(self, text: str) -> str:
        return printable(mask_text(text, self.secrets))


def run_token(dagster_run_id: str | None, command_run_id: int) -> str:
    """The value of ``COMMAND_RUN_TOKEN``: unique per command run, rebuilt by the reaper from the
    row. Without a Dagster run id it is random (only this process can then find the run's
    processes)."""
    return f"{dagster_run_id or 'local-' + uuid.uuid4().hex}/{command_run_id}"


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
    run_token: str = ""  # COMMAND_RUN_TOKEN; a random one when not given (see run_token())

    def __post_init__(self) -> None:
        if not self.run_token:
            self.run_token = run_token(None, self.command_run_id)

    def argv(self) -> list[str]:
        return ["/bin/sh", "-c", self.command] if self.use_shell else shlex.split(self.command)

    def child_env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
        env.update(self.variables)
        env.update(
            COMMAND_RUN_ID=str(self.command_run_id),
            COMMAND_NAME=self.name,
            COMMAND_ENVIRONMENT=self.environment,
            COMMAND_RUN_TOKEN=self.run_token,
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


def _proc_pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir(PROC) if name.isdigit()]
    except OSError:
        return []


def _member(pid: int, pgid: int) -> bool:
    """Live (non-zombie) member of process group ``pgid``, from /proc/<pid>/stat."""
    try:
        with open(f"{PROC}/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp ...
    return fields[0] != "Z" and int(fields[2]) == pgid


def _carries(pid: int, needle: bytes, uid: int) -> bool:
    """This user's process whose environment holds exactly ``needle`` (a zombie has none).

    The environment is read first and the owner checked only on a match: one stat call per
    match instead of per process (this runs after every command exits).
    """
    try:
        with open(f"{PROC}/{pid}/environ", "rb", buffering=0) as f:
            environ = f.read()
        return (
            needle in environ
            and needle in environ.split(b"\0")
            and os.stat(f"{PROC}/{pid}").st_uid == uid
        )
    except OSError:
        return False


def _scan(pgid: int | None, token: str | None) -> tuple[list[int], list[int]]:
    """One pass over /proc: (live members of group ``pgid``, processes carrying ``token``).

    The token is matched exactly (never a prefix), only in this user's processes, never this
    process. A group that ``killpg(pgid, 0)`` says is empty is not looked for at all.
    """
    if pgid and not _signal_group(pgid, 0):
        pgid = None
    if not pgid and not token:
        return [], []
    needle = f"{TOKEN_VAR}={token}".encode() if token else b""
    uid, me = os.getuid(), os.getpid()
    members, carriers = [], []
    for pid in _proc_pids():
        if pgid and _member(pid, pgid):
            members.append(pid)
        if token and pid != me and _carries(pid, needle, uid):
            carriers.append(pid)
    return members, carriers


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``, from /proc (Linux)."""
    return _scan(pgid, None)[0]


def token_processes(token: str) -> list[int]:
    """Live processes of this user whose environment holds exactly ``COMMAND_RUN_TOKEN=<token>``."""
    return _scan(None, token)[1]


@dataclass
class Ended:
    """What ``end_processes`` found and did."""

    group: bool  # the process group had live members
    escaped: int  # processes carrying the token outside the group
    killed: bool  # something was still alive after the grace and got SIGKILL

    def __bool__(self) -> bool:
        return self.group or bool(self.escaped)


def _alive(pgid: int | None, token: str | None) -> tuple[list[int], list[int]]:
    if os.path.isdir(PROC):
        return _scan(pgid, token)
    # no /proc: the group only (zombies then count as alive until the grace ends)
    return ([pgid] if pgid and _signal_group(pgid, 0) else []), []


def _signal_all(pgid: int | None, carriers: list[int], sig: int) -> None:
    if pgid:
        _signal_group(pgid, sig)
    for pid in carriers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def end_processes(pgid: int | None, token: str | None, grace_seconds: float) -> Ended:
    """SIGTERM the group and every process carrying the token, SIGKILL what is left after the grace.

    Every round scans /proc again, so a process forked (or re-parented) meanwhile is caught too.
    """
    members, carriers = _alive(pgid, token)
    ended = Ended(bool(members), len(set(carriers) - set(members)), killed=False)
    if not ended:
        return ended
    _signal_all(pgid, carriers, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        members, carriers = _alive(pgid, token)
        if not members and not carriers:
            return ended
        _signal_all(None, carriers, signal.SIGTERM)  # one forked since the last round
        time.sleep(0.02)
    for _ in range(10):  # a fork racing a round is caught by the next one
        members, carriers = _alive(pgid, token)
        if not members and not carriers:
            break
        ended.killed = True
        _signal_all(pgid, carriers, signal.SIGKILL)
        time.sleep(0.02)
    return ended


def kill_group(pgid: int, grace_seconds: float) -> None:
    """SIGTERM to the whole group, then SIGKILL whatever is still there after the grace."""
    end_processes(pgid, None, grace_seconds)


class RunningCommand:
    """One started command; ``wait()`` returns its result; ``cancel()`` is thread-safe."""

    def __init__(
        self,
        spec: CommandSpec,
        *,
        on_line: Callable[[str, str], None] | None = None,
        grace_seconds: float = 5.0,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
        read_size: int | None = None,
    ) -> None:
        self.spec = spec
        self.on_line = on_line
        self.grace_seconds = grace_seconds
        self.read_size = read_size or READ_SIZE
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
        stream = MaskedLines(self.spec.secrets, max_line=self.read_size)
        with pipe:
            while raw := pipe.read1(self.read_size):
                self._emit(name, stream.feed(raw))
        self._emit(name, stream.close())

    def _emit(self, name: str, lines: list[str]) -> None:
        """Masked lines only: to the tail and to ``on_line`` (the run log)."""
        for line in lines:
            self.tails[name].add(line)
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
                end_processes(self.pgid, self.spec.run_token, self.grace_seconds)
            elif time.monotonic() >= deadline:
                status = TIMED_OUT
                message = (
                    f"timed out after {self.spec.timeout_seconds:g}s: process group and every "
                    f"process carrying its {TOKEN_VAR} sent SIGTERM, "
                    f"SIGKILL after {self.grace_seconds:g}s"
                )
                end_processes(self.pgid, self.spec.run_token, self.grace_seconds)
        # Anything the command left behind (background children, in its group or escaped from
        # it with setsid / a double fork) goes with it.
        end_processes(self.pgid, self.spec.run_token, min(self.grace_seconds, 1.0))
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


def could_not_start(spec: CommandSpec, exc: Exception) -> CommandResult:
    """The failed result of a command whose process never began (missing cwd or program, or a
    value ``execve`` refuses such as a NUL byte stored before the catalog schema refused it)."""
    now = utcnow()
    masker = Masker(spec.secrets)
    return CommandResult(FAILED, None, now, now, 0.0, "", masker(str(exc)),
                         masker(f"could not start: {exc}"))  # fmt: skip


# What ``subprocess.Popen`` raises for a command that cannot begin: OSError for the program or
# cwd, ValueError for an argument or environment value with an embedded NUL byte.
START_ERRORS = (OSError, ValueError)


def run(spec: CommandSpec, **kwargs) -> CommandResult:
    """Start and wait; a command that cannot start is a failed result, never a stuck run."""
    try:
        running = RunningCommand(spec, **kwargs)
    except START_ERRORS as exc:
        return could_not_start(spec, exc)
    return running.wait()
