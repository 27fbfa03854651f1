"""commands: worker liveness on command_runs (heartbeat, host, process group) for the reaper.

Revision ID: commands_0002
Revises: commands_0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "commands_0002"
down_revision = "commands_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("command_runs", sa.Column("heartbeat_at", sa.DateTime(timezone=True)))
    op.add_column("command_runs", sa.Column("worker_host", sa.String(255)))
    op.add_column("command_runs", sa.Column("pgid", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("command_runs") as batch:
        batch.drop_column("pgid")
        batch.drop_column("worker_host")
        batch.drop_column("heartbeat_at")
