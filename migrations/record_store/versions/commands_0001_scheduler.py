"""commands: commands, environments, variables, schedules, command runs and their events.

Revision ID: commands_0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "commands_0001"
down_revision = None
branch_labels = ("commands",)
depends_on = "core_0001"

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "commands",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("use_shell", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("timeout_seconds", sa.Integer, nullable=False, server_default="3600"),
        sa.Column("working_dir", sa.Text, nullable=True),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "environments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "variables",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "environment_id",
            sa.Integer,
            sa.ForeignKey("environments.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("secret", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.UniqueConstraint("environment_id", "name", name="variables_env_name_uq"),
    )
    op.create_table(
        "schedules",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("command_id", sa.Integer, sa.ForeignKey("commands.id"), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "schedule_crons",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "schedule_id",
            sa.Integer,
            sa.ForeignKey("schedules.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("cron", sa.String(200), nullable=False),
        sa.UniqueConstraint("schedule_id", "cron", name="schedule_crons_uq"),
    )
    op.create_table(
        "schedule_environments",
        sa.Column(
            "schedule_id",
            sa.Integer,
            sa.ForeignKey("schedules.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "environment_id",
            sa.Integer,
            sa.ForeignKey("environments.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("schedule_id", "environment_id"),
    )
    op.create_table(
        "command_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("command_id", sa.Integer, sa.ForeignKey("commands.id"), nullable=False),
        sa.Column("environment_id", sa.Integer, sa.ForeignKey("environments.id"), nullable=False),
        sa.Column("schedule_id", sa.Integer, sa.ForeignKey("schedules.id"), nullable=True),
        sa.Column("slot", TZ, nullable=True),
        sa.Column("request_key", sa.String(300), nullable=True, unique=True),
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.Column("not_before", TZ, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="1"),
        sa.Column("retry_of", sa.Integer, sa.ForeignKey("command_runs.id"), nullable=True),
        sa.Column("batch_key", sa.String(100), nullable=True),
        sa.Column("dagster_run_id", sa.String(64), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("started_at", TZ, nullable=True),
        sa.Column("finished_at", TZ, nullable=True),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("duration_seconds", sa.Float, nullable=True),
        sa.UniqueConstraint("schedule_id", "environment_id", "slot", name="command_runs_slot_uq"),
    )
    op.create_index("command_runs_status_idx", "command_runs", ["status", "not_before"])
    op.create_index("command_runs_batch_idx", "command_runs", ["batch_key"])
    op.create_index("command_runs_command_idx", "command_runs", ["command_id", "id"])
    op.create_table(
        "command_run_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "command_run_id",
            sa.Integer,
            sa.ForeignKey("command_runs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("duration_seconds", sa.Float, nullable=True),
        sa.Column("stdout_tail", sa.Text, nullable=True),
        sa.Column("stderr_tail", sa.Text, nullable=True),
        sa.Column("message", sa.Text, nullable=True),
    )
    op.create_index("command_run_events_run_idx", "command_run_events", ["command_run_id", "id"])


def downgrade() -> None:
    op.drop_table("command_run_events")
    op.drop_table("command_runs")
    op.drop_table("schedule_environments")
    op.drop_table("schedule_crons")
    op.drop_table("schedules")
    op.drop_table("variables")
    op.drop_table("environments")
    op.drop_table("commands")
