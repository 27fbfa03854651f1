"""Seed rows for the three triggers (README demo, tests and benchmarks)."""

from __future__ import annotations

import secrets
from datetime import timedelta

import sqlalchemy as sa

from orchestration.triggers.actions import token_hash
from orchestration.triggers.models import alerts, edge_packages, traces
from orchestration.triggers.spec import utcnow


def seed_alerts(
    engine: sa.Engine, due: int, fresh: int = 0, resolved: int = 0, tenants: int = 3
) -> None:
    """``due`` alerts pending for 45 min, ``fresh`` pending for 1 min, ``resolved`` old ones."""
    now = utcnow()
    rows = []
    for i in range(due + fresh + resolved):
        kind = "due" if i < due else "fresh" if i < due + fresh else "resolved"
        rows.append(
            {
                "tenant_id": f"tenant-{i % tenants}",
                "title": f"{kind} alert {i}",
                "state": "resolved" if kind == "resolved" else "pending",
                "created_at": now - timedelta(minutes=1 if kind == "fresh" else 45),
            }
        )
    _insert(engine, alerts, rows)


def seed_packages(engine: sa.Engine, expired: int, active: int = 0) -> dict[int, str]:
    """Packages past ``expires_at`` and still valid ones; returns {id: download token}."""
    now = utcnow()
    tokens: dict[int, str] = {}
    with engine.begin() as conn:
        for i in range(expired + active):
            token = secrets.token_urlsafe(16)
            pid = conn.execute(
                edge_packages.insert()
                .values(
                    tenant_id=f"tenant-{i % 3}",
                    name=f"edge-package-{i}",
                    state="active",
                    expires_at=now
                    + (timedelta(hours=1) if i >= expired else -timedelta(minutes=5)),
                    download_token_hash=token_hash(token),
                )
                .returning(edge_packages.c.id)
            ).scalar_one()
            tokens[pid] = token
    return tokens


def seed_traces(engine: sa.Engine, stale: int, fresh: int = 0) -> None:
    now = utcnow()
    rows = [
        {
            "tenant_id": f"tenant-{i % 3}",
            "name": f"trace-{i}",
            "spans": [
                {"name": "request", "duration_ms": 12.5 + i, "error": False},
                {"name": "db", "duration_ms": 3.0, "error": i % 4 == 0},
            ],
            "version": 1,
            "summary_stale": i < stale,
            "updated_at": now,
        }
        for i in range(stale + fresh)
    ]
    _insert(engine, traces, rows)


def _insert(engine: sa.Engine, table: sa.Table, rows: list[dict], chunk: int = 20_000) -> None:
    with engine.begin() as conn:
        for i in range(0, len(rows), chunk):
            conn.execute(table.insert(), rows[i : i + chunk])
