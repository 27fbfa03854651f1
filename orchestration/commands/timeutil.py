"""UTC helpers: the record store keeps UTC; SQLite hands datetimes back naive."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """A naive value from SQLite is UTC; an aware one is converted to UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def minute_floor(value: datetime) -> datetime:
    return as_utc(value).replace(second=0, microsecond=0)
