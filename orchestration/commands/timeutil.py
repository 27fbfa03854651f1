"""UTC helpers: the record store keeps UTC; SQLite hands datetimes back naive."""

from __future__ import annotations

from datetime import UTC, datetime

from resources import db


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """``resources.db.as_utc`` that lets None through (nullable columns)."""
    return None if value is None else db.as_utc(value)


def minute_floor(value: datetime) -> datetime:
    return as_utc(value).replace(second=0, microsecond=0)
