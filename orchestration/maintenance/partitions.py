"""Slots: the day or month a maintenance run is *for*, as Dagster partitions.

The daily jobs are partitioned by UTC day (``YYYY-MM-DD``), ``quota_monthly`` by UTC month
(``YYYY-MM``). A run's effect is identified by (job, slot), not by the run: the schedule, a
backfill from the UI's partition view and an operator re-running a slot all send the same
idempotency key, so the platform applies each slot at most once.

``end_offset=1`` makes the partition that is *in progress* the last one: a tick at 00:00 on
2026-11-23 (or 01:00, 02:00, 08:00) targets ``2026-11-23``, the day that begins at (or before) the
tick, and the monthly tick at 00:05 on the 1st targets the month that has just begun. That is
what the platform expects (Dagster's default would target the last *complete* day, yesterday).

Partitions start on :data:`PARTITIONS_START` (UTC): far enough back to backfill this year's days
from the partition view. A run without a partition (``dagster job execute`` without a
``dagster/partition`` tag, a launchpad run with no partition picked) names its slot in the op
config (``date`` / ``month``) or runs for today / this month, as before partitions existed; that
is also how a slot before the partitions' start is run.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

import dagster as dg

from resources.errors import FinalFailure

SLOT_TAG = "platform/slot"  # also on runs without a partition; equals dagster/partition if any

PARTITIONS_START = dt.date(2026, 1, 1)
TIMEZONE = "UTC"

DAILY = dg.DailyPartitionsDefinition(
    start_date=PARTITIONS_START.isoformat(), timezone=TIMEZONE, end_offset=1
)
MONTHLY = dg.MonthlyPartitionsDefinition(
    start_date=PARTITIONS_START.strftime("%Y-%m"), fmt="%Y-%m", timezone=TIMEZONE, end_offset=1
)

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_MONTH = re.compile(r"\d{4}-\d{2}")


class SlotError(FinalFailure):
    """A slot that is not a valid date/month, or a config that contradicts the partition."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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


def resolve_day(
    partition_key: str | None, configured: str | None, now: dt.datetime | None = None
) -> str:
    """The run's day: its partition, else the configured ``date``, else today (UTC)."""
    today = (now or utc_now()).astimezone(dt.UTC).date().isoformat()
    return _resolve(partition_key, configured, "date", parse_day, today)


def resolve_month(
    partition_key: str | None, configured: str | None, now: dt.datetime | None = None
) -> str:
    """The run's month: its partition, else the configured ``month``, else this month (UTC)."""
    this_month = (now or utc_now()).astimezone(dt.UTC).strftime("%Y-%m")
    return _resolve(partition_key, configured, "month", parse_month, this_month)


def _resolve(
    partition_key: str | None,
    configured: str | None,
    field: str,
    parse: Callable[[str], object],
    default: str,
) -> str:
    wanted = str(parse(configured)) if configured is not None and configured.strip() else None
    if partition_key is None:
        return wanted or default
    key = str(parse(partition_key))
    if wanted is not None and wanted != key:
        # Two slots for one run: refuse rather than pick one silently.
        raise SlotError(
            f"Partition {key} and config {field} {wanted} disagree: clear the {field} "
            f"(the partition is the slot) or run partition {wanted}. Nothing was sent."
        )
    return key


def idempotency_key(action: str, slot: str) -> str:
    """``<action>:<slot>``, e.g. ``quota-reset-daily:2026-11-23`` (PLATFORM_API.md)."""
    return f"{action}:{slot}"
