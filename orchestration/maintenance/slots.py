"""Slots: the day or month a maintenance run is *for*, and the idempotency keys derived from them.

A run's effect is identified by (job, slot), not by the run: the schedule, a daemon catching up
and an operator re-running a past slot from the launchpad all send the same key, so the platform
applies each slot at most once.
"""

from __future__ import annotations

import datetime as dt
import re

from resources.db import as_utc  # a schedule's execution time; naive values are UTC already
from resources.errors import FinalFailure

SLOT_TAG = "platform/slot"

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_MONTH = re.compile(r"\d{4}-\d{2}")


class SlotError(FinalFailure):
    """A slot that is not a valid date/month (shown plainly in the UI)."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def day_slot(moment: dt.datetime) -> str:
    """``YYYY-MM-DD`` of ``moment`` in UTC."""
    return as_utc(moment).date().isoformat()


def month_slot(moment: dt.datetime) -> str:
    """``YYYY-MM`` of ``moment`` in UTC."""
    return as_utc(moment).strftime("%Y-%m")


def parse_day(value: str) -> dt.date:
    """A ``YYYY-MM-DD`` slot as a date, or a SlotError naming the bad value."""
    text = (value or "").strip()
    if _DATE.fullmatch(text):
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            pass
    raise SlotError(f"Invalid date slot {value!r}: expected YYYY-MM-DD (UTC), e.g. 2026-11-23.")


def parse_month(value: str) -> str:
    """A ``YYYY-MM`` slot, validated, or a SlotError naming the bad value."""
    text = (value or "").strip()
    if _MONTH.fullmatch(text) and 1 <= int(text[5:]) <= 12:
        return text
    raise SlotError(f"Invalid month slot {value!r}: expected YYYY-MM (UTC), e.g. 2026-11.")


def resolve_day(value: str | None, now: dt.datetime | None = None) -> str:
    """The configured day, or today (UTC) when a manual run names none."""
    if value is None or not value.strip():
        return day_slot(now or utc_now())
    return parse_day(value).isoformat()


def resolve_month(value: str | None, now: dt.datetime | None = None) -> str:
    """The configured month, or this month (UTC) when a manual run names none."""
    if value is None or not value.strip():
        return month_slot(now or utc_now())
    return parse_month(value)


def idempotency_key(action: str, slot: str) -> str:
    """``<action>:<slot>``, e.g. ``quota-reset-daily:2026-11-23`` (PLATFORM_API.md)."""
    return f"{action}:{slot}"
