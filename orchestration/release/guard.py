"""One release per environment at a time, also under races, for runs that bypass the queue,
and after a release process was killed.

The QueuedRunCoordinator's tag limit (dagster.yaml) holds queued runs back; ``dagster job
execute`` runs in the calling process and never sees the queue. So the release takes its
environment in the record store (``release_locks``, one row per environment): one
``INSERT ... ON CONFLICT DO NOTHING`` decides between runs starting at the same moment, where
comparing start times after tagging let two runs both pass.

The row names the holding run. A holder whose run has ended (SUCCESS, FAILURE, CANCELED: run
monitoring or an operator marks a dead run so) or no longer exists does not block: the next
release takes the row over with a compare-and-set UPDATE on the holder's run id, so of two
runs taking over at once one wins, and logs whom it replaced. On success the last step deletes
the row; on failure the row stays but names an ended run, which is "free" by the rule above.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from resources.errors import FinalFailure

RELEASE_LOCKS = sa.Table(
    "release_locks",
    sa.MetaData(),
    sa.Column("environment", sa.String(50), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("job_name", sa.String(200), nullable=False),
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("holder_process", sa.String(200), nullable=True),
)
# Taking over from an ended holder can lose to another run doing the same; after this many
# rounds something is flapping and the release refuses rather than spin.
MAX_ROUNDS = 5


class ConcurrentReleaseError(FinalFailure):
    """Another release of the same environment holds it."""


class UnlockRefused(FinalFailure):
    """``unlock_release`` will not free a holder that may still be running."""


class EnvironmentLostError(FinalFailure):
    """This release no longer holds its environment (unlocked or taken over while it ran)."""


# Runs that took their environment in this process: {run_id: (engine, environment)}. The release
# job runs every step in its own process (in-process executor), so the steps after the claim find
# it here and check the row is still theirs; other jobs never claim, so they are never checked.
_CLAIMS: dict[str, tuple[sa.Engine, str]] = {}


@dataclass(frozen=True)
class Holder:
    environment: str
    run_id: str
    job_name: str
    acquired_at: dt.datetime
    holder_process: str | None = None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie is gone too


def _machine() -> str | None:
    """This boot of this machine and this pid namespace: pids mean the same thing within it."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}:{namespace}" if boot else None


def process_identity(pid: int | None = None) -> str | None:
    """``boot:pidns:pid:start`` of a process (default: this one); None off Linux."""
    pid = os.getpid() if pid is None else pid
    machine, start = _machine(), _start_time(pid)
    return f"{machine}:{pid}:{start}" if machine and start else None


ALIVE, GONE, UNKNOWN = "alive", "gone", "unknown"


def process_state(identity: str | None) -> str:
    """``ALIVE`` or ``GONE`` only when certain (same machine boot and pid namespace: that pid
    runs with the same start time, or not); ``UNKNOWN`` otherwise (another machine or container,
    no identity recorded, an unreadable one): only its run status, or an operator, can tell."""
    if not identity or identity.count(":") != 3:
        return UNKNOWN
    boot, namespace, pid, start = identity.split(":")
    if _machine() != f"{boot}:{namespace}" or not pid.isdigit():
        return UNKNOWN
    return ALIVE if _start_time(int(pid)) == start else GONE


def process_gone(identity: str | None) -> bool:
    """True only when certain: same machine boot and pid namespace, and that process is gone
    (no such pid, or the pid now belongs to a process started at another time)."""
    return process_state(identity) == GONE


