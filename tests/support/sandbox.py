"""The platform sandbox as the suite starts it: the test keys, a state file, a few active orgs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dev.sandbox.server import SandboxServer

TEST_API_KEY = "test-root-key-5f0c2b7a9d"
TEST_SUPABASE_TOKEN = "test-supabase-token-8e1d4c3b"


@contextmanager
def running_sandbox(directory: Path, orgs: int = 5, **kwargs: Any) -> Iterator[SandboxServer]:
    """A started sandbox on 127.0.0.1 keeping its state under ``directory``, seeded with ``orgs``.

    Keyword arguments go to :class:`SandboxServer` (e.g. ``supabase_db_url`` for a
    PostgreSQL-backed Management API); the test keys are the defaults.
    """
    kwargs.setdefault("api_key", TEST_API_KEY)
    kwargs.setdefault("supabase_token", TEST_SUPABASE_TOKEN)
    kwargs.setdefault("state_path", str(Path(directory) / "sandbox-state.sqlite"))
    with SandboxServer(**kwargs) as server:
        if orgs:
            server.seed_orgs(orgs)
        yield server
