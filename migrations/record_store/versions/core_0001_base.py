"""core: the notification outbox every area writes in the same transaction as its state change.

Revision ID: core_0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "core_0001"
down_revision = None
branch_labels = ("core",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notification_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dedupe_key", sa.String(300), nullable=False, unique=True),
        sa.Column("channel", sa.String(50), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index(
        "notification_outbox_pending_idx", "notification_outbox", ["delivered_at", "id"]
    )


def downgrade() -> None:
    op.drop_index("notification_outbox_pending_idx", "notification_outbox")
    op.drop_table("notification_outbox")