def _pid(identity: str | None) -> str:
    return (identity or "").split(":")[2] if (identity or "").count(":") == 3 else "?"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _insert_if_free(conn: sa.Connection, values: dict[str, object]) -> bool:
    """One INSERT that does nothing when the environment's row exists; True if it inserted."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(RELEASE_LOCKS).values(**values).on_conflict_do_nothing()
    return conn.execute(statement).rowcount == 1


def read_holder(engine: sa.Engine, environment: str) -> Holder | None:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(RELEASE_LOCKS).where(RELEASE_LOCKS.c.environment == environment)
        ).first()
    return Holder(**row._mapping) if row is not None else None


def ended_because(instance: dg.DagsterInstance, holder: Holder) -> str | None:
    """Why ``holder`` can no longer hold anything, or None while its run may still be running.

    A run whose process was killed (SIGKILL, OOM) stays STARTED: nothing marks it when it ran
    through ``dagster job execute``, and run monitoring cannot check the default launcher's
    workers. So the holder's process is checked too, and a dead one's run is marked failed
    here, as run monitoring would (which also frees the run queue's tag limit).
    """
    run = instance.get_run_by_id(holder.run_id)
    if run is None:
        return "no longer exists in this Dagster instance"
    if run.is_finished:
        return f"ended with status {run.status.value}"
    if process_gone(holder.holder_process):
        pid = _pid(holder.holder_process)
        instance.report_run_failed(
            run,
            message=f"Its process {pid} is gone (killed?); marked failed by the next release "
            f"of environment '{holder.environment}'.",
        )
        return f"was {run.status.value} but its process {pid} is gone (marked failed)"
    return None


def _claimed(engine: sa.Engine, holder: Holder) -> Holder:
    _CLAIMS[holder.run_id] = (engine, holder.environment)
    return holder


def ensure_held(run_id: str, step: str) -> None:
    """Fail ``step`` at once if ``run_id`` took its environment in this process and no longer
    holds it (``platform-ops release unlock`` freed it, or another release took it over while
    this one looked dead): two releases must never work on one environment.

    A no-op for a run that claimed nothing here (``migrate``, ``bootstrap``, ``org_sync_all``).
    """
    claim = _CLAIMS.get(run_id)
    if claim is None:
        return
    engine, environment = claim
    holder = read_holder(engine, environment)
    if holder is not None and holder.run_id == run_id:
        return
    now = f"release run {holder.run_id} holds it now" if holder else "nobody holds it now"
    raise EnvironmentLostError(
        f"This release no longer holds environment '{environment}' ({now}: it was freed by "
        f"`platform-ops release unlock` or taken over while this run looked dead); step "
        f"'{step}' stopped before sending anything. Start a new release once the environment "
        "is free.",
        environment=environment,
    )


def _refusal(holder: Holder, environment: str) -> ConcurrentReleaseError:
    since = holder.acquired_at.strftime("%Y-%m-%d %H:%M:%S")
    return ConcurrentReleaseError(
        f"Another release for environment '{environment}' is running: {holder.job_name} run "
        f"{holder.run_id} holds it since {since} UTC. Wait for it to finish; nothing was sent. "
        f"If that run is dead, mark it canceled in the UI (Terminate, then force) or run "
        f"`platform-ops release unlock {environment}`.",
        holder_run_id=holder.run_id,
    )


def acquire_release_lock(
    engine: sa.Engine,
    instance: dg.DagsterInstance,
    environment: str,
    run_id: str,
    job_name: str,
    log: Callable[[str], None] = lambda _line: None,
    holder_process: str | None = None,
) -> Holder:
    """Take ``environment`` for ``run_id`` or raise ``ConcurrentReleaseError`` naming the holder.

    Idempotent for the holder itself (a retried step of the same run keeps its lock).
    ``holder_process`` (``process_identity()`` of the run's process) lets a later release see
    that this run was killed.
    """
    for _ in range(MAX_ROUNDS):
        mine = {
            "environment": environment,
            "run_id": run_id,
            "job_name": job_name,
            "acquired_at": _now(),
            "holder_process": holder_process,
        }
        with engine.begin() as conn:
            if _insert_if_free(conn, mine):
                return _claimed(engine, Holder(**mine))
        holder = read_holder(engine, environment)
        if holder is None:
            continue  # released between our INSERT and our read: try again
        if holder.run_id == run_id:
            return _claimed(engine, holder)
        reason = ended_because(instance, holder)
        if reason is None:
            raise _refusal(holder, environment)
        with engine.begin() as conn:
            taken = conn.execute(
                sa.update(RELEASE_LOCKS)
                .where(RELEASE_LOCKS.c.environment == environment)
                .where(RELEASE_LOCKS.c.run_id == holder.run_id)
                .values(**{k: v for k, v in mine.items() if k != "environment"})
            ).rowcount
        if taken == 1:
            log(
                f"Took environment '{environment}' over from {holder.job_name} run "
                f"{holder.run_id}, which {reason}."
            )
            return _claimed(engine, Holder(**mine))
    holder = read_holder(engine, environment)
    if holder is not None and holder.run_id != run_id:
        raise _refusal(holder, environment)
    raise ConcurrentReleaseError(
        f"Could not take environment '{environment}' after {MAX_ROUNDS} rounds (its lock kept "
        "changing hands); nothing was sent. Try again."
    )


def release_release_lock(engine: sa.Engine, environment: str, run_id: str) -> bool:
    """Free ``environment`` if ``run_id`` still holds it (never another run's lock)."""
    _CLAIMS.pop(run_id, None)
    return _delete_row(engine, environment, run_id)


def _delete_row(engine: sa.Engine, environment: str, run_id: str) -> bool:
    with engine.begin() as conn:
        return (
            conn.execute(
                sa.delete(RELEASE_LOCKS)
                .where(RELEASE_LOCKS.c.environment == environment)
                .where(RELEASE_LOCKS.c.run_id == run_id)
            ).rowcount
            == 1
        )


def unlock_release(
    engine: sa.Engine, instance: dg.DagsterInstance, environment: str, *, force: bool = False
) -> str:
    """Clear a stuck release of ``environment`` (its process is gone, its run still STARTED).

    Refuses (``UnlockRefused``, nothing changed) while the holder may still be running: its
    process alive on this machine (same pid and start time) is always refused, since freeing it
    would let a second release work beside it; a holder whose process cannot be checked from
    here (another machine or container, no identity recorded) needs ``force``. A holder whose
    run has ended, or whose process is known gone, is freed as is. Marks the holder's run
    canceled if the instance still shows it running (so the run queue's tag limit lets the next
    release through too), then frees the row. Returns one line saying what was done.
    """
    holder = read_holder(engine, environment)
    if holder is None:
        return f"Environment '{environment}' is not held by any release; nothing to do."
    run = instance.get_run_by_id(holder.run_id)
    state = process_state(holder.holder_process)
    who = f"{holder.job_name} run {holder.run_id}"
    if state == ALIVE:
        raise UnlockRefused(
            f"Not unlocked: environment '{environment}' is held by {who}, whose process "
            f"{_pid(holder.holder_process)} is still running on this machine. Stop the run first "
            "(UI: Terminate) or wait for it to end; nothing was changed.",
            holder_run_id=holder.run_id,
        )
    running = run is not None and not run.is_finished
    if running and state == UNKNOWN and not force:
        raise UnlockRefused(
            f"Not unlocked: environment '{environment}' is held by {who} "
            f"({run.status.value}), whose holder runs on another machine or container (its "
            "process cannot be checked from here). Make sure its process is gone, then re-run "
            f"with --force: `platform-ops release unlock {environment} --force`; nothing was "
            "changed.",
            holder_run_id=holder.run_id,
        )
    marked = ""
    if running:
        instance.report_run_canceled(
            run, message=f"Marked canceled by `platform-ops release unlock {environment}`."
        )
        marked = f" and marked run {holder.run_id} canceled (it was {run.status.value})"
    if not _delete_row(engine, environment, holder.run_id):
        return f"Environment '{environment}' changed hands meanwhile; nothing was freed."
    return f"Freed environment '{environment}' from {who}{marked}."
