"""Old and new trigger-history and command-run rows, written straight into a record store."""

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from orchestration.commands import models as cm
from orchestration.policies import record_archive
from orchestration.triggers import models as tm

NOW = datetime.now(UTC).replace(microsecond=0)
OLD = NOW - timedelta(days=45)
NEW = NOW - timedelta(days=2)
CUTOFF = NOW - timedelta(days=30)


def seed_history(engine: sa.Engine, old: int = 7, new: int = 3) -> dict[str, list[int]]:
    """``old`` + ``new`` trigger-history rows, interleaved by id; returns their ids by age."""
    ids: dict[str, list[int]] = {"old": [], "new": []}
    with engine.begin() as conn:
        left = {"old": old, "new": new}
        for i in range(old + new):
            age = "new" if left["new"] and (i % 3 == 2 or not left["old"]) else "old"
            left[age] -= 1
            when = (OLD if age == "old" else NEW) + timedelta(minutes=i)
            row_id = conn.execute(
                tm.trigger_history.insert().values(
                    trigger="escalate",
                    record_id=100 + i,
                    attempt=1,
                    status="failed" if i % 4 == 0 else "succeeded",
                    error="boom" if i % 4 == 0 else None,
                    run_id=f"run-{i}",
                    actor="test",
                    started_at=when - timedelta(seconds=3),
                    finished_at=when,
                )
            ).inserted_primary_key[0]
            ids[age].append(row_id)
    return ids


def seed_command_runs(engine: sa.Engine) -> dict[str, list[int]]:
    """Old finished runs (with events), an old in-flight run, new runs, and an old run that a
    new retry still points at. Returns ids by category."""
    out: dict[str, list[int]] = {"old": [], "inflight": [], "new": [], "held": []}
    with engine.begin() as conn:
        command_id = conn.execute(
            cm.commands.insert().values(name="hello", command="echo hi", updated_at=OLD)
        ).inserted_primary_key[0]
        env_id = conn.execute(
            cm.environments.insert().values(name="staging", updated_at=OLD)
        ).inserted_primary_key[0]

        def run(status, created, finished, retry_of=None, events=2):
            row_id = conn.execute(
                cm.command_runs.insert().values(
                    command_id=command_id,
                    environment_id=env_id,
                    requested_by="test",
                    not_before=created,
                    status=status,
                    created_at=created,
                    started_at=created if status != cm.PENDING else None,
                    finished_at=finished,
                    exit_code=0 if status == cm.SUCCEEDED else (1 if finished else None),
                    duration_seconds=1.5 if finished else None,
                    retry_of=retry_of,
                    attempt=2 if retry_of else 1,
                )
            ).inserted_primary_key[0]
            for k in range(events):
                conn.execute(
                    cm.command_run_events.insert().values(
                        command_run_id=row_id,
                        kind="started" if k == 0 else status,
                        at=created + timedelta(seconds=k),
                        stdout_tail=f"line {k}\n",
                    )
                )
            return row_id

        for i, status in enumerate([cm.SUCCEEDED, cm.FAILED, cm.TIMED_OUT, cm.SUCCEEDED, cm.LOST]):
            created = OLD + timedelta(minutes=i)
            out["old"].append(run(status, created, created + timedelta(seconds=2)))
        out["inflight"].append(run(cm.RUNNING, OLD, None, events=1))
        out["inflight"].append(run(cm.PENDING, OLD, None, events=0))
        held = run(cm.FAILED, OLD, OLD + timedelta(seconds=5))
        out["held"].append(held)
        out["new"].append(run(cm.SUCCEEDED, NEW, NEW + timedelta(seconds=1)))
        out["new"].append(run(cm.FAILED, NEW, NEW + timedelta(seconds=1), retry_of=held))
        created = OLD + timedelta(minutes=30)
        out["old"].append(run(cm.CANCELLED, created, created, events=1))
    return out


def snapshot(engine: sa.Engine, spec: record_archive.HistoryTable) -> dict[int, dict]:
    """Every row of a table as the archive serializes it (children included)."""
    with engine.connect() as conn:
        rows = record_archive._fetch(conn, spec, sa.select(spec.table).order_by(spec.table.c.id))
    return {r["id"]: r for r in rows}


def spec(name: str) -> record_archive.HistoryTable:
    return next(t for t in record_archive.TABLES if t.name == name)
