"""The sensor's query: a bounded keyset scan of matching ids, continuing from a cursor.

Each tick reads at most ``max_per_tick`` ids per tenant with ``WHERE <where> AND id > :after ORDER
BY id LIMIT n`` — an index range scan over ``(filter column, id)``, so its cost follows the number
of due rows, never the table size. When a scan comes back short the cursor wraps to the start and
the *pass* number goes up: records that became due behind the cursor are found on the next pass,
and a batch's ``run_key`` (trigger, pass, ids) dedupes a re-evaluated tick without blocking a
later retry of the same ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from orchestration.triggers.models import trigger_attempts
from orchestration.triggers.spec import TriggerSpec, utcnow

ALL = "*"  # the cursor key when a trigger has no tenants


@dataclass(frozen=True)
class Batch:
    trigger: str
    ids: list[int]
    run_key: str
    tenant: str | None


@dataclass
class ScanResult:
    batches: list[Batch]
    cursor: str
    scanned: int
    skipped_in_flight: int


def parse_cursor(cursor: str | None) -> dict[str, dict[str, int]]:
    if not cursor:
        return {}
    try:
        data = json.loads(cursor)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def due_ids_query(spec: TriggerSpec, now: datetime, after: int, limit: int, tenant: str | None):
    """Matching ids after ``after``, skipping records given up on (``on_error`` already ran)."""
    t = spec.table
    exhausted = (
        sa.select(sa.literal(1))
        .where(
            trigger_attempts.c.trigger == spec.name,
            trigger_attempts.c.record_id == t.c.id,
            trigger_attempts.c.status == "exhausted",
        )
        .exists()
    )
    q = sa.select(t.c.id).where(spec.where_clause(now), t.c.id > after, ~exhausted)
    if tenant is not None and spec.tenant_column:
        q = q.where(t.c[spec.tenant_column] == tenant)
    return q.order_by(t.c.id).limit(limit)


def run_key(trigger: str, tenant: str | None, pass_no: int, ids: list[int]) -> str:
    digest = hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()[:16]
    return f"{trigger}:{tenant or ALL}:p{pass_no}:{ids[0]}-{ids[-1]}:{digest}"


def chunks(ids: list[int], size: int) -> Iterable[list[int]]:
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def scan(
    spec: TriggerSpec,
    conn: sa.Connection,
    cursor: str | None,
    in_flight: set[int] | frozenset[int] = frozenset(),
    now: datetime | None = None,
    pass_no: int | None = None,
) -> ScanResult:
    """One tick: the batches to request and the cursor to store after they are submitted.

    ``pass_no`` (schedules: the tick's timestamp) scans every tenant from the start as that pass.
    """
    now = now or utcnow()
    state = parse_cursor(cursor)
    batches: list[Batch] = []
    scanned = skipped = 0
    new_state: dict[str, dict[str, int]] = {}
    for tenant in spec.tenant_list(conn):
        key = tenant or ALL
        pos = state.get(key, {})
        after, this_pass = int(pos.get("after", 0)), int(pos.get("pass", 0))
        if pass_no is not None:
            after, this_pass = 0, pass_no
        ids = list(
            conn.execute(due_ids_query(spec, now, after, spec.max_per_tick, tenant)).scalars()
        )
        scanned += len(ids)
        if len(ids) < spec.max_per_tick:  # reached the end: next tick starts a new pass
            new_state[key] = {"after": 0, "pass": this_pass + 1}
        else:
            new_state[key] = {"after": ids[-1], "pass": this_pass}
        if spec.trigger_once and in_flight:
            kept = [i for i in ids if i not in in_flight]
            skipped += len(ids) - len(kept)
            ids = kept
        for part in chunks(ids, spec.batch_size):
            batches.append(
                Batch(spec.name, part, run_key(spec.name, tenant, this_pass, part), tenant)
            )
    return ScanResult(batches, json.dumps(new_state, sort_keys=True), scanned, skipped)
