"""triggers: demo domain (alerts, edge packages, traces, trace summaries) and trigger bookkeeping.

Revision ID: triggers_0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "triggers_0001"
down_revision = None
branch_labels = ("triggers",)
depends_on = "core_0001"

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(100), nullable=False),
        sa.Column("title", sa.String(300), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("created_at", Ts, nullable=False),
        sa.Column("escalated_at", Ts, nullable=True),
    )
    # created_at last: the due check is answered from the index (index-only scan).
    op.create_index("alerts_state_id_idx", "alerts", ["state", "id", "created_at"])
    op.create_table(
        "edge_packages",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(100), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("expires_at", Ts, nullable=False),
        sa.Column("download_token_hash", sa.String(64), nullable=True),
        sa.Column("expired_at", Ts, nullable=True),
    )
    op.create_index("edge_packages_state_id_idx", "edge_packages", ["state", "id"])
    op.create_table(
        "traces",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(100), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("spans", sa.JSON, nullable=False),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("summary_stale", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("updated_at", Ts, nullable=False),
    )
    op.create_index("traces_stale_id_idx", "traces", ["summary_stale", "id"])
    op.create_table(
        "trace_summaries",
        sa.Column("trace_id", BigId, sa.ForeignKey("traces.id"), primary_key=True),
        sa.Column("span_count", sa.Integer, nullable=False),
        sa.Column("error_count", sa.Integer, nullable=False),
        sa.Column("total_duration_ms", sa.Float, nullable=False),
        sa.Column("trace_version", sa.Integer, nullable=False),
        sa.Column("refreshed_at", Ts, nullable=False),
    )
    op.create_table(
        "trigger_attempts",
        sa.Column("trigger", sa.String(100), primary_key=True),
        sa.Column("record_id", BigId, primary_key=True, autoincrement=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("updated_at", Ts, nullable=False),
    )
    op.create_table(
        "trigger_history",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("trigger", sa.String(100), nullable=False),
        sa.Column("record_id", BigId, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("actor", sa.String(200), nullable=True),
        sa.Column("started_at", Ts, nullable=False),
        sa.Column("finished_at", Ts, nullable=False),
    )
    op.create_index("trigger_history_record_idx", "trigger_history", ["trigger", "record_id"])


def downgrade() -> None:
    op.drop_index("trigger_history_record_idx", "trigger_history")
    op.drop_table("trigger_history")
    op.drop_table("trigger_attempts")
    op.drop_table("trace_summaries")
    op.drop_index("traces_stale_id_idx", "traces")
    op.drop_table("traces")
    op.drop_index("edge_packages_state_id_idx", "edge_packages")
    op.drop_table("edge_packages")
    op.drop_index("alerts_state_id_idx", "alerts")
    op.drop_table("alerts")
