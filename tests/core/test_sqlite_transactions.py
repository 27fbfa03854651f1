"""SQLite transactions through ``make_engine`` are transactions from their ``BEGIN``.

In the pysqlite driver's legacy mode (Python 3.11) a transaction began only at the first
INSERT/UPDATE/DELETE: when that first write was inside a savepoint (``begin_nested``), the
``SAVEPOINT`` opened the real transaction and its ``RELEASE`` committed it, so a later error or
a SIGKILL of the process left the savepoint's writes committed. ``make_engine`` now turns the
driver's transaction control off and emits ``BEGIN`` itself (``BEGIN IMMEDIATE`` when the
execution options ask for a writer). Real SQLite files, a real subprocess killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from resources.db import SQLITE_BEGIN, SQLITE_WRITER, make_engine

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path) -> tuple[str, Path]:
    path = tmp_path / "store.sqlite"
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER NOT NULL)")
    engine.dispose()
    return url, path


def rows(path: Path) -> int:
    """Counted by a connection of its own (nothing of the engine under test)."""
    probe = sqlite3.connect(path, isolation_level=None)
    try:
        return probe.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        probe.close()


def other_writer(path: Path) -> sqlite3.Connection:
    """A second writer that does not wait for the lock: busy is an immediate error."""
    return sqlite3.connect(path, isolation_level=None, timeout=0)


def test_an_error_after_a_released_savepoint_commits_nothing(store):
    url, path = store
    engine = make_engine(url)
    with pytest.raises(RuntimeError, match="after the release"), engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 0
        with conn.begin_nested():  # the transaction's first write
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        raise RuntimeError("after the release, before the commit")
    assert rows(path) == 0
    with engine.begin() as conn:  # the engine still commits what it should
        with conn.begin_nested():
            conn.exec_driver_sql("INSERT INTO t VALUES (2)")
        conn.exec_driver_sql("INSERT INTO t VALUES (3)")
    assert rows(path) == 2


KILLED_CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from resources.db import make_engine
engine = make_engine(sys.argv[2])
with engine.begin() as conn:
    with conn.begin_nested():
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    print("released", flush=True)
    sys.stdin.read()  # the parent kills us here, before COMMIT
"""


def test_a_sigkill_after_a_released_savepoint_commits_nothing(store):
    url, path = store
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, str(ROOT), url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "released"  # type: ignore[union-attr]
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=60)
    assert rows(path) == 0


def test_a_writer_transaction_holds_the_write_lock_from_begin(store):
    url, path = store
    engine = make_engine(url)
    other = other_writer(path)
    try:
        with engine.execution_options(**SQLITE_WRITER).begin() as conn:
            # not one statement of ours yet: the lock was taken by BEGIN IMMEDIATE
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                other.execute("BEGIN IMMEDIATE")
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        other.execute("BEGIN IMMEDIATE")  # free again once committed
        other.execute("INSERT INTO t VALUES (2)")
        other.execute("COMMIT")
        with engine.connect() as conn:  # the option on a connection, before its begin
            conn.execution_options(**SQLITE_WRITER)
            locked = pytest.raises(sqlite3.OperationalError, match="database is locked")
            with conn.begin(), locked:
                other.execute("BEGIN IMMEDIATE")
    finally:
        other.close()
    assert rows(path) == 2


def test_a_read_transaction_does_not_block_a_writer_and_keeps_its_snapshot(store):
    url, path = store
    engine = make_engine(url)
    other = other_writer(path)
    try:
        with engine.begin() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 0
            other.execute("BEGIN IMMEDIATE")  # would raise "database is locked" if blocked
            other.execute("INSERT INTO t VALUES (1)")
            other.execute("COMMIT")
            # one transaction from BEGIN: its reads are one snapshot (WAL)
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 0
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 1
    finally:
        other.close()


def test_the_connect_pragmas_still_apply(store):
    url, _ = store
    engine = make_engine(url, {"RECORD_STORE_BUSY_TIMEOUT_MS": "1234"})
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234


def test_autocommit_begins_nothing_and_a_bad_begin_mode_is_one_line(store):
    url, path = store
    engine = make_engine(url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        assert not conn.connection.dbapi_connection.in_transaction  # type: ignore[union-attr]
    assert rows(path) == 1
    bad = pytest.raises(ValueError, match=f"^execution option {SQLITE_BEGIN}='LATER' is not valid")
    with bad, engine.execution_options(**{SQLITE_BEGIN: "later"}).begin():
        pass
    # the pooled connection is one transaction from BEGIN again
    with pytest.raises(RuntimeError), engine.begin() as conn:
        with conn.begin_nested():
            conn.exec_driver_sql("INSERT INTO t VALUES (2)")
        raise RuntimeError("after the release")
    assert rows(path) == 1


def test_postgresql_ignores_the_option(pg_url):
    engine = make_engine(pg_url)
    with engine.execution_options(**SQLITE_WRITER).begin() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
