"""The gateways area's record-store tables (SQLAlchemy Core; schema owned by Alembic).

Times are epoch seconds (float) rather than DateTime: lease arithmetic is the hot path, it must
compare identically on SQLite and PostgreSQL, and no time-zone conversion can shift a lease.
"""

from __future__ import annotations

import sqlalchemy as sa

# Its own MetaData, not resources.record_store.Base: the gateway agent imports these tables and
# must start without importing Dagster (an edge process, started and killed often).
metadata = sa.MetaData()

# Task states. "Open" tasks block a new task for the same target (partial unique index).
PENDING = "pending"
ASSIGNED = "assigned"
RUNNING = "running"
DONE = "done"
NO_GATEWAY = "no_gateway"
OPEN_STATES = (PENDING, ASSIGNED, RUNNING, NO_GATEWAY)
HELD_STATES = (ASSIGNED, RUNNING)

gateways = sa.Table(
    "gateways",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("partition", sa.String(100), nullable=False),
    sa.Column("domains", sa.JSON, nullable=False),
    sa.Column("lease_expires_at", sa.Float(53), nullable=False),
    sa.Column("heartbeat_at", sa.Float(53), nullable=False),
    sa.Column("registered_at", sa.Float(53), nullable=False),
    sa.Column("deregistered_at", sa.Float(53), nullable=True),
    sa.Column("load", sa.Integer, nullable=False, server_default="0"),
    sa.Column("host", sa.String(300), nullable=True),
    sa.Index("gateways_partition_lease_idx", "partition", "lease_expires_at"),
)

targets = sa.Table(
    "gateway_targets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("partition", sa.String(100), nullable=False),
    sa.Column("domain", sa.String(100), nullable=True),
    sa.Column("address", sa.String(500), nullable=False),
    sa.Column("check_kind", sa.String(10), nullable=False),
    sa.Column("interval_seconds", sa.Float(53), nullable=False),
    sa.Column("timeout_seconds", sa.Float(53), nullable=False, server_default="2"),
    sa.Column("next_due_at", sa.Float(53), nullable=False, server_default="0"),
    sa.Column("status", sa.String(20), nullable=False, server_default="unknown"),
    sa.Column("last_result", sa.JSON, nullable=True),
    sa.Column("last_checked_at", sa.Float(53), nullable=True),
    sa.Column("last_gateway_id", sa.String(200), nullable=True),
    sa.Column("created_at", sa.Float(53), nullable=False),
    sa.UniqueConstraint("partition", "address", "check_kind", name="gateway_targets_addr_uq"),
    sa.Index("gateway_targets_due_idx", "next_due_at"),
)

poll_tasks = sa.Table(
    "gateway_poll_tasks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "target_id",
        sa.Integer,
        sa.ForeignKey("gateway_targets.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("partition", sa.String(100), nullable=False),
    sa.Column("domain", sa.String(100), nullable=True),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("gateway_id", sa.String(200), nullable=True),
    sa.Column("token", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lease_expires_at", sa.Float(53), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("result_status", sa.String(20), nullable=True),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Column("result_gateway_id", sa.String(200), nullable=True),
    sa.Column("recorded", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.Float(53), nullable=False),
    sa.Column("assigned_at", sa.Float(53), nullable=True),
    sa.Column("started_at", sa.Float(53), nullable=True),
    sa.Column("finished_at", sa.Float(53), nullable=True),
    sa.Index("gateway_poll_tasks_gw_state_idx", "gateway_id", "state"),
    sa.Index("gateway_poll_tasks_state_idx", "state", "recorded"),
    sa.Index("gateway_poll_tasks_target_idx", "target_id"),
)
