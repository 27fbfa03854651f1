"""The worker: apply a trigger's action to a batch of record ids, exactly once per transition.

Per chunk of ``commit_every`` ids, one transaction: the matching rows are re-read under the
trigger's ``where`` (locked with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so a second worker on an
overlapping batch skips them), the action runs per record inside a savepoint, its values are
written with a compare-and-set ``UPDATE … WHERE id = :id AND <where>``, and its notification and
history rows are inserted before the commit. A killed worker loses only its open chunk, which a
re-run redoes; a record that stopped matching is skipped; an action that raises costs only its own
record an attempt, and after ``max_attempts`` ``on_error`` runs and the record is never retried.
After each commit the chunk's notifications are delivered (``resources.notifier``).

``python -m orchestration.triggers.worker --store-url URL --trigger NAME --ids 1,2,5-9`` runs it
without Dagster (used by the reliability tests, which SIGKILL it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from orchestration.triggers.models import notification_outbox, trigger_attempts, trigger_history
from orchestration.triggers.scan import chunks
from orchestration.triggers.spec import ActionContext, Transition, TriggerSpec, utcnow

Log = Callable[[str], None]
Deliver = Callable[[sa.Engine, list[str]], Any]


@dataclass
class Outcome:
    record_id: int
    status: str  # succeeded | skipped | failed | exhausted
    attempt: int = 0
    error: str | None = None


@dataclass
class BatchResult:
    trigger: str
    outcomes: list[Outcome] = field(default_factory=list)
    notification_keys: list[str] = field(default_factory=list)

    def ids(self, status: str) -> list[int]:
        return [o.record_id for o in self.outcomes if o.status == status]

    def counts(self) -> dict[str, int]:
        out = {"succeeded": 0, "skipped": 0, "failed": 0, "exhausted": 0}
        for o in self.outcomes:
            out[o.status] += 1
        return out


class _LostRace(Exception):
    """The compare-and-set matched no row: someone else changed the record first."""


def _insert(conn: sa.Connection, table: sa.Table):
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def _apply(
    spec: TriggerSpec,
    conn: sa.Connection,
    record: Mapping[str, Any],
    transition: Transition,
    now,
    notifications: list[dict],
) -> None:
    t = spec.table
    guard = [t.c.id == record["id"], spec.where_clause(now)]
    guard += [t.c[c] == record[c] for c in spec.cas_columns]
    if transition.values:
        done = conn.execute(t.update().where(*guard).values(**transition.values)).rowcount
        if done != 1:
            raise _LostRace()
    note = transition.notification
    if note is not None:
        notifications.append(
            {
                "dedupe_key": note.dedupe_key or f"{spec.name}:{record['id']}",
                "channel": note.channel,
                "payload": note.payload,
                "created_at": now,
                "attempts": 0,
            }
        )


def _apply_error(
    spec: TriggerSpec, conn, record, transition: Transition | None, now, notifications
) -> None:
    """``on_error``'s transition: same outbox path, but not guarded by ``where``."""
    if transition is None:
        return
    t = spec.table
    if transition.values:
        conn.execute(t.update().where(t.c.id == record["id"]).values(**transition.values))
    if transition.notification is not None:
        note = transition.notification
        notifications.append(
            {
                "dedupe_key": note.dedupe_key or f"{spec.name}:{record['id']}:error",
                "channel": note.channel,
                "payload": note.payload,
                "created_at": now,
                "attempts": 0,
            }
        )


def _process_chunk(
    spec: TriggerSpec, conn: sa.Connection, ids: list[int], run_id, actor
) -> tuple[list[Outcome], list[str]]:
    now = utcnow()
    t = spec.table
    q = sa.select(t).where(t.c.id.in_(ids), spec.where_clause(now)).order_by(t.c.id)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    rows = {r.id: r._mapping for r in conn.execute(q)}
    prior = (
        {
            r.record_id: (r.attempts, r.status)
            for r in conn.execute(
                sa.select(trigger_attempts).where(
                    trigger_attempts.c.trigger == spec.name,
                    trigger_attempts.c.record_id.in_(list(rows)),
                )
            )
        }
        if rows
        else {}
    )
    outcomes: list[Outcome] = []
    history: list[dict] = []
    attempts_rows: list[dict] = []
    notifications: list[dict] = []
    for rid in ids:
        record = rows.get(rid)
        previous, status = prior.get(rid, (0, None))
        if record is None or status == "exhausted":
            outcomes.append(Outcome(rid, "skipped"))
            continue
        attempt = previous + 1
        started = utcnow()
        ctx = ActionContext(conn, now, spec.name, actor, run_id, attempt)
        error: str | None = None
        try:
            with conn.begin_nested():
                pending: list[dict] = []
                _apply(spec, conn, record, spec.action(record, ctx), now, pending)
            notifications += pending
            result = "succeeded"
        except _LostRace:
            outcomes.append(Outcome(rid, "skipped", attempt))
            continue
        except Exception as exc:  # one record's failure never fails its batch
            error = f"{type(exc).__name__}: {exc}"[:2000]
            result = "exhausted" if attempt >= spec.max_attempts else "failed"
            if result == "exhausted" and spec.on_error is not None:
                try:
                    with conn.begin_nested():
                        pending = []
                        _apply_error(
                            spec, conn, record, spec.on_error(record, ctx, error), now, pending
                        )
                    notifications += pending
                except Exception as on_error_exc:
                    error += f" | on_error failed: {type(on_error_exc).__name__}: {on_error_exc}"
        outcomes.append(Outcome(rid, result, attempt, error))
        history.append(
            {
                "trigger": spec.name,
                "record_id": rid,
                "attempt": attempt,
                "status": result,
                "error": error,
                "run_id": run_id,
                "actor": actor,
                "started_at": started,
                "finished_at": utcnow(),
            }
        )
        if previous or result != "succeeded":
            attempts_rows.append(
                {
                    "trigger": spec.name,
                    "record_id": rid,
                    "attempts": attempt,
                    "status": "retrying" if result == "failed" else result,
                    "last_error": error,
                    "updated_at": now,
                }
            )
    if notifications:
        conn.execute(
            _insert(conn, notification_outbox).on_conflict_do_nothing(
                index_elements=["dedupe_key"]
            ),
            notifications,
        )
    if history:
        conn.execute(trigger_history.insert(), history)
    for row in attempts_rows:
        stmt = _insert(conn, trigger_attempts).values(**row)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["trigger", "record_id"],
                set_={
                    k: stmt.excluded[k] for k in ("attempts", "status", "last_error", "updated_at")
                },
            )
        )
    return outcomes, [n["dedupe_key"] for n in notifications]


