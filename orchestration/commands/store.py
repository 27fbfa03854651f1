"""Command-run state in the record store: every transition is a compare-and-set.

``claim_start`` moves a run to ``running`` only from ``queued`` (or a due ``pending``), so two
runners can never both start it; ``finish`` writes the outcome and its event in one transaction
and only from ``running`` — or from ``lost``: the reaper's ``lost`` is an inference (the worker
looked dead), the worker's own result is an observation, so a late real result replaces ``lost``
(both events stay in the history). ``mark_lost`` in turn only moves ``running`` → ``lost``, so it
can never overwrite a result that was recorded first.

A result the store refuses (a value PostgreSQL cannot hold) never leaves the run ``running``:
``finish`` records a minimal result instead (status, exit code, duration, "output could not be
stored: <reason>") and logs one warning line.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from orchestration.commands import models as m
from orchestration.commands.masking import printable
from orchestration.commands.runner import CommandResult, CommandSpec
from orchestration.commands.timeutil import as_utc, utcnow

log = logging.getLogger(__name__)
NOT_STORED = "output could not be stored"
INT32 = range(-(2**31), 2**31)  # the exit_code column (INTEGER) on PostgreSQL


class UnknownCommandRun(LookupError):
    pass


def get_run(conn_or_engine: sa.Engine | sa.Connection, run_id: int) -> dict[str, Any]:
    query = (
        sa.select(
            m.command_runs,
            m.commands.c.name.label("command_name"),
            m.environments.c.name.label("environment_name"),
        )
        .join(m.commands, m.commands.c.id == m.command_runs.c.command_id)
        .join(m.environments, m.environments.c.id == m.command_runs.c.environment_id)
        .where(m.command_runs.c.id == run_id)
    )
    if isinstance(conn_or_engine, sa.Engine):
        with conn_or_engine.connect() as conn:
            row = conn.execute(query).mappings().first()
    else:
        row = conn_or_engine.execute(query).mappings().first()
    if row is None:
        raise UnknownCommandRun(f"command run {run_id} does not exist")
    out = dict(row)
    for key in ("slot", "not_before", "created_at", "started_at", "finished_at"):
        out[key] = as_utc(out[key])
    return out


def events_for(engine: sa.Engine, run_id: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(m.command_run_events)
            .where(m.command_run_events.c.command_run_id == run_id)
            .order_by(m.command_run_events.c.id)
        ).mappings()
        return [dict(r) for r in rows]


def load_spec(engine: sa.Engine, run_id: int) -> CommandSpec:
    """The command, its environment's variables and which values are secret."""
    with engine.connect() as conn:
        run = get_run(conn, run_id)
        cmd = (
            conn.execute(sa.select(m.commands).where(m.commands.c.id == run["command_id"]))
            .mappings()
            .one()
        )
        variables = conn.execute(
            sa.select(m.variables.c.name, m.variables.c.value, m.variables.c.secret).where(
                m.variables.c.environment_id == run["environment_id"]
            )
        ).all()
    return CommandSpec(
        command_run_id=run_id,
        name=cmd["name"],
        environment=run["environment_name"],
        command=cmd["command"],
        timeout_seconds=float(cmd["timeout_seconds"]),
        use_shell=bool(cmd["use_shell"]),
        working_dir=cmd["working_dir"],
        variables={v.name: v.value for v in variables},
        secrets=[v.value for v in variables if v.secret],
    )


def _event(conn: sa.Connection, run_id: int, kind: str, **values: Any) -> None:
    conn.execute(
        m.command_run_events.insert().values(
            command_run_id=run_id, kind=kind, at=values.pop("at", None) or utcnow(), **values
        )
    )


def add_event(engine: sa.Engine, run_id: int, kind: str, **values: Any) -> None:
    with engine.begin() as conn:
        _event(conn, run_id, kind, **values)


def claim_start(engine: sa.Engine, run_id: int, dagster_run_id: str | None) -> bool:
    """queued (or due pending) → running; False when someone else has it or it is finished."""
    now = utcnow()
    t = m.command_runs
    with engine.begin() as conn:
        res = conn.execute(
            t.update()
            .where(
                t.c.id == run_id,
                sa.or_(
                    t.c.status == m.QUEUED,
                    sa.and_(t.c.status == m.PENDING, t.c.not_before <= now),
                ),
            )
            .values(
                status=m.RUNNING, started_at=now, dagster_run_id=dagster_run_id,
                heartbeat_at=now, worker_host=socket.gethostname(), pgid=None,
            )
        )  # fmt: skip
        if res.rowcount != 1:
            return False
        _event(conn, run_id, "started", at=now, message=f"dagster run {dagster_run_id}")
    return True


def record_process(engine: sa.Engine, run_id: int, pgid: int) -> None:
    """Where the command's process group is, so a reaper on this host can kill it if we die."""
    t = m.command_runs
    with engine.begin() as conn:
        conn.execute(t.update().where(t.c.id == run_id, t.c.status == m.RUNNING).values(pgid=pgid))


def heartbeat(engine: sa.Engine, run_ids: Iterable[int]) -> int:
    """One UPDATE for every command this worker is still running: "I am alive"."""
    ids = list(run_ids)
    if not ids:
        return 0
    t = m.command_runs
    with engine.begin() as conn:
        res = conn.execute(
            t.update().where(t.c.id.in_(ids), t.c.status == m.RUNNING).values(heartbeat_at=utcnow())
        )
    return res.rowcount


