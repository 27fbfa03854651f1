"""The agent's side of a task: claim what is assigned to it, report a result under its token.

Claiming is a compare-and-set from ``assigned`` to ``running``; on PostgreSQL the candidate rows
are selected ``FOR UPDATE SKIP LOCKED`` so an agent never waits on rows the coordinator's tick is
moving. Reporting is fenced: the row must still carry this gateway and the token it claimed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from orchestration.gateways.db import is_postgres
from orchestration.gateways.models import ASSIGNED, DONE, RUNNING, poll_tasks, targets
from resources.db import SQLITE_WRITER


@dataclass(frozen=True)
class ClaimedTask:
    id: int
    token: int
    target_id: int
    address: str
    check_kind: str
    timeout_seconds: float


def claim_tasks(
    engine: sa.Engine,
    gateway_id: str,
    limit: int,
    lease_seconds: float,
    now: float | None = None,
) -> list[ClaimedTask]:
    """Move up to ``limit`` of this gateway's assigned tasks to running. The running lease is
    the check's timeout plus the gateway lease: past it, the coordinator presumes it stuck."""
    if limit <= 0:
        return []
    now = time.time() if now is None else now
    candidates = (
        sa.select(poll_tasks.c.id)
        .where(poll_tasks.c.gateway_id == gateway_id, poll_tasks.c.state == ASSIGNED)
        .order_by(poll_tasks.c.id)
        .limit(limit)
    )
    timeout = (
        sa.select(targets.c.timeout_seconds)
        .where(targets.c.id == poll_tasks.c.target_id)
        .scalar_subquery()
    )
    # SQLite: a writer from BEGIN. The claim reads its candidates, then updates them; under WAL
    # another agent's claim committed in between would fail the upgrade to writer at once
    # ("database is locked", no busy wait). BEGIN IMMEDIATE makes the second agent wait instead.
    with engine.execution_options(**SQLITE_WRITER).begin() as conn:
        if is_postgres(engine):
            candidates = candidates.with_for_update(skip_locked=True)
        ids = list(conn.execute(candidates).scalars())
        if not ids:
            return []
        claimed = conn.execute(
            poll_tasks.update()
            .where(
                poll_tasks.c.id.in_(ids),
                poll_tasks.c.gateway_id == gateway_id,
                poll_tasks.c.state == ASSIGNED,
            )
            .values(state=RUNNING, started_at=now, lease_expires_at=now + lease_seconds + timeout)
            .returning(poll_tasks.c.id, poll_tasks.c.token, poll_tasks.c.target_id)
        ).all()
        if not claimed:
            return []
        info = {
            r.id: r
            for r in conn.execute(
                sa.select(
                    targets.c.id, targets.c.address, targets.c.check_kind, targets.c.timeout_seconds
                ).where(targets.c.id.in_({c.target_id for c in claimed}))
            )
        }
    return [
        ClaimedTask(
            id=c.id,
            token=c.token,
            target_id=c.target_id,
            address=info[c.target_id].address,
            check_kind=info[c.target_id].check_kind,
            timeout_seconds=info[c.target_id].timeout_seconds,
        )
        for c in sorted(claimed, key=lambda c: c.id)
    ]


def report_result(
    engine: sa.Engine,
    gateway_id: str,
    task_id: int,
    token: int,
    status: str,
    result: dict,
    now: float | None = None,
) -> bool:
    """Write the result if this gateway still holds the task under ``token``; False = fenced."""
    now = time.time() if now is None else now
    with engine.begin() as conn:
        return (
            conn.execute(
                poll_tasks.update()
                .where(
                    poll_tasks.c.id == task_id,
                    poll_tasks.c.token == token,
                    poll_tasks.c.gateway_id == gateway_id,
                    poll_tasks.c.state == RUNNING,
                )
                .values(
                    state=DONE,
                    result_status=status,
                    result=result,
                    result_gateway_id=gateway_id,
                    finished_at=now,
                    lease_expires_at=None,
                )
            ).rowcount
            == 1
        )