def process_batch(
    spec: TriggerSpec,
    engine: sa.Engine,
    ids: Iterable[int],
    *,
    run_id: str | None = None,
    actor: str | None = None,
    deliver: Deliver | None = None,
    log: Log | None = None,
    commit_every: int | None = None,
) -> BatchResult:
    """Apply ``spec`` to each of ``ids``; see the module docstring for the guarantees."""
    result = BatchResult(spec.name)
    actor = actor or spec.actor
    ordered = sorted({int(i) for i in ids})
    for part in chunks(ordered, commit_every or spec.commit_every):
        for attempt in range(5):
            try:
                with engine.begin() as conn:
                    outcomes, keys = _process_chunk(spec, conn, part, run_id, actor)
                break
            except sa.exc.OperationalError as exc:  # lock timeout, deadlock, busy SQLite
                if attempt == 4:
                    raise
                if log:
                    log(f"chunk {part[0]}..{part[-1]} retried after: {exc.orig!r}")
                time.sleep(0.05 * 2**attempt)
        result.outcomes += outcomes
        result.notification_keys += keys
        if deliver and keys:
            deliver(engine, keys)
    if log:
        counts = result.counts()
        log(f"trigger {spec.name}: {counts} of {len(ordered)} record(s)")
        for o in result.outcomes:
            if o.error:
                log(f"  record {o.record_id} attempt {o.attempt} {o.status}: {o.error}")
    return result


def run_trigger(
    name_or_spec: str | TriggerSpec,
    record_ids: Sequence[int],
    *,
    store_url: str | None = None,
    engine: sa.Engine | None = None,
    webhook_url: str | None = None,
    actor: str | None = None,
    log: Log | None = None,
) -> BatchResult:
    """Run a trigger for the given records now, in this process (AshOban's ``run_trigger``).

    Records that do not match the trigger's ``where`` are skipped, exactly as in a sensor-started
    run; the Dagster equivalent is launching the trigger's job with ``record_ids`` in its config.
    """
    from orchestration.triggers.catalog import get_trigger
    from resources.notifier import OutboxDelivery
    from resources.record_store import RecordStoreResource

    spec = get_trigger(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    if engine is None:
        store = RecordStoreResource(url=store_url) if store_url else RecordStoreResource()
        from resources.record_store import upgrade

        upgrade(store.url)
        engine = store.engine()
    delivery = OutboxDelivery(webhook_url=webhook_url, log=log)
    return process_batch(
        spec,
        engine,
        record_ids,
        actor=actor,
        deliver=lambda eng, keys: delivery.deliver_pending(eng, keys),
        log=log,
    )


def parse_ids(text: str) -> list[int]:
    """``1,2,5-9`` → [1, 2, 5, 6, 7, 8, 9]."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


def main(argv: list[str] | None = None) -> int:
    from orchestration.triggers.catalog import get_trigger
    from resources.notifier import OutboxDelivery
    from resources.record_store import make_engine

    p = argparse.ArgumentParser(description="Run one trigger worker batch without Dagster.")
    p.add_argument("--store-url", required=True)
    p.add_argument("--trigger", required=True)
    p.add_argument("--ids", required=True, help="e.g. 1,2,5-9")
    p.add_argument("--webhook-url", default=None)
    p.add_argument("--commit-every", type=int, default=None)
    p.add_argument("--run-id", default=None)
    p.add_argument("--sweep", action="store_true", help="first deliver older pending notifications")
    args = p.parse_args(argv)
    spec = get_trigger(args.trigger)
    engine = make_engine(args.store_url)
    delivery = OutboxDelivery(webhook_url=args.webhook_url)
    if args.sweep:
        delivery.deliver_pending(engine)
    result = process_batch(
        spec,
        engine,
        parse_ids(args.ids),
        run_id=args.run_id,
        deliver=lambda eng, keys: delivery.deliver_pending(eng, keys),
        commit_every=args.commit_every,
    )
    print(json.dumps(result.counts()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
