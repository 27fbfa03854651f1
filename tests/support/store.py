"""Reading a record store's migration state directly, not through the project's own check."""

from __future__ import annotations

import sqlalchemy as sa

from resources.db import make_engine
from resources.record_store import VERSION_TABLE


def version_rows(url: str) -> set[str]:
    """What the store's Alembic version table holds (one row per applied branch head)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())
    finally:
        engine.dispose()
