"""Cron slots: which minute a schedule is due in, evaluated in UTC.

A dispatch tick looks at the window since the previous tick and takes, per cron expression, only
the *latest* slot in it: a dispatcher that was down for an hour runs a missed slot once, not sixty
times. Expressions are parsed once per tick (many schedules share an expression).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from croniter import croniter

from orchestration.commands.timeutil import as_utc, minute_floor


class InvalidCron(ValueError):
    pass


def validate_cron(expr: str) -> str:
    """The expression, normalised; ``InvalidCron`` naming it when croniter refuses it.

    Only five-field (minute-resolution) expressions are accepted: the dispatcher ticks per minute.
    """
    text = " ".join(str(expr).split())
    if len(text.split(" ")) != 5:
        raise InvalidCron(
            f"invalid cron {expr!r}: expected 5 fields (minute hour day month weekday)"
        )
    if not croniter.is_valid(text):
        raise InvalidCron(f"invalid cron {expr!r}")
    return text


def latest_slot(expr: str, window_start: datetime, now: datetime) -> datetime | None:
    """The latest minute in ``(window_start, now]`` at which ``expr`` fires, or None.

    Slots are whole minutes; a slot equal to ``now``'s minute counts as due (a tick at 12:34:50
    runs the 12:34 slot).
    """
    now_minute = minute_floor(now)
    # croniter.get_prev is strictly before its start: start one minute past now's minute.
    prev = croniter(expr, now_minute + timedelta(minutes=1)).get_prev(datetime)
    prev = as_utc(prev)
    if prev is None or prev <= as_utc(window_start) or prev > now_minute:
        return None
    return prev


def is_due(expr: str, minute: datetime) -> bool:
    """Whether ``expr`` fires in the given minute (seconds ignored)."""
    return bool(croniter.match(expr, minute_floor(minute)))


class SlotCache:
    """``latest_slot`` memoised per expression for one tick's window."""

    def __init__(self, window_start: datetime, now: datetime) -> None:
        self.window_start = window_start
        self.now = now
        self._cache: dict[str, datetime | None] = {}

    def __call__(self, expr: str) -> datetime | None:
        if expr not in self._cache:
            self._cache[expr] = latest_slot(expr, self.window_start, self.now)
        return self._cache[expr]
