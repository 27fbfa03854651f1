"""What earlier attempts of the same batch did: a step retry, or a re-execution of the run.

A retried worker step (its ``RetryPolicy``) and a re-executed run see the records their earlier
attempt moved as no longer matching. Counted as ``skipped``, a retry after a first attempt that
moved all 5,000 records said ``succeeded: 0, skipped: 5000``, and, finding nothing to move, it
delivered none of the notifications the first attempt left pending (it only swept a page of 500).

``trigger_history`` records the run of every attempt, so the step asks it which of its records a
run of its *lineage* (this run, for a step retry; the run it re-executes and the whole
re-execution family of its root, for a re-execution) already moved or gave up on, and reports
those as ``already_done_by_earlier_attempt``. The lineage's notifications still pending are the
outbox rows created since its first run was created: the step delivers all of them first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
import sqlalchemy as sa

from orchestration.triggers.chunk import id_in
from orchestration.triggers.models import trigger_history
from resources.db import as_utc, retrying

# Dagster's tag on every run of a re-execution family (public API: ``DagsterRun.root_run_id``
# reads it; filtering runs by it needs the name).
ROOT_RUN_ID_TAG = "dagster/root_run_id"
DONE_STATUSES = ("succeeded", "exhausted")
IDS_PER_QUERY = 1000


@dataclass(frozen=True)
class Lineage:
    """The runs whose attempts count as this batch's, and when the first of them was created."""

    run_ids: tuple[str, ...]
    started_at: datetime
    retry_number: int


def lineage(context: dg.OpExecutionContext) -> Lineage | None:
    """This step's earlier attempts; None for the first attempt of a run that re-executes none."""
    run = context.run
    if context.retry_number == 0 and not run.parent_run_id:
        return None
    ids = {run.run_id}
    if run.parent_run_id:
        root = run.root_run_id or run.parent_run_id
        ids |= {run.parent_run_id, root}
        family = context.instance.get_run_records(
            filters=dg.RunsFilter(tags={ROOT_RUN_ID_TAG: root})
        )
        ids |= {r.dagster_run.run_id for r in family}
    created = [
        as_utc(record.create_timestamp)
        for run_id in sorted(ids)
        if (record := context.instance.get_run_record_by_id(run_id)) is not None
    ]
    started = min(created) if created else datetime.now(UTC)  # records deleted: this moment
    return Lineage(tuple(sorted(ids)), started, context.retry_number)


def done_earlier(
    engine: sa.Engine,
    trigger: str,
    run_ids: tuple[str, ...],
    record_ids: list[int],
    log: Callable[[str], None] | None = None,
) -> dict[int, str]:
    """Record id -> ``succeeded`` / ``exhausted`` for each of ``record_ids`` that a run of
    ``run_ids`` already moved or gave up on (its last such attempt)."""
    ordered = sorted(set(record_ids))

    def read() -> dict[int, str]:
        found: dict[int, str] = {}
        with engine.connect() as conn:
            for at in range(0, len(ordered), IDS_PER_QUERY):
                part = ordered[at : at + IDS_PER_QUERY]
                rows = conn.execute(
                    sa.select(trigger_history.c.record_id, trigger_history.c.status)
                    .where(
                        trigger_history.c.trigger == trigger,
                        trigger_history.c.run_id.in_(run_ids),
                        trigger_history.c.status.in_(DONE_STATUSES),
                        id_in(conn, trigger_history.c.record_id, part),
                    )
                    .order_by(trigger_history.c.id)
                )
                found.update({rid: status for rid, status in rows})
        return found

    return retrying(f"trigger {trigger}: reading earlier attempts", log)(read)
