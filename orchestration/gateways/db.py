"""Record-store engines for the gateway agent (Dagster-free, see ``resources.db``)."""

from __future__ import annotations

import sqlalchemy as sa

from resources.db import make_engine, normalize_url

__all__ = ["is_postgres", "make_engine", "normalize_url"]


def is_postgres(engine: sa.Engine) -> bool:
    return engine.dialect.name == "postgresql"
