"""Real faults on the test PostgreSQL server, from an administrative session."""

from __future__ import annotations

import sqlalchemy as sa


def terminate_backends(admin: sa.Engine, application_name: str) -> int:
    """Kill every backend of ``application_name`` (a real lost connection); how many went."""
    with admin.connect() as conn:
        return len(
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :a AND pid <> pg_backend_pid()"
                ),
                {"a": application_name},
            ).all()
        )
