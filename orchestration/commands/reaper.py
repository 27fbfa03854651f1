"""The reaper: command runs whose worker died are closed with an actionable event, never left open.

A Dagster run killed with SIGKILL (or a worker host that dies) cannot record anything, so its
command runs would stay ``running`` — and its batch's unstarted runs ``queued`` — forever. The
dispatch sensor calls ``reap`` on every tick (one indexed query on ``status``; Dagster is asked
only about the runs that query returns, in one call):

- ``running`` whose heartbeat is stale (``STALE_AFTER``, four missed beats) **and** whose Dagster
  run has ended (SUCCESS/FAILURE/CANCELED without the outcome recorded) or no longer exists, or —
  with the Dagster run still "started", as after a SIGKILL without run monitoring — that has been
  running longer than its timeout + ``LOST_GRACE``: → ``lost`` with an event "worker lost: …
  retry with `platform-ops-commands retry <id>`". A fresh heartbeat always means "alive": never
  reaped.
- ``queued`` in a batch whose Dagster run has ended (or vanished) without starting them:
  → ``cancelled`` (nothing ran, so nothing is unknown).

Which write wins: ``mark_lost`` is a compare-and-set from ``running``, so a result recorded first is
never overwritten; a real result arriving *after* ``lost`` replaces it (``store.finish`` accepts
``lost``), because the worker's observation beats the reaper's inference. Nothing is lost either
way: both events stay in ``command_run_events``.

Orphans: the command runs in its own session, so SIGKILLing the worker leaves its process group
running. The runner records the group (``pgid``) and host; a reaper on the same host kills the group
(SIGTERM, then SIGKILL after a grace) once it has marked the run lost — only after checking in /proc
that the group's processes carry ``COMMAND_RUN_ID=<id>``, so a recycled pgid is never touched.
Processes that left the group (``setsid``, a double fork) are found by their environment: every
process of this user whose /proc/<pid>/environ holds exactly ``COMMAND_RUN_TOKEN=<dagster run
id>/<id>`` (``runner.run_token``, rebuilt from the row) is ended with the group.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from orchestration.commands import models as m
from orchestration.commands import store
from orchestration.commands.runner import end_processes, group_members, run_token, token_processes
from orchestration.commands.timeutil import as_utc

STALE_AFTER = timedelta(seconds=60)  # 4 x the pool's 15 s heartbeat
LOST_GRACE = timedelta(minutes=10)  # beyond the command's own timeout (and its kill grace)
UNSTARTED_AFTER = timedelta(minutes=10)  # a queued batch whose run vanished
KILL_GRACE_SECONDS = 5.0
FINISHED = {
    dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED,
}  # fmt: skip
PROC = Path("/proc")


@dataclass
class Reaped:
    command_run_id: int
    status: str  # lost | cancelled
    message: str
    orphans: str = ""  # what happened to the orphaned process group, if any


def _retry_hint(run_id: int) -> str:
    return f"retry with `platform-ops-commands retry {run_id}`"


def _silent_for(row: dict, now: datetime) -> timedelta:
    last = as_utc(row["heartbeat_at"]) or as_utc(row["started_at"])
    return now - last if last else STALE_AFTER


def lost_reason(row: dict, dagster_status: dg.DagsterRunStatus | None, now: datetime) -> str | None:
    """Why this running command run is lost, or None while its worker may still be alive."""
    started = as_utc(row["started_at"]) or now
    last = as_utc(row["heartbeat_at"]) or started
    if now - last < STALE_AFTER:
        return None
    run_id, rid = row["id"], row["dagster_run_id"]
    if rid and dagster_status is None:
        return (
            f"worker lost: Dagster run {rid} no longer exists and the command never reported; "
            + _retry_hint(run_id)
        )
    if dagster_status in FINISHED:
        return (
            f"worker lost: Dagster run {rid} ended {dagster_status.value} before the command "
            f"reported; " + _retry_hint(run_id)
        )
    limit = timedelta(seconds=row["timeout_seconds"]) + LOST_GRACE
    if now - started > limit:
        state = dagster_status.value if dagster_status else "unknown"
        who = f"Dagster run {rid} is still {state}" if rid else "no Dagster run recorded"
        return (
            f"worker lost: {who} but sent no heartbeat for {int((now - last).total_seconds())}s; "
            f"the command has run {int((now - started).total_seconds())}s, past its "
            f"{row['timeout_seconds']}s timeout + {int(LOST_GRACE.total_seconds())}s grace; "
            + _retry_hint(run_id)
        )
    return None


def _running_rows(conn: sa.Connection) -> list[dict]:
    t = m.command_runs
    columns = (
        t.c.id, t.c.dagster_run_id, t.c.started_at, t.c.heartbeat_at, t.c.worker_host, t.c.pgid,
        m.commands.c.timeout_seconds,
    )  # fmt: skip
    query = (
        sa.select(*columns)
        .join(m.commands, m.commands.c.id == t.c.command_id)
        .where(t.c.status == m.RUNNING)  # command_runs_status_idx
    )
    return [dict(r) for r in conn.execute(query).mappings()]


def _queued_rows(conn: sa.Connection) -> list[dict]:
    t = m.command_runs
    query = sa.select(t.c.id, t.c.batch_key, t.c.created_at).where(
        t.c.status == m.QUEUED, t.c.batch_key.like("run:%")
    )
    return [dict(r) for r in conn.execute(query).mappings()]


def dagster_statuses(
    instance: dg.DagsterInstance, run_ids: set[str]
) -> dict[str, dg.DagsterRunStatus]:
    """Status of each Dagster run that exists (missing ones are absent)."""
    out: dict[str, dg.DagsterRunStatus] = {}
    ids = sorted(run_ids)
    for start in range(0, len(ids), 100):
        for run in instance.get_runs(dg.RunsFilter(run_ids=ids[start : start + 100])):
            out[run.run_id] = run.status
    return out


# --- orphaned process groups -------------------------------------------------------------------


def _belongs_to(pid: int, command_run_id: int) -> bool:
    try:
        environ = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return False
    return f"COMMAND_RUN_ID={command_run_id}".encode() in environ.split(b"\0")


def _group_part(command_run_id: int, pgid: int | None) -> tuple[int | None, str]:
    """(the group to kill or None, what is said about the group)."""
    if not pgid:
        return None, "no process group recorded"
    members = group_members(pgid)
    if not members:
        return None, f"process group {pgid} already gone"
    if not any(_belongs_to(pid, command_run_id) for pid in members):
        return None, f"process group {pgid} belongs to another program now; not killed"
    return pgid, ""


def kill_orphans(
    command_run_id: int,
    pgid: int | None,
    host: str | None,
    grace_seconds: float,
    token: str | None = None,
) -> str:
    """Kill what a dead worker left behind: its command's process group and every process carrying
    the run's ``token`` (those that left the group); says what it did (for the event)."""
    if host and host != socket.gethostname():
        return f"process group {pgid} is on host {host}; not killed from here"
    if not PROC.is_dir():
        return f"process group {pgid} not checked (no /proc)"
    group, said = _group_part(command_run_id, pgid)
    if group is None and not (token and token_processes(token)):
        return said
    ended = end_processes(group, token, grace_seconds)
    how = f"SIGKILL after {grace_seconds:g}s" if ended.killed else "SIGTERM"
    parts = [said] if said else []
    if group is not None:
        verb = "killed" if ended.killed else "terminated"
        parts.append(f"orphaned process group {pgid} {verb} ({how})")
    if ended.escaped:
        verb = "killed" if ended.killed else "terminated"
        parts.append(
            f"{ended.escaped} process(es) that left the group (same COMMAND_RUN_TOKEN) {verb}"
            + ("" if group is not None else f" ({how})")
        )
    return "; ".join(parts)


