"""Runs a batch's commands concurrently while Dagster walks its steps one by one.

The batch job uses the in-process executor (a step costs milliseconds, not the 1-2 s of a
subprocess per step that the multiprocess executor pays, which would take minutes to start 500
commands on two cores). But the in-process executor runs steps sequentially, and one slow command
must not hold back the others. So the planning step hands every command run to this pool, which
starts them at once on a bounded thread pool (``max_parallel``); each command's own mapped step then
waits for *its* command, streams its output into the run log and reports its outcome. A step
re-executed on its own (or in another run) starts its command through the same ``ensure`` call.

While commands run, one heartbeat thread stamps ``heartbeat_at`` on all of them every
``heartbeat_seconds`` (one UPDATE), and each command's process group is recorded as soon as it
starts: if this process is SIGKILLed, the dispatch sensor's reaper (``reaper.py``) sees the silence,
marks the runs ``lost`` and kills the orphaned groups, and every process that left its group but
carries the run's ``COMMAND_RUN_TOKEN`` (``<dagster run id>/<command run id>``, set here).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from orchestration.commands import store
from orchestration.commands.runner import (
    DEFAULT_TAIL_BYTES,
    START_ERRORS,
    CommandResult,
    RunningCommand,
    could_not_start,
    run_token,
)

HEARTBEAT_SECONDS = 15.0
log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What happened to one command run, as seen by this process."""

    command_run_id: int
    started_here: bool
    result: CommandResult | None = None
    error: str | None = None


@dataclass
class Handle:
    command_run_id: int
    future: Future | None = None
    lines: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=2000))
    dropped: int = 0
    running: RunningCommand | None = None

    def on_line(self, stream: str, line: str) -> None:
        try:
            self.lines.put_nowait((stream, line))
        except queue.Full:
            self.dropped += 1


class CommandPool:
    def __init__(
        self,
        engine: sa.Engine,
        dagster_run_id: str | None,
        *,
        max_parallel: int = 32,
        grace_seconds: float = 5.0,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        read_size: int | None = None,
    ) -> None:
        self.engine = engine
        self.read_size = read_size
        self.heartbeat_seconds = heartbeat_seconds
        self._heart: threading.Thread | None = None
        self._stop_beat = threading.Event()
        self.dagster_run_id = dagster_run_id
        self.grace_seconds = grace_seconds
        self.tail_bytes = tail_bytes
        self._executor = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="command")
        self._handles: dict[int, Handle] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        # (ids, Progress) of the batch this run executes, set by its planning step (ops.py)
        self.batch: tuple[list[int], Any] | None = None

    def ensure(self, command_run_id: int) -> Handle:
        """The handle of this command run, submitting it on first use (idempotent)."""
        with self._lock:
            handle = self._handles.get(command_run_id)
            if handle is None:
                handle = Handle(command_run_id)
                handle.future = self._executor.submit(self._execute, handle)
                self._handles[command_run_id] = handle
                if self._heart is None:
                    self._heart = threading.Thread(
                        target=self._beat, name="command-heartbeat", daemon=True
                    )
                    self._heart.start()
            return handle

    def _beat(self) -> None:
        """Until shutdown: heartbeat every command of this pool that is still running."""
        while not self._stop_beat.wait(self.heartbeat_seconds):
            with self._lock:
                ids = [h.command_run_id for h in self._handles.values() if not h.future.done()]
            with contextlib.suppress(Exception):  # a missed beat is retried; never kill the run
                store.heartbeat(self.engine, ids)

    def _execute(self, handle: Handle) -> Outcome:
        run_id = handle.command_run_id
        if self._closing.is_set():
            return Outcome(run_id, False, error="the batch run stopped before this command began")
        if not store.claim_start(self.engine, run_id, self.dagster_run_id):
            return Outcome(run_id, False)
        spec = store.load_spec(self.engine, run_id)
        # the reaper rebuilds this from the row (dagster_run_id, id) to find escaped processes
        spec.run_token = run_token(self.dagster_run_id, run_id)
        try:
            running = RunningCommand(
                spec, on_line=handle.on_line, grace_seconds=self.grace_seconds,
                tail_bytes=self.tail_bytes, read_size=self.read_size,
            )  # fmt: skip
        except START_ERRORS as exc:
            result = could_not_start(spec, exc)
            store.finish(self.engine, run_id, result)
            return Outcome(run_id, True, result, error=result.message)
        handle.running = running
        try:
            store.record_process(self.engine, run_id, running.pgid)
        except Exception:  # the command runs either way; only orphan clean-up needs this
            log.exception("could not record the process group of command run %s", run_id)
        if self._closing.is_set():
            running.cancel()
        result = running.wait()
        store.finish(self.engine, run_id, result)
        return Outcome(run_id, True, result)

    def shutdown(self, cancel: bool) -> None:
        """Stop: with ``cancel``, every command still running is killed (recorded cancelled)."""
        if cancel:
            self._closing.set()
            with self._lock:
                for handle in self._handles.values():
                    if handle.running is not None:
                        handle.running.cancel()
        self._executor.shutdown(wait=True, cancel_futures=False)
        self._stop_beat.set()
