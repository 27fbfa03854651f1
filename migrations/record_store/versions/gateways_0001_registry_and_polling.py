"""gateways: gateway registry (leases), polled targets, poll tasks with fencing tokens.

Revision ID: gateways_0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "gateways_0001"
down_revision = None
branch_labels = ("gateways",)
depends_on = "core_0001"

OPEN = "state IN ('pending', 'assigned', 'running', 'no_gateway')"


def upgrade() -> None:
    op.create_table(
        "gateways",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("partition", sa.String(100), nullable=False),
        sa.Column("domains", sa.JSON, nullable=False),
        sa.Column("lease_expires_at", sa.Float(53), nullable=False),
        sa.Column("heartbeat_at", sa.Float(53), nullable=False),
        sa.Column("registered_at", sa.Float(53), nullable=False),
        sa.Column("deregistered_at", sa.Float(53), nullable=True),
        sa.Column("load", sa.Integer, nullable=False, server_default="0"),
        sa.Column("host", sa.String(300), nullable=True),
    )
    op.create_index("gateways_partition_lease_idx", "gateways", ["partition", "lease_expires_at"])
    op.create_table(
        "gateway_targets",
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
        sa.CheckConstraint("check_kind IN ('http', 'tcp')", name="gateway_targets_kind_ck"),
    )
    op.create_index("gateway_targets_due_idx", "gateway_targets", ["next_due_at"])
    op.create_table(
        "gateway_poll_tasks",
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
        sa.CheckConstraint(
            "state IN ('pending', 'assigned', 'running', 'done', 'no_gateway')",
            name="gateway_poll_tasks_state_ck",
        ),
    )
    op.create_index(
        "gateway_poll_tasks_gw_state_idx", "gateway_poll_tasks", ["gateway_id", "state"]
    )
    op.create_index("gateway_poll_tasks_state_idx", "gateway_poll_tasks", ["state", "recorded"])
    op.create_index("gateway_poll_tasks_target_idx", "gateway_poll_tasks", ["target_id"])
    # At most one open task per target, whatever races between ticks.
    op.create_index(
        "gateway_poll_tasks_one_open_uq",
        "gateway_poll_tasks",
        ["target_id"],
        unique=True,
        sqlite_where=sa.text(OPEN),
        postgresql_where=sa.text(OPEN),
    )


def downgrade() -> None:
    op.drop_table("gateway_poll_tasks")
    op.drop_table("gateway_targets")
    op.drop_table("gateways")
