"""Progress for long steps: done/total, rate and ETA in the run log, and as final metadata.

Lines are rate-limited (one per ``every_seconds``, always the last) so a 100,000-item step does
not flood the event log, yet the UI shows movement while the step runs.
"""

import time
from collections.abc import Callable
from typing import Any


class Progress:
    """Done/total, rate and ETA lines, at most one per ``every_seconds`` (and always the last)."""

    def __init__(
        self,
        total: int,
        log: Callable[[str], None],
        label: str,
        every_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        """``clock`` (seconds, monotonic) is a seam: a test drives time through it to check the
        throttle at its real interval without sleeping."""
        self.total = total
        self.done = 0
        self.log = log
        self.label = label
        self.every = every_seconds
        self.clock = clock
        self.started = clock()
        self._last: float | None = None

    def tick(self, n: int = 1, log: Callable[[str], None] | None = None) -> None:
        """``n`` more done; ``log`` overrides the logger (another step of the same run)."""
        self.done += n
        now = self.clock()
        if self.done < self.total and self._last is not None and now - self._last < self.every:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-6)
        rate = self.done / elapsed
        remaining = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        (log or self.log)(
            f"{self.label}: {self.done}/{self.total} ({pct:.0f}%), {rate:.1f}/s, "
            f"ETA {remaining:.1f}s"
        )

    def update(self, done: int, log: Callable[[str], None] | None = None) -> None:
        """Set the absolute done count (never backwards), for counts observed from outside."""
        self.tick(max(done - self.done, 0), log)

    def metadata(self) -> dict[str, Any]:
        """Final numbers for ``add_output_metadata``."""
        elapsed = max(self.clock() - self.started, 1e-6)
        return {
            "done": self.done,
            "total": self.total,
            "seconds": round(elapsed, 3),
            "rate_per_second": round(self.done / elapsed, 2),
        }
