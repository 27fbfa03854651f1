"""Trigger benchmarks on PostgreSQL: sensor tick vs table size, worker throughput vs one UPDATE.

    .venv/bin/python bench/triggers_bench.py [--big 1000000] [--small 10000] [--due 10000]

Prints the numbers side by side with the issue's targets. Each run uses a fresh schema that is
dropped afterwards. The notifier runs without a webhook URL (log-only delivery) so the worker
number includes the outbox and history rows but no HTTP.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from datetime import timedelta
from urllib.parse import quote

import sqlalchemy as sa

from orchestration.triggers.catalog import ESCALATE_ALERTS
from orchestration.triggers.models import alerts
from orchestration.triggers.scan import scan
from orchestration.triggers.spec import utcnow
from orchestration.triggers.worker import process_batch
from resources.notifier import OutboxDelivery
from resources.record_store import make_engine, upgrade

PG = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def fresh_store() -> tuple[str, str]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with make_engine(PG).begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG}?options={quote(f'-csearch_path={schema}')}"
    upgrade(url)
    return schema, url


def drop(schema: str) -> None:
    with make_engine(PG).begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


def fill(engine: sa.Engine, total: int, due: int) -> None:
    """``due`` pending alerts 45 min old, spread through the id range; the rest resolved."""
    stride = max(total // max(due, 1), 1)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO alerts (tenant_id, title, state, created_at) "
                "SELECT 'tenant-' || (g % 7), 'alert ' || g, "
                "CASE WHEN g % :stride = 0 AND g / :stride <= :due "
                "THEN 'pending' ELSE 'resolved' END, "
                ":ts FROM generate_series(1, :total) g"
            ),
            {"stride": stride, "due": due, "total": total, "ts": utcnow() - timedelta(minutes=45)},
        )
        pass
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE alerts"))  # what autovacuum does


def time_tick(engine: sa.Engine, repeat: int = 5) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(repeat):
        with engine.connect() as conn:
            t0 = time.perf_counter()
            found = scan(ESCALATE_ALERTS, conn, None)
            best = min(best, time.perf_counter() - t0)
            n = sum(len(b.ids) for b in found.batches)
    return best, n


def due_ids(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(sa.select(alerts.c.id).where(alerts.c.state == "pending")).scalars()
        )


def bench_sensor(big: int, small: int, due: int) -> None:
    results = {}
    for total in (small, big):
        schema, url = fresh_store()
        try:
            engine = make_engine(url)
            t0 = time.perf_counter()
            fill(engine, total, min(due, total))
            setup = time.perf_counter() - t0
            results[total] = time_tick(engine)
            print(f"  setup {total:>9,} rows ({min(due, total):,} due): {setup:.1f}s")
            engine.dispose()
        finally:
            drop(schema)
    (ts, ns), (tb, nb) = results[small], results[big]
    print(f"sensor tick  {small:>9,} rows: {ts * 1000:7.1f} ms  ({ns:,} ids, best of 5)")
    print(f"sensor tick  {big:>9,} rows: {tb * 1000:7.1f} ms  ({nb:,} ids, best of 5)")
    print(f"  ratio big/small: {tb / ts:.2f}x (target <= 2x); big tick under 1 s: {tb < 1.0}")


def bench_worker(rows: int) -> None:
    schema, url = fresh_store()
    try:
        engine = make_engine(url)
        fill(engine, rows, rows)
        ids = due_ids(engine)
        delivery = OutboxDelivery(webhook_url=None)
        t0 = time.perf_counter()
        result = process_batch(
            ESCALATE_ALERTS, engine, ids, deliver=lambda e, k: delivery.deliver_pending(e, k)
        )
        worker = time.perf_counter() - t0
        assert result.counts()["succeeded"] == len(ids)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alerts SET state = 'pending', escalated_at = NULL"))
        t0 = time.perf_counter()
        with engine.begin() as conn:
            n = len(
                conn.execute(
                    sa.text(
                        "UPDATE alerts SET state = 'escalated', escalated_at = now() "
                        "WHERE state = 'pending' AND created_at < now() - interval '30 minutes' "
                        "RETURNING id"
                    )
                ).all()
            )
        setwise = time.perf_counter() - t0
        engine.dispose()
    finally:
        drop(schema)
    rate = len(ids) / worker
    print(f"worker: {len(ids):,} transitions in {worker:.2f}s = {rate:,.0f}/s (target >= 2,000/s)")
    print(f"set-based UPDATE ... RETURNING of {n:,} rows: {setwise:.3f}s = {n / setwise:,.0f}/s")
    print(f"  ratio worker/set-based: {worker / setwise:.1f}x (target <= 3x)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--big", type=int, default=1_000_000)
    p.add_argument("--small", type=int, default=10_000)
    p.add_argument("--due", type=int, default=10_000)
    p.add_argument("--worker-rows", type=int, default=10_000)
    args = p.parse_args()
    bench_sensor(args.big, args.small, args.due)
    bench_worker(args.worker_rows)


if __name__ == "__main__":
    main()
