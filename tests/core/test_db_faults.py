"""The record store's engine bounds every wait, and its failures say one clear thing (issue #14 §9).

Real PostgreSQL (the shared server, a schema per test) and real SQLite files; the faults are real:
``pg_terminate_backend`` from another session, a statement that outlives its bound.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from resources.db import (
    SETTINGS,
    RecordStoreSettingError,
    is_transient,
    make_engine,
    settings,
)
from resources.notifier import OutboxDelivery, outbox
from tests.pg_admin import terminate_backends
from tests.support.webhook import WebhookReceiver

REPO = Path(__file__).resolve().parents[2]

# What each variable shows as on a PostgreSQL session (SHOW) when set to 1234.
PG_SHOWN = {
    "RECORD_STORE_LOCK_TIMEOUT_MS": "lock_timeout",
    "RECORD_STORE_STATEMENT_TIMEOUT_MS": "statement_timeout",
    "RECORD_STORE_IDLE_IN_TRANSACTION_TIMEOUT_MS": "idle_in_transaction_session_timeout",
}
BAD_VALUES = ["abc", "-1", "0", "1.5", "5s", " 12 ms", "1e3", "99999999999", "\uff15", "0x10"]


def test_every_engine_of_the_project_comes_from_the_one_factory():
    """A second ``create_engine`` would carry none of the bounds (the class of the defect)."""
    offenders = []
    for folder in ("orchestration", "resources", "assets", "migrations"):
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO).as_posix()
            text = path.read_text()
            if rel in ("resources/db.py", "migrations/record_store/env.py"):
                continue  # the factory; Alembic's env is handed our connection (``upgrade``)
            if re.search(r"\b(create_engine|engine_from_config|psycopg2\.connect)\(", text):
                offenders.append(rel)
    assert offenders == []


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.env)
def test_every_bad_setting_is_one_line_naming_the_variable(setting, monkeypatch, tmp_path):
    in_range = {str(v) for v in (setting.low, setting.high)}
    edges = [str(setting.low - 1), str(setting.high + 1)]
    for bad in [*(b for b in BAD_VALUES if b not in in_range), *edges]:
        monkeypatch.setenv(setting.env, bad)
        for url in (f"sqlite:///{tmp_path / 's.sqlite'}", "postgresql://u:pw@127.0.0.1:1/x"):
            with pytest.raises(RecordStoreSettingError) as err:
                make_engine(url)
            message = str(err.value)
            assert "\n" not in message
            assert message.startswith(f"{setting.env}=")
            assert f"from {setting.low} to {setting.high}" in message
            assert "pw" not in message
    for good in (str(setting.low), str(setting.high), f" {setting.default} ", ""):
        monkeypatch.setenv(setting.env, good)
        settings()  # no error


@pytest.mark.postgres
def test_postgres_sessions_carry_the_bounds_and_keep_the_urls_own_options(
    pg_schema_url, monkeypatch
):
    for env in PG_SHOWN:
        monkeypatch.delenv(env, raising=False)
    engine = make_engine(pg_schema_url)
    with engine.connect() as conn:
        shown = {k: conn.exec_driver_sql(f"SHOW {v}").scalar() for k, v in PG_SHOWN.items()}
        search_path = conn.exec_driver_sql("SHOW search_path").scalar()
    engine.dispose()
    assert shown == {
        "RECORD_STORE_LOCK_TIMEOUT_MS": "5s",
        "RECORD_STORE_STATEMENT_TIMEOUT_MS": "5min",
        "RECORD_STORE_IDLE_IN_TRANSACTION_TIMEOUT_MS": "5min",
    }
    assert search_path.startswith("t_")  # the URL's own -csearch_path survived
    assert engine.pool._pre_ping
    for env in PG_SHOWN:
        monkeypatch.setenv(env, "1234")
    engine = make_engine(pg_schema_url)
    with engine.connect() as conn:
        assert {conn.exec_driver_sql(f"SHOW {v}").scalar() for v in PG_SHOWN.values()} == {"1234ms"}
    engine.dispose()


def test_sqlite_busy_timeout_comes_from_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("RECORD_STORE_BUSY_TIMEOUT_MS", "750")
    engine = make_engine(f"sqlite:///{tmp_path / 's.sqlite'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 750
    engine.dispose()


@pytest.mark.postgres
def test_a_statement_past_statement_timeout_ends_and_is_not_retried(pg_schema_url, monkeypatch):
    monkeypatch.setenv("RECORD_STORE_STATEMENT_TIMEOUT_MS", "300")
    engine = make_engine(pg_schema_url)
    started = time.monotonic()
    with pytest.raises(sa.exc.OperationalError) as err, engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_sleep(20)")
    assert time.monotonic() - started < 10  # bounded, not 20 s
    assert "statement timeout" in str(err.value)
    assert not is_transient(err.value)
    engine.dispose()


@pytest.mark.postgres
def test_a_lock_wait_ends_at_lock_timeout(pg_schema_url, monkeypatch):
    monkeypatch.setenv("RECORD_STORE_LOCK_TIMEOUT_MS", "300")
    engine = make_engine(pg_schema_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE held (id int PRIMARY KEY)")
        conn.exec_driver_sql("INSERT INTO held VALUES (1)")
    holder = engine.connect()
    holder.exec_driver_sql("SELECT id FROM held WHERE id = 1 FOR UPDATE")  # stays idle
    admin = make_engine(pg_schema_url)
    holder_pid = holder.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    # Without a bound the UPDATE would wait forever: end the holder after 15 s so the test fails
    # instead of hanging.
    rescue = threading.Timer(15, lambda: admin.connect().execute(
        sa.text("SELECT pg_terminate_backend(:p)"), {"p": holder_pid}
    ))  # fmt: skip
    rescue.start()
    try:
        started = time.monotonic()
        with pytest.raises(sa.exc.OperationalError) as err, engine.begin() as conn:
            conn.exec_driver_sql("UPDATE held SET id = 2 WHERE id = 1")
        assert time.monotonic() - started < 10
        assert "lock timeout" in str(err.value)
        assert is_transient(err.value)
    finally:
        rescue.cancel()
        holder.invalidate()
        holder.close()
        engine.dispose()
        admin.dispose()


@pytest.mark.postgres
def test_delivery_survives_its_connection_killed_while_marking_delivered(pg_store_url):
    """The receiver kills the deliverer's backends while the first POSTs are in flight: the open
    batches' UPDATE delivered_at (or their commit) meets a dead connection. Each batch is redone:
    every row delivered once in the outbox, and the POSTs already answered 2xx are not repeated
    (only unacknowledged POSTs may be, under the same Idempotency-Key)."""
    app = "db-faults-delivery"
    url = f"{pg_store_url}&application_name={app}"
    engine, admin = make_engine(url), make_engine(pg_store_url)
    n = 60
    with engine.begin() as conn:
        conn.execute(
            outbox.insert(),
            [
                {
                    "dedupe_key": f"k{i}",
                    "channel": "webhook",
                    "payload": {"i": i},
                    "created_at": datetime.now(UTC),
                    "attempts": 0,
                }
                for i in range(n)
            ],
        )
    kills: list[int] = []
    lines: list[str] = []
    lock = threading.Lock()

    def kill_once(_key):
        with lock:
            if not kills:
                kills.append(terminate_backends(admin, app))

    with WebhookReceiver(before_answer=kill_once) as hook:
        report = OutboxDelivery(
            webhook_url=hook.url, concurrency=4, log=lines.append
        ).deliver_pending(engine)
        keys = hook.key_counts()
    assert kills and kills[0] >= 1, kills
    assert sorted(report.delivered) == sorted(f"k{i}" for i in range(n))
    assert keys == Counter({f"k{i}": 1 for i in range(n)})  # acknowledged: never POSTed again
    with engine.connect() as conn:
        rows = conn.execute(sa.select(outbox.c.delivered_at)).scalars().all()
    assert len(rows) == n and all(rows)
    assert any("retried after" in line and "attempt 1 failed" in line for line in lines), lines
    engine.dispose()
    admin.dispose()


@pytest.mark.postgres
def test_a_backend_killed_between_uses_is_replaced_by_pre_ping(pg_schema_url):
    app = "db-faults-preping"
    engine = make_engine(f"{pg_schema_url}&application_name={app}")
    admin = make_engine(pg_schema_url)
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    assert terminate_backends(admin, app) == 1
    with engine.connect() as conn:  # the pooled connection is dead; pre-ping replaces it
        assert conn.exec_driver_sql("SELECT 2").scalar() == 2
    engine.dispose()
    admin.dispose()


def test_retry_lines_name_the_attempt_and_the_wait(monkeypatch):
    """A refused connection retried over the window: one line per retry, then the error."""
    from resources.db import retrying

    lines: list[str] = []
    engine = make_engine("postgresql://u:pw-secret@127.0.0.1:1/x")
    started = time.monotonic()

    def connect():
        with engine.connect():
            pass

    with pytest.raises(sa.exc.OperationalError):
        retrying("probe", lines.append, window_s=1.5)(connect)
    assert time.monotonic() - started < 10
    assert len(lines) >= 2
    for n, line in enumerate(lines, start=1):
        assert line.startswith("probe retried after: OperationalError: ")
        assert f"attempt {n} failed, next in " in line
        assert "pw-secret" not in line
    engine.dispose()
