"""Record-store upgrades racing: the daemon's sensor threads, several processes on one database."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from resources import record_store
from resources.record_store import RecordStoreResource, make_engine
from tests.job_cli import REPO
from tests.support.store import version_rows


def _expected_heads(tmp_path) -> set[str]:
    """The version rows of a store upgraded alone."""
    url = f"sqlite:///{tmp_path / 'alone.sqlite'}"
    record_store.upgrade(url)
    return version_rows(url)


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_store_url(request, tmp_path) -> str:
    """A record store URL nothing has migrated yet."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    return request.getfixturevalue("pg_schema_url")


def test_resources_set_up_on_eight_threads_upgrade_a_fresh_store_once(
    fresh_store_url, monkeypatch, tmp_path
):
    """What a daemon tick does: several sensors' resources set up at once on a fresh store
    (without the lock this segfaulted in SQLite or raised KeyError inside Alembic)."""
    store_url = fresh_store_url
    monkeypatch.setattr(record_store, "_UPGRADED", set())
    calls = []
    real = record_store.upgrade
    monkeypatch.setattr(record_store, "upgrade", lambda url: calls.append(url) or real(url))

    def set_up(_):
        resource = RecordStoreResource(url=store_url)
        resource.setup_for_execution(None)  # type: ignore[arg-type]

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(set_up, range(16)))
    assert len(calls) == 1  # once per process and URL, not per tick
    assert version_rows(store_url) == _expected_heads(tmp_path)


def test_processes_upgrading_one_fresh_store_at_once_all_succeed(fresh_store_url, tmp_path):
    """Code server and run workers starting together: an advisory lock on PostgreSQL, a retry
    on SQLite (where one of two processes creating the same table fails once)."""
    url = fresh_store_url
    n = 4
    code = "import sys; from resources import record_store as r; r.ensure_upgraded(sys.argv[1])"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url], cwd=REPO, stderr=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, "\n".join(errors)
    assert version_rows(url) == _expected_heads(tmp_path)


def test_a_current_store_is_opened_without_waiting_on_an_upgrade_lock(pg_schema_url):
    """Another process holding the upgrade lock (e.g. stopped mid-start) must not hold up a
    process whose store is already current: the head check is a plain read, no lock."""
    import threading

    from resources.record_store import upgrade

    upgrade(pg_schema_url)  # the store is current
    admin = make_engine(pg_schema_url)
    with admin.connect() as holder:
        holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": 0x5EC0_5D00})
        done = threading.Event()
        worker = threading.Thread(target=lambda: (upgrade(pg_schema_url), done.set()), daemon=True)
        worker.start()
        finished = done.wait(timeout=15)
        holder.execute(sa.text("SELECT pg_advisory_unlock_all()"))
    worker.join(timeout=30)
    admin.dispose()
    assert finished, "upgrade of a current store waited on another process's upgrade lock"


def test_a_store_one_area_behind_is_still_upgraded(store_url):
    """The head check must not mistake a store with one area behind for a current one."""
    from resources.record_store import VERSION_TABLE, upgrade

    upgrade(store_url)
    engine = make_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE release_locks"))
        conn.execute(sa.text(f"DELETE FROM {VERSION_TABLE} WHERE version_num = 'release_0001'"))
    upgrade(store_url)
    assert "release_locks" in sa.inspect(engine).get_table_names()
    engine.dispose()
