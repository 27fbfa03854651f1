"""Record-store tables of the triggers area: the demo domain and the trigger bookkeeping.

SQLAlchemy Core tables on the shared ``Base.metadata``; the schema itself is created by the
Alembic branch ``triggers`` (``migrations/record_store/versions/triggers_0001_*.py``). Each domain
table has an index that leads with the column its trigger filters on and ends with ``id``, so the
sensor's keyset scan (``WHERE <where> AND id > :cursor ORDER BY id LIMIT n``) reads only matching
rows, whatever the size of the table.
"""

import sqlalchemy as sa

from resources.notifier import outbox
from resources.record_store import Base

# BIGINT on PostgreSQL, INTEGER on SQLite (only INTEGER PRIMARY KEY is SQLite's rowid alias).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)

metadata = Base.metadata

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.String(100), nullable=False),
    sa.Column("title", sa.String(300), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),  # pending | escalated | resolved
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("escalated_at", Timestamp, nullable=True),
    sa.Index("alerts_state_id_idx", "state", "id", "created_at"),
)

edge_packages = sa.Table(
    "edge_packages",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.String(100), nullable=False),
    sa.Column("name", sa.String(300), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),  # active | expired
    sa.Column("expires_at", Timestamp, nullable=False),
    # sha256 of the download token; NULL once the token is invalidated.
    sa.Column("download_token_hash", sa.String(64), nullable=True),
    sa.Column("expired_at", Timestamp, nullable=True),
    sa.Index("edge_packages_state_id_idx", "state", "id"),
)

traces = sa.Table(
    "traces",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.String(100), nullable=False),
    sa.Column("name", sa.String(300), nullable=False),
    sa.Column("spans", sa.JSON, nullable=False),  # [{"name", "duration_ms", "error"}]
    # Bumped by every writer of the trace; the summary records the version it was built from.
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("summary_stale", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Index("traces_stale_id_idx", "summary_stale", "id"),
)

trace_summaries = sa.Table(
    "trace_summaries",
    metadata,
    sa.Column("trace_id", BigId, sa.ForeignKey("traces.id"), primary_key=True),
    sa.Column("span_count", sa.Integer, nullable=False),
    sa.Column("error_count", sa.Integer, nullable=False),
    sa.Column("total_duration_ms", sa.Float, nullable=False),
    sa.Column("trace_version", sa.Integer, nullable=False),
    sa.Column("refreshed_at", Timestamp, nullable=False),
)

# One row per (trigger, record): the attempt counter and whether the record is given up on.
trigger_attempts = sa.Table(
    "trigger_attempts",
    metadata,
    sa.Column("trigger", sa.String(100), primary_key=True),
    sa.Column("record_id", BigId, primary_key=True, autoincrement=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # retrying | succeeded | exhausted
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("updated_at", Timestamp, nullable=False),
)

# Append-only: every attempt and its outcome, with the run that made it.
trigger_history = sa.Table(
    "trigger_history",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("trigger", sa.String(100), nullable=False),
    sa.Column("record_id", BigId, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # succeeded | failed | exhausted
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("run_id", sa.String(64), nullable=True),
    sa.Column("actor", sa.String(200), nullable=True),
    sa.Column("started_at", Timestamp, nullable=False),
    sa.Column("finished_at", Timestamp, nullable=False),
    sa.Index("trigger_history_record_idx", "trigger", "record_id"),
)

# The core area's outbox (core_0001) is defined once, in resources.notifier; re-exported here
# under the name this area's modules use.
notification_outbox = outbox
