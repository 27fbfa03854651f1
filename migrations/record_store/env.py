"""Alembic environment for the record store (all areas' branches share one version table)."""

from alembic import context
from sqlalchemy import engine_from_config, pool, text

from resources.record_store import VERSION_TABLE

config = context.config
# Serialises upgrades of one PostgreSQL database across processes (code server, run workers).
ADVISORY_LOCK_KEY = 0x5EC0_5D00


def _migrate(connection) -> None:
    context.configure(connection=connection, target_metadata=None, version_table=VERSION_TABLE)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        context.run_migrations()


def run_migrations() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _migrate(connectable)
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as connection:
        _migrate(connection)


run_migrations()
