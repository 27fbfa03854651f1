"""Operator actions: run a command now, run it in N seconds, retry a failed run.

Each creates one ``command_run`` and returns its id. A ``request_key`` makes an action idempotent:
the same launchpad run (or a re-execution of it) asking again gets the same command run back.
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from orchestration.commands import models as m
from orchestration.commands.store import UnknownCommandRun, get_run
from orchestration.commands.timeutil import utcnow
from resources.db import SQLITE_WRITER

RETRYABLE = (m.FAILED, m.TIMED_OUT, m.CANCELLED, m.LOST)


class ActionError(ValueError):
    pass


def _existing(conn: sa.Connection, request_key: str | None) -> int | None:
    if request_key is None:
        return None
    return conn.execute(
        sa.select(m.command_runs.c.id).where(m.command_runs.c.request_key == request_key)
    ).scalar()


def _insert(conn: sa.Connection, values: dict) -> int:
    return conn.execute(m.command_runs.insert().values(**values)).inserted_primary_key[0]


def request_run(
    engine: sa.Engine,
    command: str,
    environment: str,
    *,
    in_seconds: float = 0,
    requested_by: str = "cli",
    request_key: str | None = None,
    status: str = m.PENDING,
    batch_key: str | None = None,
) -> int:
    """A new pending command run, due ``in_seconds`` from now. Disabled parts are refused."""
    if in_seconds < 0:
        raise ActionError("in_seconds must be >= 0")
    now = utcnow()
    # SQLite: a writer from BEGIN (reads, then writes; see resources.db.SQLITE_WRITER).
    with engine.execution_options(**SQLITE_WRITER).begin() as conn:
        found = _existing(conn, request_key)
        if found is not None:
            return found
        cmd = conn.execute(
            sa.select(m.commands.c.id, m.commands.c.enabled).where(m.commands.c.name == command)
        ).first()
        if cmd is None:
            raise ActionError(f"unknown command {command!r}")
        env = conn.execute(
            sa.select(m.environments.c.id, m.environments.c.enabled).where(
                m.environments.c.name == environment
            )
        ).first()
        if env is None:
            raise ActionError(f"unknown environment {environment!r}")
        if not cmd.enabled:
            raise ActionError(f"command {command!r} is disabled")
        if not env.enabled:
            raise ActionError(f"environment {environment!r} is disabled")
        return _insert(
            conn,
            {
                "command_id": cmd.id, "environment_id": env.id, "request_key": request_key,
                "requested_by": requested_by, "not_before": now + timedelta(seconds=in_seconds),
                "status": status, "attempt": 1, "created_at": now, "batch_key": batch_key,
            },
        )  # fmt: skip


def retry_run(
    engine: sa.Engine,
    run_id: int,
    *,
    requested_by: str = "cli",
    status: str = m.PENDING,
    batch_key: str | None = None,
) -> int:
    """A new run of the same command and environment, ``retry_of`` the failed one, attempt + 1.

    Retrying the same run again returns the retry already made (one retry per failed run; retry
    the retry for another attempt).
    """
    now = utcnow()
    with engine.execution_options(**SQLITE_WRITER).begin() as conn:  # reads, then writes
        try:
            original = get_run(conn, run_id)
        except UnknownCommandRun as exc:
            raise ActionError(str(exc)) from exc
        key = f"retry:{run_id}"
        found = _existing(conn, key)
        if found is not None:
            return found
        if original["status"] not in RETRYABLE:
            raise ActionError(
                f"command run {run_id} is {original['status']}; only "
                f"{', '.join(RETRYABLE)} runs can be retried"
            )
        return _insert(
            conn,
            {
                "command_id": original["command_id"],
                "environment_id": original["environment_id"],
                "request_key": key, "requested_by": requested_by, "not_before": now,
                "status": status, "attempt": original["attempt"] + 1, "retry_of": run_id,
                "created_at": now, "batch_key": batch_key,
            },
        )  # fmt: skip
