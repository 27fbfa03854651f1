"""Tests of the local platform sandbox against a real server on 127.0.0.1.

The rest of the project trusts the sandbox to behave like the real platform (auth, idempotency,
pagination, faults, transactional SQL), so each of those behaviours is pinned down here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dev.sandbox import Fault, SandboxServer
from dev.sandbox.sql_runner import split_sqlite_statements
from tests.support.sandbox import TEST_API_KEY, TEST_SUPABASE_TOKEN, running_sandbox
from tests.support.wait import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
API_KEY = TEST_API_KEY
SUPABASE_TOKEN = TEST_SUPABASE_TOKEN
# The platform's base schema, written out by hand (not read from the sandbox): a fresh bootstrap
# must create exactly these tables, in this order, each with these columns in this order. A
# sandbox that drops, renames or reorders one fails here instead of agreeing with itself.
PLATFORM_TABLES: dict[str, list[str]] = {
    "org_profiles": ["org_slug", "name", "status", "created_at", "updated_at"],
    "org_api_keys": ["id", "org_slug", "key_hash", "scopes", "created_at", "revoked_at"],
    "org_subscriptions": ["id", "org_slug", "plan", "status", "started_at", "ends_at"],
    "org_quotas": ["org_slug", "daily_limit", "monthly_limit", "daily_used", "monthly_used"],
    "org_usage_daily": ["org_slug", "usage_date", "requests", "pipelines_run"],
    "org_usage_monthly": ["org_slug", "usage_month", "requests", "pipelines_run"],
    "org_alerts": ["id", "org_slug", "rule_id", "severity", "state", "created_at"],
    "org_alert_rules": ["id", "org_slug", "metric", "threshold", "enabled"],
    "org_integrations": ["id", "org_slug", "provider", "status", "config", "updated_at"],
    "org_datasets": ["id", "org_slug", "dataset_id", "location", "synced_at"],
    "org_members": ["id", "org_slug", "user_id", "role", "joined_at"],
    "org_invitations": ["id", "org_slug", "email", "role", "expires_at"],
    "org_audit_logs": ["id", "org_slug", "actor", "action", "details", "created_at"],
    "org_cost_daily": ["org_slug", "cost_date", "provider", "amount", "currency"],
    "org_cost_monthly": ["org_slug", "cost_month", "provider", "amount", "currency"],
    "org_budgets": ["id", "org_slug", "period", "amount", "currency"],
    "org_notifications": ["id", "org_slug", "channel", "payload", "sent_at"],
    "org_webhooks": ["id", "org_slug", "url", "events", "secret_hash", "enabled"],
    "org_pipelines": ["id", "org_slug", "name", "schedule", "enabled"],
    "org_pipeline_runs": ["id", "pipeline_id", "org_slug", "status", "started_at", "ended_at"],
    "org_settings": ["org_slug", "key", "value", "updated_at"],
    "org_exports": ["id", "org_slug", "kind", "status", "location", "created_at"],
}
BOUND = 60.0  # a wait for a process to come up or exit; ends on the event


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[SandboxServer]:
    """An empty sandbox (no orgs): each test seeds exactly what it counts."""
    with running_sandbox(tmp_path, orgs=0) as server:
        yield server


@pytest.fixture
def api(srv: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=srv.base_url, headers={"X-CA-Root-Key": API_KEY}, timeout=10
    ) as client:
        yield client


def post(client: httpx.Client, path: str, body: dict | None = None, key: str | None = None):
    """POST with a fresh Idempotency-Key unless one is given."""
    return client.post(
        path, json=body or {}, headers={"Idempotency-Key": key or f"test-{uuid.uuid4()}"}
    )


def sql(srv: SandboxServer, query: str) -> httpx.Response:
    return httpx.post(
        f"{srv.base_url}/v1/projects/{srv.supabase_project_ref}/database/query",
        json={"query": query},
        headers={"Authorization": f"Bearer {SUPABASE_TOKEN}"},
        timeout=10,
    )


# -- auth -----------------------------------------------------------------------------------------


def test_platform_auth_401_and_credentials_never_recorded(srv: SandboxServer) -> None:
    for headers in ({}, {"X-CA-Root-Key": "wrong"}):
        r = httpx.get(f"{srv.base_url}/admin/orgs", headers=headers)
        assert r.status_code == 401
        assert r.json() == {"detail": "invalid or missing X-CA-Root-Key"}
    r = httpx.get(f"{srv.base_url}/admin/orgs", headers={"X-CA-Root-Key": API_KEY})
    assert r.status_code == 200
    assert [req["authorized"] for req in srv.requests] == [False, False, True]
    assert API_KEY not in repr(srv.requests)


def test_supabase_auth_and_unknown_project(srv: SandboxServer) -> None:
    url = f"{srv.base_url}/v1/projects/sandbox/database/query"
    r = httpx.post(url, json={"query": "select 1"})
    assert r.status_code == 401
    assert "message" in r.json()
    r = httpx.post(url, json={"query": "select 1"}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = httpx.post(
        f"{srv.base_url}/v1/projects/other/database/query",
        json={"query": "select 1"},
        headers={"Authorization": f"Bearer {SUPABASE_TOKEN}"},
    )
    assert r.status_code == 404
    assert SUPABASE_TOKEN not in repr(srv.requests)


def test_loopback_only() -> None:
    with pytest.raises(ValueError):
        SandboxServer(host="0.0.0.0")


# -- bootstrap ------------------------------------------------------------------------------------


def test_bootstrap_fresh_then_sync(srv: SandboxServer, api: httpx.Client) -> None:
    first = post(api, "/admin/bootstrap", {"mode": "smart"}).json()
    assert first["status"] == "ok"
    assert first["mode"] == "fresh"
    # every table of the platform's base schema, in its order, each with its columns in order
    assert first["tables_created"] == list(PLATFORM_TABLES)
    tables = srv.state()["bootstrap"]["tables"]
    assert tables == PLATFORM_TABLES
    assert list(tables) == list(PLATFORM_TABLES)  # the order too (dict equality ignores it)
    assert first["columns_added"] == {}
    assert first["tables_existing"] == 0

    second = post(api, "/admin/bootstrap", {"mode": "smart"}).json()
    assert second == {
        "status": "ok",
        "mode": "sync",
        "tables_created": [],
        "columns_added": {},
        "tables_existing": len(first["tables_created"]),
    }
    assert post(api, "/admin/bootstrap", {"mode": "drop-all"}).status_code == 400


def test_bootstrap_adds_new_columns_and_never_drops(srv: SandboxServer, api: httpx.Client) -> None:
    post(api, "/admin/bootstrap", {"mode": "smart"})
    before = srv.state()["bootstrap"]["tables"]
    srv.add_schema_column("org_quotas", "burst_limit")
    srv.add_schema_column("org_quotas", "daily_used")  # already there: not reported
    r = post(api, "/admin/bootstrap", {"mode": "smart"}).json()
    assert r["mode"] == "sync"
    assert r["columns_added"] == {"org_quotas": ["burst_limit"]}
    after = srv.state()["bootstrap"]["tables"]
    for table, columns in before.items():
        assert after[table][: len(columns)] == columns
    assert after["org_quotas"][-1] == "burst_limit"
    again = post(api, "/admin/bootstrap", {"mode": "smart"}).json()
    assert again["columns_added"] == {}
    assert srv.state()["bootstrap"]["tables"] == after


# -- orgs -----------------------------------------------------------------------------------------


def test_org_pagination_over_250_orgs(srv: SandboxServer, api: httpx.Client) -> None:
    slugs = srv.seed_orgs(250)
    srv.add_org("zz-suspended", status="suspended")
    pages: list[list[str]] = []
    cursor = None
    while True:
        params = {"status": "active", "limit": 100}
        if cursor:
            params["cursor"] = cursor
        body = api.get("/admin/orgs", params=params).json()
        pages.append([o["org_slug"] for o in body["orgs"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [100, 100, 50]
    seen = [s for page in pages for s in page]
    assert seen == sorted(set(seen)) == slugs
    assert slugs[0] == "org-0001"


def test_org_listing_validation(srv: SandboxServer, api: httpx.Client) -> None:
    srv.seed_orgs(3, prefix="sus", status="suspended")
    body = api.get("/admin/orgs", params={"status": "suspended"}).json()
    assert [o["org_slug"] for o in body["orgs"]] == ["sus-0001", "sus-0002", "sus-0003"]
    assert body["next_cursor"] is None
    assert api.get("/admin/orgs", params={"limit": 1001}).status_code == 400
    assert api.get("/admin/orgs", params={"limit": 0}).status_code == 400
    assert api.get("/admin/orgs", params={"cursor": "!!!"}).status_code == 400


def test_org_sync_counts_404_and_409(srv: SandboxServer, api: httpx.Client) -> None:
    srv.seed_orgs(2)
    srv.add_org("paused", status="suspended")
    r = post(api, "/admin/orgs/org-0001/sync")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "org_slug": "org-0001", "datasets_synced": 3}
    assert post(api, "/admin/orgs/missing/sync").status_code == 404
    assert post(api, "/admin/orgs/paused/sync").status_code == 409
    orgs = srv.state()["orgs"]
    assert orgs["org-0001"] == {"status": "active", "syncs": 1, "datasets_synced": 3}
    assert orgs["paused"]["syncs"] == 0


# -- maintenance endpoints and idempotency --------------------------------------------------------


def test_maintenance_endpoints(srv: SandboxServer, api: httpx.Client) -> None:
    srv.seed_orgs(5)
    srv.add_org("gone", status="suspended")
    assert post(api, "/admin/quota/reset-daily", {"date": "2026-11-23"}).json() == {
        "status": "ok",
        "orgs_reset": 5,
    }
    assert post(api, "/admin/quota/reset-daily", {"date": "2026-02-30"}).status_code == 400
    assert post(api, "/admin/quota/reset-monthly", {"month": "2026-13"}).status_code == 400
    assert post(api, "/admin/quota/reset-monthly", {"month": "2026-11"}).json()["orgs_reset"] == 5
    assert post(api, "/admin/quota/cleanup-stale").json() == {"status": "ok", "counters_fixed": 3}
    assert post(api, "/admin/quota/cleanup-stale").json()["counters_fixed"] == 0
    # Which orgs alert is fixed per (org, date) (crc32 of "<org>:<date>" divisible by 4): on
    # 2026-11-23 org-0003 and org-0005 of org-0001..5, on 2026-11-24 org-0001, -0002, -0004.
    alerts = post(api, "/admin/alerts/process-all", {"date": "2026-11-23"}).json()
    assert alerts == {"status": "ok", "orgs_processed": 5, "alerts_sent": 2}
    next_day = post(api, "/admin/alerts/process-all", {"date": "2026-11-24"}).json()
    assert (next_day["orgs_processed"], next_day["alerts_sent"]) == (5, 3)
    state = srv.state()
    assert state["effects"]["reset-daily"] == {"2026-11-23": 1}
    assert state["effects"]["reset-monthly"] == {"2026-11": 1}
    assert sum(state["effects"]["cleanup-stale"].values()) == 2
    assert state["effects"]["process-all"] == {"2026-11-23": 1, "2026-11-24": 1}
    assert set(state["quota"]["stale_counters"].values()) == {0}
    assert state["alerts"] == {
        "sent_total": 5,
        "by_date": {
            "2026-11-23": {"orgs_processed": 5, "alerts_sent": 2},
            "2026-11-24": {"orgs_processed": 5, "alerts_sent": 3},
        },
    }


def test_idempotent_replay_and_key_reuse(srv: SandboxServer, api: httpx.Client) -> None:
    srv.seed_orgs(4)
    key = "quota-reset-daily:2026-11-23"
    first = post(api, "/admin/quota/reset-daily", {"date": "2026-11-23"}, key=key)
    again = post(api, "/admin/quota/reset-daily", {"date": "2026-11-23"}, key=key)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert srv.state()["effects"]["reset-daily"] == {"2026-11-23": 1}

    reused = post(api, "/admin/quota/reset-daily", {"date": "2026-11-24"}, key=key)
    assert reused.status_code == 422
    assert reused.json() == {"detail": "Idempotency-Key reused with a different request"}
    assert post(api, "/admin/quota/reset-monthly", {"month": "2026-11"}, key=key).status_code == 422

    missing = api.post("/admin/quota/reset-daily", json={"date": "2026-11-23"})
    assert missing.status_code == 400
    assert missing.json() == {"detail": "Idempotency-Key header required"}
    assert [r["idempotency_key"] for r in srv.requests][:2] == [key, key]


def test_idempotency_is_atomic_under_concurrency(srv: SandboxServer) -> None:
    srv.seed_orgs(1)
    statuses: list[int] = []

    def call() -> None:
        with httpx.Client(base_url=srv.base_url, headers={"X-CA-Root-Key": API_KEY}) as c:
            r = post(c, "/admin/orgs/org-0001/sync", key="sync:org-0001:run-1")
            statuses.append(r.status_code)

    threads = [threading.Thread(target=call) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 12
    assert srv.state()["orgs"]["org-0001"]["syncs"] == 1


def test_idempotency_survives_restart(tmp_path: Path) -> None:
    state = tmp_path / "persist.sqlite3"
    for expected_replay in (False, True):
        with running_sandbox(tmp_path, orgs=2, state_path=state) as s:
            r = httpx.post(
                f"{s.base_url}/admin/quota/reset-daily",
                json={"date": "2026-11-23"},
                headers={"X-CA-Root-Key": API_KEY, "Idempotency-Key": "slot-1"},
            )
            assert r.status_code == 200
            assert ("Idempotent-Replayed" in r.headers) is expected_replay
            assert s.state()["effects"]["reset-daily"] == {"2026-11-23": 1}


def test_unknown_route_and_invalid_json(srv: SandboxServer, api: httpx.Client) -> None:
    assert api.get("/admin/nothing").status_code == 404
    assert api.get("/admin/nothing").json() == {"detail": "not found"}
    r = api.post(
        "/admin/quota/reset-daily",
        content=b"{not json",
        headers={"Idempotency-Key": "k", "Content-Type": "application/json"},
    )
    assert r.status_code == 400


# -- faults and latency ---------------------------------------------------------------------------


def test_fault_twice_503_then_success_applies_once(srv: SandboxServer, api: httpx.Client) -> None:
    srv.seed_orgs(3)
    srv.add_fault(Fault(method="POST", path="/admin/orgs/org-0003/sync", status=503, times=2))
    codes = [post(api, "/admin/orgs/org-0003/sync", key="retry-me").status_code for _ in range(4)]
    assert codes == [503, 503, 200, 200]
    assert srv.state()["orgs"]["org-0003"]["syncs"] == 1
    assert srv.faults == []
    assert post(api, "/admin/orgs/org-0002/sync").status_code == 200


def test_fault_429_with_retry_after_and_custom_body(srv: SandboxServer, api: httpx.Client) -> None:
    srv.add_fault(Fault(method="GET", path="/admin/orgs", status=429, retry_after=2, times=1))
    r = api.get("/admin/orgs")
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "2"
    assert r.json() == {"detail": "injected fault 429"}
    assert api.get("/admin/orgs").status_code == 200
    srv.add_fault(Fault(path="/admin/orgs", status=500, body={"detail": "boom"}))
    assert api.get("/admin/orgs").json() == {"detail": "boom"}


def test_fault_delay_only_and_times_decrement(srv: SandboxServer, api: httpx.Client) -> None:
    srv.add_fault(Fault(method="GET", path="/admin/orgs", status=None, delay_ms=200, times=2))
    start = time.monotonic()
    assert api.get("/admin/orgs").status_code == 200
    assert time.monotonic() - start >= 0.2  # a lower bound: a busy machine only adds to it
    assert [f.times for f in srv.faults] == [1]
    assert api.get("/admin/orgs").status_code == 200
    assert srv.faults == []  # used up: nothing is left to slow the next request down
    assert api.get("/admin/orgs").status_code == 200
    assert [r["status"] for r in srv.requests] == [200, 200, 200]  # delay only, no status


def test_fault_wildcard_and_clear(srv: SandboxServer, api: httpx.Client) -> None:
    fault = Fault(method="*", path="/admin/*", status=502)
    srv.add_fault(fault)
    assert api.get("/admin/orgs").status_code == 502
    assert post(api, "/admin/bootstrap", {"mode": "smart"}).status_code == 502
    assert sql(srv, "select 1 as one").status_code == 201  # outside the prefix
    assert fault.times is None  # the caller's object is not mutated
    srv.clear_faults()
    assert api.get("/admin/orgs").status_code == 200
    assert [r["status"] for r in srv.requests] == [502, 502, 201, 200]


def test_latency(srv: SandboxServer, api: httpx.Client) -> None:
    srv.set_latency(150)
    start = time.monotonic()
    api.get("/admin/orgs")
    assert time.monotonic() - start >= 0.15
    srv.set_latency(0)


def test_http_control_endpoints(srv: SandboxServer, api: httpx.Client) -> None:
    base = srv.base_url
    assert httpx.get(f"{base}/_sandbox/health").json()["status"] == "ok"
    seeded = httpx.post(f"{base}/_sandbox/seed", json={"orgs": 2}).json()
    assert seeded["org_slugs"] == ["org-0001", "org-0002"]
    httpx.post(f"{base}/_sandbox/seed", json={"org_slugs": ["acme"]})
    fault = {"method": "GET", "path": "/admin/orgs", "status": 503, "times": 1}
    assert httpx.post(f"{base}/_sandbox/faults", json=fault).status_code == 201
    assert httpx.post(f"{base}/_sandbox/faults", json={"bogus": 1}).status_code == 400
    assert api.get("/admin/orgs").status_code == 503
    body = api.get("/admin/orgs").json()
    assert [o["org_slug"] for o in body["orgs"]] == ["acme", "org-0001", "org-0002"]
    httpx.post(f"{base}/_sandbox/faults", json={"path": "/admin/*"})
    httpx.delete(f"{base}/_sandbox/faults")
    assert api.get("/admin/orgs").status_code == 200
    logged = httpx.get(f"{base}/_sandbox/requests").json()
    assert [r["status"] for r in logged] == [503, 200, 200]
    httpx.delete(f"{base}/_sandbox/requests")
    assert httpx.get(f"{base}/_sandbox/requests").json() == []
    httpx.post(f"{base}/_sandbox/schema", json={"table": "org_budgets", "column": "alert_pct"})
    post(api, "/admin/bootstrap", {"mode": "smart"})
    state = httpx.get(f"{base}/_sandbox/state").json()
    assert "alert_pct" in state["bootstrap"]["tables"]["org_budgets"]
    httpx.post(f"{base}/_sandbox/latency", json={"ms": 120})
    start = time.monotonic()
    api.get("/admin/orgs")
    assert time.monotonic() - start >= 0.12


# -- Supabase SQL on SQLite -----------------------------------------------------------------------


def test_split_statements_respects_quotes_comments_and_triggers() -> None:
    text = """
    -- leading comment; with a semicolon
    CREATE TABLE a (x TEXT);
    INSERT INTO a VALUES ('semi;colon');  /* block; comment */
    CREATE TRIGGER t AFTER INSERT ON a BEGIN INSERT INTO a VALUES ('t;'); END;
    SELECT * FROM a
    """
    parts = split_sqlite_statements(text)
    assert len(parts) == 4
    assert parts[1].endswith("('semi;colon');")
    assert parts[2].startswith("/* block; comment */")
    assert parts[3] == "SELECT * FROM a"


def test_sqlite_multi_statement_returns_rows(srv: SandboxServer) -> None:
    r = sql(
        srv,
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL);"
        "INSERT INTO items (name, price) VALUES ('a;b', 1.5), ('c', 2);"
        "SELECT id, name, price FROM items ORDER BY id;"
        "UPDATE items SET price = 3 WHERE name = 'c';",
    )
    assert r.status_code == 201
    assert r.json() == [{"id": 1, "name": "a;b", "price": 1.5}, {"id": 2, "name": "c", "price": 2}]
    assert sql(srv, "SELECT price FROM items WHERE id = 2").json() == [{"price": 3}]
    assert sql(srv, "DELETE FROM items").json() == []


def test_sqlite_error_rolls_back_whole_request(srv: SandboxServer) -> None:
    assert sql(srv, "CREATE TABLE kept (x INTEGER)").status_code == 201
    r = sql(srv, "INSERT INTO kept VALUES (1); CREATE TABLE gone (y); SELECT * FROM missing;")
    assert r.status_code == 400
    assert "missing" in r.json()["message"]
    assert sql(srv, "SELECT COUNT(*) AS n FROM kept").json() == [{"n": 0}]
    assert sql(srv, "SELECT * FROM gone").status_code == 400


def test_sqlite_explicit_transaction_control_is_honoured(srv: SandboxServer) -> None:
    r = sql(
        srv,
        "BEGIN; CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1); COMMIT;"
        "INSERT INTO t VALUES (2); SELECT nope FROM t;",
    )
    assert r.status_code == 400
    assert sql(srv, "SELECT x FROM t").json() == [{"x": 1}]


# -- Supabase SQL on PostgreSQL -------------------------------------------------------------------


@pytest.fixture
def pg_srv(pg_url: str, tmp_path: Path) -> Iterator[tuple[SandboxServer, str]]:
    """A sandbox whose Management API runs SQL on the test PostgreSQL (``pg_url``: skipped
    when absent unless REQUIRE_POSTGRES=1), and a schema name the test creates and we drop."""
    import psycopg2

    schema = f"sandbox_test_{uuid.uuid4().hex[:12]}"
    db_url = pg_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    with running_sandbox(tmp_path, orgs=0, supabase_db_url=db_url) as server:
        yield server, schema
    conn = psycopg2.connect(pg_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    conn.close()


@pytest.mark.postgres
def test_postgres_multi_statement_returns_rows(pg_srv: tuple[SandboxServer, str]) -> None:
    srv, schema = pg_srv
    r = sql(
        srv,
        f"CREATE SCHEMA {schema};"
        f"CREATE TABLE {schema}.items (id serial PRIMARY KEY, name text, price numeric,"
        " at timestamptz DEFAULT '2026-11-23T00:00:00Z');"
        f"INSERT INTO {schema}.items (name, price) VALUES ('a;b', 1.5), ('c', 2);"
        f"SELECT id, name, price, at FROM {schema}.items ORDER BY id;",
    )
    assert r.status_code == 201, r.text
    rows = r.json()
    assert [(row["id"], row["name"], row["price"]) for row in rows] == [
        (1, "a;b", 1.5),
        (2, "c", 2),
    ]
    assert rows[0]["at"].startswith("2026-11-23T00:00:00")


@pytest.mark.postgres
def test_postgres_error_rolls_back_whole_request(pg_srv: tuple[SandboxServer, str]) -> None:
    srv, schema = pg_srv
    assert (
        sql(srv, f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.kept (x int)").status_code == 201
    )
    r = sql(
        srv,
        f"INSERT INTO {schema}.kept VALUES (1); CREATE TABLE {schema}.gone (y int);"
        f"SELECT * FROM {schema}.missing;",
    )
    assert r.status_code == 400
    assert "missing" in r.json()["message"]
    assert sql(srv, f"SELECT count(*) AS n FROM {schema}.kept").json() == [{"n": 0}]
    assert sql(srv, f"SELECT * FROM {schema}.gone").status_code == 400


@pytest.mark.postgres
def test_postgres_explicit_commit_inside_text(pg_srv: tuple[SandboxServer, str]) -> None:
    srv, schema = pg_srv
    r = sql(
        srv,
        f"BEGIN; CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (x int);"
        f"INSERT INTO {schema}.t VALUES (1); COMMIT; SELECT x FROM {schema}.t;",
    )
    assert r.status_code == 201, r.text
    assert r.json() == [{"x": 1}]


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_serve_port_file_health_and_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dev.sandbox",
            "serve",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--state",
            str(tmp_path / "cli.sqlite3"),
            "--seed-orgs",
            "3",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "SANDBOX_API_KEY": "cli-key"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The port file is written once the socket listens (atomically: never half a number).
        wait_until(
            lambda: port_file.exists() and port_file.read_text().strip(),
            BOUND,
            "the sandbox's port file",
            alive=lambda: proc.poll() is None,
        )
        port = int(port_file.read_text())
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/_sandbox/health").json()["status"] == "ok"
        orgs = httpx.get(f"{base}/admin/orgs", headers={"X-CA-Root-Key": "cli-key"})
        assert len(orgs.json()["orgs"]) == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=BOUND) == 0
        assert proc.stdout is not None
        assert proc.stdout.read().strip() == f"sandbox listening on {base}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
