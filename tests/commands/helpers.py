"""Seeding helpers for the command-scheduler tests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from orchestration.commands import catalog
from orchestration.commands import models as m

T0 = datetime(2026, 1, 1, 12, 34, 0, tzinfo=UTC)


def seed(engine: sa.Engine, data: dict) -> catalog.SyncResult:
    return catalog.apply(engine, catalog.parse_catalog(data), prune=True)


def backdate_schedules(engine: sa.Engine, when: datetime = datetime(2020, 1, 1, tzinfo=UTC)):
    """Schedules created "long ago", so slots at the fixed test times count."""
    with engine.begin() as conn:
        conn.execute(m.schedules.update().values(created_at=when))


def count_runs(engine: sa.Engine, **where) -> int:
    q = sa.select(sa.func.count()).select_from(m.command_runs)
    for k, v in where.items():
        q = q.where(getattr(m.command_runs.c, k) == v)
    with engine.connect() as conn:
        return conn.execute(q).scalar_one()


def simple_catalog(cron: str = "34 12 * * *", command: str = "echo hi") -> dict:
    return {
        "environments": [{"name": "staging", "variables": {"X": "1"}}],
        "commands": [{"name": "hello", "command": command, "timeout_seconds": 30}],
        "schedules": [
            {"name": "s1", "command": "hello", "environments": ["staging"], "cron": cron}
        ],
    }


def running_row(engine: sa.Engine) -> dict | None:
    """The command run that is running with its process group recorded, if there is one yet."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(m.command_runs).where(
                m.command_runs.c.status == m.RUNNING, m.command_runs.c.pgid.is_not(None)
            )
        ).mappings().first()  # fmt: skip
    return dict(row) if row is not None else None


def gated_command(gate: Path, then: str = ":") -> str:
    """A shell command that waits (at most 120 s) for ``gate`` to exist, then runs ``then``: the
    test decides when a command may finish, instead of a sleep guessing how long it takes."""
    return f"i=0; while [ ! -e {gate} ] && [ $i -lt 2400 ]; do sleep 0.05; i=$((i+1)); done; {then}"
