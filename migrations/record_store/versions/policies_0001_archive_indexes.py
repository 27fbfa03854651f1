"""policies: index command_runs.retry_of, so the history archive's deletes stay linear.

Deleting a command run makes the database check the self-referencing foreign key
``command_runs.retry_of`` (is any run a retry of this one?). Without an index that check scans
the whole table per deleted row on SQLite and PostgreSQL alike: archiving 20,000 runs took 40 s
(quadratic). The archive's own "still referenced by a younger retry" query uses it too. A branch
of its own: the commands area owns the table definition; this only adds an index.

Revision ID: policies_0001
Revises:
Create Date: 2026-11-23
"""

from alembic import op

revision = "policies_0001"
down_revision = None
branch_labels = ("policies",)
depends_on = "commands_0001"


def upgrade() -> None:
    op.create_index("command_runs_retry_of_idx", "command_runs", ["retry_of"])


def downgrade() -> None:
    op.drop_index("command_runs_retry_of_idx", table_name="command_runs")
