"""Alembic environment for the record store (all areas' branches share one version table)."""

from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
# Not "alembic_version": Dagster's own PostgreSQL storage uses that name in the same database.
VERSION_TABLE = "record_store_alembic_version"


def run_migrations() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, target_metadata=None, version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None, version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
