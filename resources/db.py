"""SQLAlchemy engines for the record store, without importing Dagster.

Kept free of Dagster so light processes (the gateway agent) start in a fraction of a second;
``resources.record_store`` builds on it.
"""

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa


def as_utc(value: datetime) -> datetime:
    """The record store keeps UTC, and SQLite hands datetimes back naive: a naive value is taken
    to be UTC, an aware one is converted. The one copy every area uses."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def normalize_url(url: str) -> str:
    """``postgresql://`` → psycopg2 explicitly, whatever SQLAlchemy's default driver is."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> sa.Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL: readers never block the one writer
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
