"""Shared fixtures: real PostgreSQL, a real sandbox HTTP server, real Dagster instances."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import dagster as dg
import pytest
import sqlalchemy as sa

from dev.sandbox.server import SandboxServer
from resources.db import make_engine
from tests.support.sandbox import TEST_API_KEY, TEST_SUPABASE_TOKEN, running_sandbox

# Step retries keep their policy (attempts, backoff) but not their 5 s sleeps under test.
os.environ.setdefault("PLATFORM_OPS_RETRY_DELAY_SECONDS", "0.05")

__all__ = ["TEST_API_KEY", "TEST_SUPABASE_TOKEN", "run_config"]
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _pg_url() -> str:
    return os.environ.get("TEST_DATABASE_URL", DEFAULT_PG_URL)


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The PostgreSQL server; a skip only when it is absent and CI did not demand it."""
    url = _pg_url()
    try:
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # pragma: no cover - depends on the machine
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"REQUIRE_POSTGRES=1 but PostgreSQL at {url} is unreachable: {exc}")
        pytest.skip(f"PostgreSQL at {url} unreachable: {exc}")
    return url


@pytest.fixture
def pg_schema_url(pg_url: str) -> Iterator[str]:
    """A fresh schema of its own on the test server, as a URL whose search_path points at it."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in pg_url else "?"
    yield f"{pg_url}{sep}options={quote(f'-csearch_path={schema}')}"
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture
def sandbox(tmp_path) -> Iterator[SandboxServer]:
    """The project's platform sandbox on 127.0.0.1, with a few active orgs."""
    with running_sandbox(tmp_path) as server:
        yield server


@pytest.fixture
def platform_env(monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer) -> SandboxServer:
    """Process environment pointing the jobs at the sandbox, as the README's demo does."""
    monkeypatch.setenv("CA_API_URL", sandbox.base_url)
    monkeypatch.setenv("CA_ROOT_API_KEY", TEST_API_KEY)
    monkeypatch.setenv("SUPABASE_ACCESS_TOKEN", TEST_SUPABASE_TOKEN)
    monkeypatch.delenv("SUPABASE_API_URL", raising=False)
    monkeypatch.delenv("SUPABASE_PROJECT_REF", raising=False)
    return sandbox


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


# Run config that keeps retries fast in tests (the contract's backoff, scaled down).
FAST_RETRY_RUN_CONFIG = {
    "resources": {
        "platform_api": {"config": {"initial_backoff_seconds": 0.01, "max_backoff_seconds": 0.05}},
        "supabase": {"config": {"initial_backoff_seconds": 0.01}},
    }
}


def run_config(environment: str = "test", **extra: object) -> dict:
    """FAST_RETRY_RUN_CONFIG plus the environment choice and any op config."""
    config = {
        "resources": {
            **FAST_RETRY_RUN_CONFIG["resources"],
            "environment": {"config": {"name": environment, **extra.pop("env_extra", {})}},
        }
    }
    config.update(extra)
    return config


@pytest.fixture
def sqlite_store_url(tmp_path) -> str:
    """A record store on a fresh SQLite file, migrated to every area's head."""
    from resources.record_store import upgrade

    url = f"sqlite:///{tmp_path / 'record_store.sqlite'}"
    upgrade(url)
    return url


@pytest.fixture
def pg_store_url(pg_schema_url: str) -> str:
    """A record store in a fresh PostgreSQL schema, migrated to every area's head."""
    from resources.record_store import upgrade

    upgrade(pg_schema_url)
    return pg_schema_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request) -> str:
    """Run a test on both record-store backends."""
    name = "sqlite_store_url" if request.param == "sqlite" else "pg_store_url"
    return request.getfixturevalue(name)


@pytest.fixture
def engine(store_url: str) -> Iterator[sa.Engine]:
    """The suite's one engine on the record store under test (both backends)."""
    eng = make_engine(store_url)
    yield eng
    eng.dispose()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that reaches PostgreSQL carries ``postgres``, so ``-m postgres`` selects them all.

    A test reaches the server through ``pg_url`` (directly or through a fixture built on it), or
    through a backend parameter named ``postgres`` (``store_url``'s, or a test's own that picks a
    fixture by name at run time); marking from the fixture closure and the parameters means a new
    test cannot forget the mark.
    """
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "pg_url" in getattr(item, "fixturenames", ()) or "postgres" in params.values():
            item.add_marker(pytest.mark.postgres)
