"""Record-store tables of the command scheduler (SQLAlchemy Core on the shared metadata).

The migration ``commands_0001`` creates exactly these; the code reads and writes through them.
Times are stored as timezone-aware UTC datetimes.
"""

from __future__ import annotations

import sqlalchemy as sa

from resources.record_store import Base

metadata = Base.metadata

# Command-run states. ``pending`` waits for its not_before; ``queued`` is claimed by one batch
# (one Dagster run); ``running`` is claimed by one runner; the rest are terminal. ``lost`` is the
# reaper's verdict on a ``running`` run whose worker died before reporting (outcome unknown: the
# command may or may not have done its work), as opposed to ``cancelled`` (never started, or
# stopped by us) and ``failed`` (the command itself reported a non-zero exit).
PENDING, QUEUED, RUNNING = "pending", "queued", "running"
SUCCEEDED, FAILED, TIMED_OUT, CANCELLED = "succeeded", "failed", "timed_out", "cancelled"
LOST = "lost"
TERMINAL = (SUCCEEDED, FAILED, TIMED_OUT, CANCELLED, LOST)

commands = sa.Table(
    "commands",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("command", sa.Text, nullable=False),
    sa.Column("use_shell", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("timeout_seconds", sa.Integer, nullable=False, server_default="3600"),
    sa.Column("working_dir", sa.Text, nullable=True),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

environments = sa.Table(
    "environments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

variables = sa.Table(
    "variables",
    metadata,
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

schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("command_id", sa.Integer, sa.ForeignKey("commands.id"), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

schedule_crons = sa.Table(
    "schedule_crons",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "schedule_id", sa.Integer, sa.ForeignKey("schedules.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("cron", sa.String(200), nullable=False),
    sa.UniqueConstraint("schedule_id", "cron", name="schedule_crons_uq"),
)

schedule_environments = sa.Table(
    "schedule_environments",
    metadata,
    sa.Column(
        "schedule_id", sa.Integer, sa.ForeignKey("schedules.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column(
        "environment_id",
        sa.Integer,
        sa.ForeignKey("environments.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.PrimaryKeyConstraint("schedule_id", "environment_id"),
)

command_runs = sa.Table(
    "command_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("command_id", sa.Integer, sa.ForeignKey("commands.id"), nullable=False),
    sa.Column("environment_id", sa.Integer, sa.ForeignKey("environments.id"), nullable=False),
    sa.Column("schedule_id", sa.Integer, sa.ForeignKey("schedules.id"), nullable=True),
    sa.Column("slot", sa.DateTime(timezone=True), nullable=True),
    # Idempotency of actions (launchpad run id, "retry:<id>"): one command run per request.
    sa.Column("request_key", sa.String(300), nullable=True, unique=True),
    sa.Column("requested_by", sa.String(200), nullable=False),
    sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="1"),
    sa.Column("retry_of", sa.Integer, sa.ForeignKey("command_runs.id"), nullable=True),
    sa.Column("batch_key", sa.String(100), nullable=True),
    sa.Column("dagster_run_id", sa.String(64), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("duration_seconds", sa.Float, nullable=True),
    # Worker liveness (commands_0002): the runner's heartbeat, and where the command's process
    # group lives, so the reaper can tell a dead worker and kill what it left behind.
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("worker_host", sa.String(255), nullable=True),
    sa.Column("pgid", sa.Integer, nullable=True),
    sa.UniqueConstraint("schedule_id", "environment_id", "slot", name="command_runs_slot_uq"),
)
sa.Index("command_runs_status_idx", command_runs.c.status, command_runs.c.not_before)
sa.Index("command_runs_batch_idx", command_runs.c.batch_key)
sa.Index("command_runs_command_idx", command_runs.c.command_id, command_runs.c.id)

command_run_events = sa.Table(
    "command_run_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "command_run_id",
        sa.Integer,
        sa.ForeignKey("command_runs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("duration_seconds", sa.Float, nullable=True),
    sa.Column("stdout_tail", sa.Text, nullable=True),
    sa.Column("stderr_tail", sa.Text, nullable=True),
    sa.Column("message", sa.Text, nullable=True),
)
sa.Index("command_run_events_run_idx", command_run_events.c.command_run_id, command_run_events.c.id)
