"""release: one row per environment held by the release run that owns it.

Taking an environment is one INSERT ... ON CONFLICT DO NOTHING on the primary key (or a
compare-and-set UPDATE of a row whose run has ended), so two releases starting at the same moment
cannot both win, whatever their start times say. A branch of its own: the release area owns it.

Revision ID: release_0001
Revises:
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "release_0001"
down_revision = None
branch_labels = ("release",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "release_locks",
        sa.Column("environment", sa.String(50), primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("job_name", sa.String(200), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        # boot id : pid namespace : pid : start time of the run's process (Linux), so a holder
        # killed with SIGKILL is seen as gone without waiting for anyone to mark its run.
        sa.Column("holder_process", sa.String(200), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("release_locks")