def mark_lost(engine: sa.Engine, run_id: int, message: str) -> bool:
    """running → lost with its event; False when a result (or another reaper) got there first."""
    t = m.command_runs
    now = utcnow()
    with engine.begin() as conn:
        res = conn.execute(
            t.update()
            .where(t.c.id == run_id, t.c.status == m.RUNNING)
            .values(status=m.LOST, finished_at=now)
        )
        if res.rowcount != 1:
            return False
        _event(conn, run_id, m.LOST, at=now, message=message)
    return True


def finish(engine: sa.Engine, run_id: int, result: CommandResult) -> bool:
    """Record the outcome (running or lost → its status) with its event; False when the run was
    not running (someone else finished it). Tails and message are made ``printable`` first; a
    result the store still refuses is recorded minimal (``_finish_minimal``), never left running.
    """
    try:
        return _finish(engine, run_id, _storable(result))
    except Exception as exc:  # the refused value; a store that is down fails the fallback too
        reason = _reason(exc)
        log.warning(
            "command run %s finished %s (exit code %s) but its %s (%s); recording it without "
            "output", run_id, result.status, result.exit_code, NOT_STORED, reason,
        )  # fmt: skip
        return _finish_minimal(engine, run_id, result, reason)


def _storable(result: CommandResult) -> CommandResult:
    return replace(
        result,
        stdout_tail=printable(result.stdout_tail or ""),
        stderr_tail=printable(result.stderr_tail or ""),
        message=printable(result.message or ""),
    )


def _reason(exc: BaseException) -> str:
    """One short line from the driver's error (never the SQL parameters: they hold the output)."""
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [""])[0]
    return printable(f"{type(orig).__name__}: {first}"[:200])


def _finish_minimal(engine: sa.Engine, run_id: int, result: CommandResult, reason: str) -> bool:
    """Status, times and what fits of exit code and duration; the tails are dropped."""
    code = result.exit_code if result.exit_code in INT32 else None
    duration = result.duration_seconds
    if duration is not None and not math.isfinite(duration):
        duration = None
    note = f"{NOT_STORED}: {reason}"
    if code != result.exit_code:
        note += f"; exit code {result.exit_code}"
    minimal = replace(
        result, exit_code=code, duration_seconds=duration, stdout_tail="", stderr_tail="",
        message=note if not result.message else f"{printable(result.message)[:500]} ({note})",
    )  # fmt: skip
    return _finish(engine, run_id, minimal)


def _finish(engine: sa.Engine, run_id: int, result: CommandResult) -> bool:
    t = m.command_runs
    with engine.begin() as conn:
        res = conn.execute(
            t.update()
            .where(t.c.id == run_id, t.c.status.in_([m.RUNNING, m.LOST]))
            .values(
                status=result.status,
                started_at=result.started_at,
                finished_at=result.finished_at,
                exit_code=result.exit_code,
                duration_seconds=result.duration_seconds,
            )
        )
        if res.rowcount != 1:
            return False
        _event(
            conn, run_id, result.status, at=result.finished_at, exit_code=result.exit_code,
            duration_seconds=result.duration_seconds, stdout_tail=result.stdout_tail,
            stderr_tail=result.stderr_tail, message=result.message or None,
        )  # fmt: skip
    return True


def cancel_unstarted(engine: sa.Engine, run_ids: list[int], message: str) -> int:
    """queued/pending → cancelled (a batch run that ended before reaching them)."""
    if not run_ids:
        return 0
    t = m.command_runs
    now = utcnow()
    n = 0
    with engine.begin() as conn:
        for run_id in run_ids:
            res = conn.execute(
                t.update()
                .where(t.c.id == run_id, t.c.status.in_([m.QUEUED, m.PENDING]))
                .values(status=m.CANCELLED, finished_at=now)
            )
            if res.rowcount == 1:
                _event(conn, run_id, m.CANCELLED, at=now, message=message)
                n += 1
    return n


@dataclass
class RunFilter:
    command: str | None = None
    environment: str | None = None
    status: str | None = None
    limit: int = 50


def list_runs(engine: sa.Engine, f: RunFilter) -> list[dict[str, Any]]:
    t = m.command_runs
    query = (
        sa.select(
            t.c.id,
            t.c.status,
            t.c.attempt,
            t.c.retry_of,
            t.c.slot,
            t.c.not_before,
            t.c.requested_by,
            t.c.started_at,
            t.c.exit_code,
            t.c.duration_seconds,
            t.c.dagster_run_id,
            m.commands.c.name.label("command"),
            m.environments.c.name.label("environment"),
        )
        .join(m.commands, m.commands.c.id == t.c.command_id)
        .join(m.environments, m.environments.c.id == t.c.environment_id)
        .order_by(t.c.id.desc())
        .limit(f.limit)
    )
    if f.command:
        query = query.where(m.commands.c.name == f.command)
    if f.environment:
        query = query.where(m.environments.c.name == f.environment)
    if f.status:
        query = query.where(t.c.status == f.status)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def fmt_time(value: datetime | None) -> str:
    value = as_utc(value)
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"
