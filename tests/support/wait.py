"""The suite's one poll-until-true: generous bounds, event-based, never a fixed sleep.

A test waits for the thing it needs (a row, a run status, a log line) and fails with what it was
waiting for, so a slow machine only makes a test slower, never wrong.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 60.0


def wait_until(
    predicate: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "condition",
    interval: float = 0.05,
    alive: Callable[[], bool] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    ``alive`` (optional) is checked each round: when it turns false (a daemon exited, a server
    died) the wait fails at once instead of running out the clock. The failure names ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if alive is not None and not alive():
            value = predicate()
            if value:
                return value
            raise AssertionError(f"gave up waiting for {what}: the process it needs has exited")
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class InFlightGate:
    """Holds a server's answers until ``bound`` requests are in flight at once, then lets all go.

    A server's before-answer hook calls :meth:`arrive` with its current in-flight count. The test
    then knows its client's concurrency bound was reached however slow the machine (``full``), and
    a client that never gets there fails in ``timeout`` seconds (``timed_out``), not one per call.
    """

    def __init__(self, bound: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.bound = bound
        self.timeout = timeout
        self.full = threading.Event()
        self.timed_out = False

    def arrive(self, in_flight: int) -> None:
        if in_flight >= self.bound:
            self.full.set()
        if not self.full.wait(self.timeout):
            self.timed_out = True
            self.full.set()
