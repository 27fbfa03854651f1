"""Gateway registry: a gateway is live exactly while its heartbeat lease is unexpired.

Gateways write only their own row (register, heartbeat, deregister); the coordinator only reads
it. A gateway that dies without deregistering simply stops renewing and drops out after its lease.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from orchestration.gateways.models import HELD_STATES, gateways, poll_tasks, targets
from resources.db import SQLITE_WRITER


@dataclass(frozen=True)
class Gateway:
    id: str
    partition: str
    domains: tuple[str, ...]
    lease_expires_at: float
    deregistered_at: float | None = None
    load: int = 0

    def is_live(self, now: float) -> bool:
        return self.deregistered_at is None and self.lease_expires_at > now

    def serves(self, partition: str, domain: str | None) -> bool:
        """Routing rule: same partition, always; the target's domain when it has one."""
        return self.partition == partition and (domain is None or domain in self.domains)


def register(
    engine: sa.Engine,
    gateway_id: str,
    partition: str,
    domains: Iterable[str] = (),
    lease_seconds: float = 10.0,
    host: str | None = None,
    now: float | None = None,
) -> None:
    """Insert or revive the gateway's row (a restarted agent keeps its id)."""
    now = time.time() if now is None else now
    values = {
        "partition": partition,
        "domains": sorted(set(domains)),
        "lease_expires_at": now + lease_seconds,
        "heartbeat_at": now,
        "registered_at": now,
        "deregistered_at": None,
        "load": 0,
        "host": host,
    }
    with engine.begin() as conn:
        updated = conn.execute(
            gateways.update().where(gateways.c.id == gateway_id).values(**values)
        ).rowcount
        if not updated:
            conn.execute(gateways.insert().values(id=gateway_id, **values))


def heartbeat(
    engine: sa.Engine,
    gateway_id: str,
    lease_seconds: float,
    load: int = 0,
    now: float | None = None,
) -> bool:
    """Renew the lease; False when the row is gone or deregistered (the agent re-registers)."""
    now = time.time() if now is None else now
    with engine.begin() as conn:
        return bool(
            conn.execute(
                gateways.update()
                .where(gateways.c.id == gateway_id, gateways.c.deregistered_at.is_(None))
                .values(lease_expires_at=now + lease_seconds, heartbeat_at=now, load=load)
            ).rowcount
        )


def deregister(engine: sa.Engine, gateway_id: str, now: float | None = None) -> None:
    """Clean shutdown: expire the lease now so the next tick reassigns without waiting."""
    now = time.time() if now is None else now
    with engine.begin() as conn:
        conn.execute(
            gateways.update()
            .where(gateways.c.id == gateway_id)
            .values(deregistered_at=now, lease_expires_at=now, load=0)
        )


def all_gateways(conn: sa.Connection) -> list[Gateway]:
    rows = conn.execute(sa.select(gateways).order_by(gateways.c.partition, gateways.c.id))
    return [
        Gateway(
            id=r.id,
            partition=r.partition,
            domains=tuple(r.domains or ()),
            lease_expires_at=r.lease_expires_at,
            deregistered_at=r.deregistered_at,
            load=r.load,
        )
        for r in rows
    ]


def live_gateways(conn: sa.Connection, now: float) -> list[Gateway]:
    return [g for g in all_gateways(conn) if g.is_live(now)]


def open_load(conn: sa.Connection) -> dict[str, int]:
    """Tasks each gateway holds (assigned or running): the load routing balances on."""
    rows = conn.execute(
        sa.select(poll_tasks.c.gateway_id, sa.func.count())
        .where(poll_tasks.c.state.in_(HELD_STATES))
        .group_by(poll_tasks.c.gateway_id)
    )
    return {gw: n for gw, n in rows if gw is not None}


def gateway_overview(engine: sa.Engine, now: float | None = None) -> list[dict]:
    """Every registered gateway with liveness and held tasks, for run metadata and the demo."""
    now = time.time() if now is None else now
    with engine.connect() as conn:
        held = open_load(conn)
        return [
            {
                "id": g.id,
                "partition": g.partition,
                "domains": list(g.domains),
                "live": g.is_live(now),
                "held_tasks": held.get(g.id, 0),
                "reported_load": g.load,
                "lease_left_s": round(max(0.0, g.lease_expires_at - now), 1),
            }
            for g in all_gateways(conn)
        ]


def upsert_target(
    engine: sa.Engine,
    partition: str,
    address: str,
    check_kind: str = "http",
    domain: str | None = None,
    interval_seconds: float = 60.0,
    timeout_seconds: float = 2.0,
) -> int:
    """Register a device to poll; (partition, address, kind) is its identity, so the same
    address in two partitions is two targets. Returns the target id."""
    if check_kind not in ("http", "tcp"):
        raise ValueError(f"check_kind must be 'http' or 'tcp', not {check_kind!r}")
    values = {
        "domain": domain,
        "interval_seconds": interval_seconds,
        "timeout_seconds": timeout_seconds,
    }
    key = (
        (targets.c.partition == partition)
        & (targets.c.address == address)
        & (targets.c.check_kind == check_kind)
    )
    # SQLite: a writer from BEGIN (reads, then writes; see resources.db.SQLITE_WRITER).
    with engine.execution_options(**SQLITE_WRITER).begin() as conn:
        existing = conn.execute(sa.select(targets.c.id).where(key)).scalar()
        if existing is not None:
            conn.execute(targets.update().where(targets.c.id == existing).values(**values))
            return existing
        return conn.execute(
            targets.insert()
            .values(
                partition=partition,
                address=address,
                check_kind=check_kind,
                next_due_at=0.0,
                created_at=time.time(),
                **values,
            )
            .returning(targets.c.id)
        ).scalar_one()
