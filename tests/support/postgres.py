"""A database of its own on the test server, for Dagster's PostgreSQL storage.

A database, not a schema: dagster-postgres has no schema setting and creates its tables (and checks
its Alembic revision) in the connection's default schema, so only a database keeps two instances
(or two test runs) apart.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa


def admin_engine(pg_url: str) -> sa.Engine:
    """An autocommit engine on the server (CREATE/DROP DATABASE cannot run in a transaction)."""
    return sa.create_engine(
        pg_url.replace("postgresql://", "postgresql+psycopg2://", 1), isolation_level="AUTOCOMMIT"
    )


@contextmanager
def fresh_database(pg_url: str, prefix: str = "dagster") -> Iterator[str]:
    """A new, empty database ``<prefix>_<random>``: its URL; dropped (sessions and all) after."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = admin_engine(pg_url)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def blocked_by(
    conn: sa.Connection,
    blocker: int,
    application_name: str | None = None,
    waiter: int | None = None,
) -> int | None:
    """The pid of a session waiting on a lock ``blocker`` holds (``pg_blocking_pids``), if any.

    ``application_name`` narrows it to the code under test (its engine sets the name in its URL),
    ``waiter`` to one known session. A test waits on this (``wait_until``) to know a session is
    really blocked before it lets the holder go, instead of sleeping and hoping.
    """
    return conn.execute(
        sa.text(
            "SELECT pid FROM pg_stat_activity WHERE :blocker = ANY(pg_blocking_pids(pid)) "
            "AND (CAST(:app AS text) IS NULL OR application_name = :app) "
            "AND (CAST(:waiter AS int) IS NULL OR pid = :waiter)"
        ),
        {"blocker": blocker, "app": application_name, "waiter": waiter},
    ).scalar()