# --- the tick ----------------------------------------------------------------------------------


def reap(
    instance: dg.DagsterInstance,
    engine: sa.Engine,
    now: datetime,
    *,
    kill_grace_seconds: float = KILL_GRACE_SECONDS,
) -> list[Reaped]:
    """Close every command run whose worker is gone (see the module docstring)."""
    with engine.connect() as conn:
        # a fresh heartbeat means alive: only the silent ones are worth asking Dagster about
        running = [r for r in _running_rows(conn) if _silent_for(r, now) >= STALE_AFTER]
        queued = _queued_rows(conn)
    if not running and not queued:
        return []
    wanted = {r["dagster_run_id"] for r in running if r["dagster_run_id"]}
    wanted |= {r["batch_key"][len("run:") :] for r in queued}
    statuses = dagster_statuses(instance, wanted)
    reaped: list[Reaped] = []
    for row in running:
        reason = lost_reason(row, statuses.get(row["dagster_run_id"]), now)
        if reason is None or not store.mark_lost(engine, row["id"], reason):
            continue
        token = run_token(row["dagster_run_id"], row["id"]) if row["dagster_run_id"] else None
        orphans = kill_orphans(
            row["id"], row["pgid"], row["worker_host"], kill_grace_seconds, token=token
        )
        store.add_event(engine, row["id"], "reaped", message=orphans)
        reaped.append(Reaped(row["id"], m.LOST, reason, orphans))
    for row in queued:
        rid = row["batch_key"][len("run:") :]
        status = statuses.get(rid)
        if status in FINISHED:
            why = f"Dagster run {rid} ended {status.value} before starting it"
        elif status is None and now - as_utc(row["created_at"]) > UNSTARTED_AFTER:
            why = f"Dagster run {rid} no longer exists and never started it"
        else:
            continue
        message = f"{why}; {_retry_hint(row['id'])}"
        if store.cancel_unstarted(engine, [row["id"]], message):
            reaped.append(Reaped(row["id"], m.CANCELLED, message))
    return reaped
