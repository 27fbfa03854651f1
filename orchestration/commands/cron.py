"""Cron slots: which minute a schedule is due in, evaluated in UTC.

A dispatch tick looks at the window since the previous tick and takes, per cron expression, only
the *latest* slot in it: a dispatcher that was down for an hour runs a missed slot once, not sixty
times. Expressions are parsed once per tick (many schedules share an expression).

``validate_cron`` runs the very croniter calls the dispatcher makes (``get_next``, ``get_prev``,
``match``) on the expression, so an expression it accepts can never raise at dispatch. In
particular a cron that can never fire (``0 0 30 2 *``: February has no 30th) is refused: croniter
accepts its syntax but raises when asked for a slot.

croniter (with dateutil, ~15 ms) is imported by the functions that evaluate an expression: the code
location loads this module for every run, and only dispatch and validation use it.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from orchestration.commands.timeutil import as_utc, minute_floor, utcnow

# The longest gap between two fire times of an expression that fires at all: Feb 29 skips the
# century years that are not leap years (2096 -> 2104), so 8 years; 9 leaves a margin.
MAX_YEARS_BETWEEN_FIRES = 9
# Shorthands croniter understands, spelled out: what is stored is always five fields.
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# croniter extensions that are not cron: R (a random value chosen anew on every parse, so each
# tick would see another slot) and H (needs a hash id we do not pass).
# A lone R or H token (not the R of MAR or the H of THU).
_NON_CRON = re.compile(r"(?<![A-Za-z])[RrHh](?![A-Za-z])")


class InvalidCron(ValueError):
    pass


def normalize(expr: str) -> str:
    """Whitespace collapsed and aliases spelled out; ``InvalidCron`` for the wrong shape.

    String work only (cheap): the dispatcher runs it on every expression it reads, so a row that
    bypassed validation (six fields, ``R``) is reported rather than silently never run.
    """
    if not isinstance(expr, str):
        raise InvalidCron(f"invalid cron {expr!r}: must be a string such as '0 3 * * *'")
    text = " ".join(expr.split())
    text = ALIASES.get(text.lower(), text)
    if len(text.split(" ")) != 5:
        raise InvalidCron(
            f"invalid cron {expr!r}: expected 5 fields (minute hour day month weekday)"
            f" or one of {', '.join(ALIASES)}"
        )
    if _NON_CRON.search(text):
        raise InvalidCron(f"invalid cron {expr!r}: R and H are croniter extensions, not cron")
    return text


def validate_cron(expr: str) -> str:
    """The expression, normalised; ``InvalidCron`` naming it when it is refused.

    Only five-field (minute-resolution) expressions are accepted (the dispatcher ticks per minute)
    or an ``@daily``-style alias (stored as its five fields), and only ones that fire at least
    once: the expression is run through the same croniter calls as at dispatch.
    """
    from croniter import croniter

    text = normalize(expr)
    try:
        valid = croniter.is_valid(text)
    except Exception:  # croniter raises assorted types on odd input
        valid = False
    if not valid:
        raise InvalidCron(
            f"invalid cron {expr!r}: fields are minute 0-59, hour 0-23, day 1-31 or L, "
            "month 1-12 or JAN-DEC, weekday 0-7 or SUN-SAT (with * , - /)"
        )
    _check_fires(expr, text)
    return text


def _check_fires(expr: str, text: str) -> None:
    """``InvalidCron`` unless ``text`` fires before and after now (what dispatch will ask)."""
    from croniter import CroniterBadDateError, CroniterError, croniter

    now = minute_floor(utcnow())
    try:
        croniter(text, now, max_years_between_matches=MAX_YEARS_BETWEEN_FIRES).get_next(datetime)
        croniter(text, now, max_years_between_matches=MAX_YEARS_BETWEEN_FIRES).get_prev(datetime)
        croniter.match(text, now)
    except CroniterBadDateError:
        raise InvalidCron(
            f"cron {expr!r} never fires (no such date, e.g. February 30 or April 31): "
            "fix the day or month"
        ) from None
    except (CroniterError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise InvalidCron(f"invalid cron {expr!r}: {exc}") from None


def latest_slot(expr: str, window_start: datetime, now: datetime) -> datetime | None:
    """The latest minute in ``(window_start, now]`` at which ``expr`` fires, or None.

    Slots are whole minutes; a slot equal to ``now``'s minute counts as due (a tick at 12:34:50
    runs the 12:34 slot).
    """
    from croniter import croniter

    now_minute = minute_floor(now)
    # croniter.get_prev is strictly before its start: start one minute past now's minute.
    prev = croniter(expr, now_minute + timedelta(minutes=1)).get_prev(datetime)
    prev = as_utc(prev)
    if prev is None or prev <= as_utc(window_start) or prev > now_minute:
        return None
    return prev


def is_due(expr: str, minute: datetime) -> bool:
    """Whether ``expr`` fires in the given minute (seconds ignored)."""
    from croniter import croniter

    return bool(croniter.match(expr, minute_floor(minute)))


class SlotCache:
    """``latest_slot`` memoised per expression for one tick's window.

    An expression that raises is memoised too (and raised again for every schedule using it), so
    one bad expression costs one croniter call per tick and fails only its own schedules.
    """

    def __init__(self, window_start: datetime, now: datetime) -> None:
        self.window_start = window_start
        self.now = now
        self._cache: dict[str, datetime | Exception | None] = {}

    def __call__(self, expr: str) -> datetime | None:
        if expr not in self._cache:
            try:
                self._cache[expr] = latest_slot(normalize(expr), self.window_start, self.now)
            except Exception as exc:  # recorded per schedule by the caller
                self._cache[expr] = exc
        found = self._cache[expr]
        if isinstance(found, Exception):
            raise found
        return found
