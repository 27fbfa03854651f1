"""The suite's one poll-until-true: generous bounds, event-based, never a fixed sleep.

A test waits for the thing it needs (a row, a run status, a log line) and fails with what it was
waiting for, so a slow machine only makes a test slower, never wrong.
"""

from __future__ import annotations

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
