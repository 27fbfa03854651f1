"""The progress throttle at its real interval: "at most one line per 2 s, and always the last".

Time is driven through ``Progress``'s clock seam, so the 2 s interval is checked without sleeping
and without racing the machine: every line's time is known exactly. That the shipped jobs build
their ``Progress`` with this interval is checked where the jobs are run
(tests/commands/test_jobs.py).
"""

from __future__ import annotations

import itertools

from orchestration.policies.progress import Progress

EVERY = 2.0  # the interval the long steps ship with (the default of Progress)


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _throttled(total: int, every: float, clock: FakeClock) -> tuple[Progress, list]:
    """A ``Progress`` whose log records (clock time, line)."""
    lines: list[tuple[float, str]] = []
    return Progress(total, lambda line: lines.append((clock(), line)), "x", every, clock), lines


def test_lines_at_most_one_per_two_seconds_and_always_the_last():
    clock = FakeClock()
    every = EVERY
    progress, lines = _throttled(9, every, clock)
    progress.tick()  # t=0: the first line
    clock.advance(1.9)
    progress.tick()  # t=1.9: too soon
    clock.advance(0.1)
    progress.tick()  # t=2.0: a full interval since the first line
    for _ in range(5):  # t=2.5 .. 4.5: one more line, at t=4.0
        clock.advance(0.5)
        progress.tick()
    clock.advance(0.1)
    progress.tick()  # t=4.6: the last (9/9), logged however soon
    assert [(round(t - 1000.0, 3), line) for t, line in lines] == [
        (0.0, "x: 1/9 (11%), 1000000.0/s, ETA 0.0s"),
        (2.0, "x: 3/9 (33%), 1.5/s, ETA 4.0s"),
        (4.0, "x: 7/9 (78%), 1.8/s, ETA 1.1s"),
        (4.6, "x: 9/9 (100%), 2.0/s, ETA 0.0s"),
    ]
    assert progress.metadata() == {
        "done": 9,
        "total": 9,
        "seconds": 4.6,
        "rate_per_second": 1.96,
    }


def test_the_default_interval_is_the_shipped_one():
    """The archive and child-run steps build their Progress with the default interval."""
    assert Progress(1, print, "x").every == EVERY


def test_many_fast_ticks_never_log_two_lines_within_the_interval():
    """10,000 items finishing at uneven times over ~40 s: each line at least 2 s after the one
    before (the last excepted), and the step still shows movement (a line per interval)."""
    clock = FakeClock()
    every = EVERY
    progress, lines = _throttled(10_000, every, clock)
    steps = itertools.cycle([0.0, 0.001, 0.0, 0.013, 0.0071])  # ~4.3 ms per item on average
    for _ in range(10_000):
        clock.advance(next(steps))
        progress.tick()
    times = [t for t, _line in lines]
    gaps = [b - a for a, b in itertools.pairwise(times[:-1])]
    assert gaps and min(gaps) >= every
    assert max(gaps) < every + 0.014  # a line as soon as the interval is up (ticks ≤ 13 ms apart)
    assert lines[-1][1].startswith("x: 10000/10000 (100%)")
    assert len(lines) > 10  # ~40 s of work: movement shown all along


def test_update_counts_from_outside_and_never_goes_back():
    clock = FakeClock()
    progress, lines = _throttled(5, EVERY, clock)
    progress.update(2)
    clock.advance(2.0)
    progress.update(1)  # an older observation: no step back, still a line on the interval
    clock.advance(0.5)
    progress.update(5)
    assert [line.split(" (")[0] for _t, line in lines] == ["x: 2/5", "x: 2/5", "x: 5/5"]
