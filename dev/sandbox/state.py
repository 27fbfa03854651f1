"""Persistent state of the sandbox platform, kept in one SQLite file.

The sandbox must behave like a real stateful service: a re-run of a job must see what the previous
run did (orgs synced, quota resets applied, idempotency keys used), even across a sandbox restart.
So every piece of state lives in SQLite, and every operation runs in one transaction under a lock,
which makes the effect of a request and its idempotency record atomic and concurrent requests safe.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The platform's base schema as the bootstrap endpoint creates it (table -> columns, in order).
BASE_SCHEMA: dict[str, tuple[str, ...]] = {
    "org_profiles": ("org_slug", "name", "status", "created_at", "updated_at"),
    "org_api_keys": ("id", "org_slug", "key_hash", "scopes", "created_at", "revoked_at"),
    "org_subscriptions": ("id", "org_slug", "plan", "status", "started_at", "ends_at"),
    "org_quotas": ("org_slug", "daily_limit", "monthly_limit", "daily_used", "monthly_used"),
    "org_usage_daily": ("org_slug", "usage_date", "requests", "pipelines_run"),
    "org_usage_monthly": ("org_slug", "usage_month", "requests", "pipelines_run"),
    "org_alerts": ("id", "org_slug", "rule_id", "severity", "state", "created_at"),
    "org_alert_rules": ("id", "org_slug", "metric", "threshold", "enabled"),
    "org_integrations": ("id", "org_slug", "provider", "status", "config", "updated_at"),
    "org_datasets": ("id", "org_slug", "dataset_id", "location", "synced_at"),
    "org_members": ("id", "org_slug", "user_id", "role", "joined_at"),
    "org_invitations": ("id", "org_slug", "email", "role", "expires_at"),
    "org_audit_logs": ("id", "org_slug", "actor", "action", "details", "created_at"),
    "org_cost_daily": ("org_slug", "cost_date", "provider", "amount", "currency"),
    "org_cost_monthly": ("org_slug", "cost_month", "provider", "amount", "currency"),
    "org_budgets": ("id", "org_slug", "period", "amount", "currency"),
    "org_notifications": ("id", "org_slug", "channel", "payload", "sent_at"),
    "org_webhooks": ("id", "org_slug", "url", "events", "secret_hash", "enabled"),
    "org_pipelines": ("id", "org_slug", "name", "schedule", "enabled"),
    "org_pipeline_runs": ("id", "pipeline_id", "org_slug", "status", "started_at", "ended_at"),
    "org_settings": ("org_slug", "key", "value", "updated_at"),
    "org_exports": ("id", "org_slug", "kind", "status", "location", "created_at"),
}

#: Datasets one org sync reports; a constant keeps assertions in tests simple.
DATASETS_PER_SYNC = 3
#: Stuck quota counters a fresh state holds, so cleanup-stale has something to fix.
DEFAULT_STALE_COUNTERS = 3
#: Effect kinds reported under state()["effects"], one per maintenance endpoint.
EFFECT_KINDS = ("reset-daily", "reset-monthly", "cleanup-stale", "process-all")
MAX_PAGE_LIMIT = 1000
DEFAULT_PAGE_LIMIT = 100

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS orgs (
    slug TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    syncs INTEGER NOT NULL DEFAULT 0,
    datasets_synced INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS orgs_status_slug ON orgs (status, slug);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS effects (
    kind TEXT NOT NULL,
    slot TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (kind, slot)
);
CREATE TABLE IF NOT EXISTS platform_tables (name TEXT PRIMARY KEY, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS platform_columns (
    table_name TEXT NOT NULL,
    column_name TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (table_name, column_name)
);
CREATE TABLE IF NOT EXISTS schema_extras (
    table_name TEXT NOT NULL,
    column_name TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (table_name, column_name)
);
CREATE TABLE IF NOT EXISTS stale_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS alert_runs (
    run_date TEXT PRIMARY KEY,
    orgs_processed INTEGER NOT NULL,
    alerts_sent INTEGER NOT NULL
);
"""


class ApiError(Exception):
    """A request the platform rejects; the server turns it into `status` + `{"detail": ...}`."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class IdempotencyRecord:
    """What a key was first used for and what it answered, so a retry can be replayed."""

    method: str
    path: str
    fingerprint: str
    status: int
    body: Any


def encode_cursor(slug: str) -> str:
    """Opaque cursor so clients never build one themselves (keyset on slug)."""
    return base64.urlsafe_b64encode(slug.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """Inverse of encode_cursor; a malformed cursor is the client's error (400)."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        slug = base64.b64decode(padded.encode(), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "invalid cursor") from exc
    if not slug or encode_cursor(slug) != cursor:
        raise ApiError(400, "invalid cursor")
    return slug


def parse_date(value: Any) -> str:
    """Validate a YYYY-MM-DD body field strictly (400 otherwise)."""
    if isinstance(value, str) and _DATE.fullmatch(value):
        try:
            dt.date.fromisoformat(value)
            return value
        except ValueError:
            pass
    raise ApiError(400, "date must be a valid YYYY-MM-DD string")


def parse_month(value: Any) -> str:
    """Validate a YYYY-MM body field strictly (400 otherwise)."""
    if isinstance(value, str) and _MONTH.fullmatch(value):
        return value
    raise ApiError(400, "month must be a valid YYYY-MM string")


class SandboxState:
    """All platform state behind one SQLite connection and one re-entrant lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._depth = 0
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        # A sandbox needs WAL durability, not an fsync per request: NORMAL keeps it fast.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        # executescript commits any open transaction, so the idempotent DDL runs before ours.
        self._conn.executescript(_DDL)
        with self.transaction():
            if self._meta("initialized") is None:
                self.add_stale_counters(DEFAULT_STALE_COUNTERS)
                self._set_meta("initialized", time.time())

    # -- plumbing -------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit; nested uses join the outer one (effect + idempotency record)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")
            finally:
                self._depth = 0

    def close(self) -> None:
        """Release the file (tests delete temp dirs afterwards)."""
        with self._lock:
            self._conn.close()

    def _meta(self, key: str) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _set_meta(self, key: str, value: Any) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    def _bump_effect(self, kind: str, slot: str) -> None:
        self._conn.execute(
            "INSERT INTO effects (kind, slot, count) VALUES (?, ?, 1) "
            "ON CONFLICT (kind, slot) DO UPDATE SET count = count + 1",
            (kind, slot),
        )

    def _active_slugs(self) -> list[str]:
        rows = self._conn.execute("SELECT slug FROM orgs WHERE status = 'active' ORDER BY slug")
        return [r[0] for r in rows]

    # -- orgs -----------------------------------------------------------------------------------

    def seed_orgs(self, n: int, prefix: str = "org", status: str = "active") -> list[str]:
        """Create prefix-0001..prefix-n; existing slugs are left alone so re-seeding is safe."""
        if n < 0:
            raise ValueError("n must be >= 0")
        slugs = [f"{prefix}-{i:04d}" for i in range(1, n + 1)]
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO orgs (slug, status) VALUES (?, ?)",
                [(s, status) for s in slugs],
            )
        return slugs

    def add_org(self, slug: str, status: str = "active", *, any_slug: bool = False) -> None:
        """Create an org, or change the status of an existing one (e.g. to suspend it).

        ``any_slug`` stores even a slug no platform would accept, so tests can list hostile ones.
        """
        if not any_slug and (not slug or "/" in slug):
            raise ValueError(f"invalid org slug: {slug!r}")
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO orgs (slug, status) VALUES (?, ?) "
                "ON CONFLICT (slug) DO UPDATE SET status = excluded.status",
                (slug, status),
            )

    def list_orgs(
        self, status: str | None, cursor: str | None, limit: int
    ) -> tuple[list[dict[str, str]], str | None]:
        """Keyset page ordered by slug; next cursor only when more rows exist."""
        after = decode_cursor(cursor) if cursor else ""
        sql = "SELECT slug, status FROM orgs WHERE slug > ?"
        args: list[Any] = [after]
        if status:
            sql += " AND status = ?"
            args.append(status)
        sql += " ORDER BY slug LIMIT ?"
        args.append(limit + 1)
        with self.transaction() as conn:
            rows = conn.execute(sql, args).fetchall()
        page = [{"org_slug": slug, "status": st} for slug, st in rows[:limit]]
        next_cursor = encode_cursor(page[-1]["org_slug"]) if len(rows) > limit else None
        return page, next_cursor

    def sync_org(self, slug: str) -> dict[str, Any]:
        """Sync one org's datasets; only active orgs can be synced (409 otherwise).

        A sync converges the org's datasets to the platform schema: ``datasets_synced`` is the
        state (how many datasets are in sync), ``syncs`` counts the calls that did the work.
        """
        with self.transaction() as conn:
            row = conn.execute("SELECT status FROM orgs WHERE slug = ?", (slug,)).fetchone()
            if row is None:
                raise ApiError(404, f"org not found: {slug}")
            if row[0] != "active":
                raise ApiError(409, f"org {slug} is {row[0]}, not active")
            conn.execute(
                "UPDATE orgs SET syncs = syncs + 1, datasets_synced = ? WHERE slug = ?",
                (DATASETS_PER_SYNC, slug),
            )
        return {"status": "ok", "org_slug": slug, "datasets_synced": DATASETS_PER_SYNC}

    # -- bootstrap / schema ---------------------------------------------------------------------

    def add_schema_column(self, table: str, column: str) -> None:
        """Evolve the expected schema; the next bootstrap (sync mode) adds what is missing."""
        for name in (table, column):
            if not _IDENTIFIER.fullmatch(name):
                raise ValueError(f"invalid identifier: {name!r}")
        if column in BASE_SCHEMA.get(table, ()):
            return
        with self.transaction() as conn:
            pos = conn.execute("SELECT COALESCE(MAX(position), 0) + 1 FROM schema_extras")
            conn.execute(
                "INSERT OR IGNORE INTO schema_extras (table_name, column_name, position) "
                "VALUES (?, ?, ?)",
                (table, column, pos.fetchone()[0]),
            )

    def _expected_schema(self) -> dict[str, list[str]]:
        schema = {table: list(cols) for table, cols in BASE_SCHEMA.items()}
        rows = self._conn.execute(
            "SELECT table_name, column_name FROM schema_extras ORDER BY position"
        )
        for table, column in rows:
            cols = schema.setdefault(table, [])
            if column not in cols:
                cols.append(column)
        return schema

    def _actual_schema(self) -> dict[str, list[str]]:
        schema: dict[str, list[str]] = {
            name: []
            for (name,) in self._conn.execute("SELECT name FROM platform_tables ORDER BY position")
        }
        rows = self._conn.execute(
            "SELECT table_name, column_name FROM platform_columns ORDER BY table_name, position"
        )
        for table, column in rows:
            schema.setdefault(table, []).append(column)
        return schema

    def bootstrap(self, mode: Any) -> dict[str, Any]:
        """Create what is missing, add new columns, never drop: like a real smart migration."""
        if mode != "smart":
            raise ApiError(400, "mode must be 'smart'")
        with self.transaction() as conn:
            expected = self._expected_schema()
            actual = self._actual_schema()
            fresh = not actual
            created: list[str] = []
            added: dict[str, list[str]] = {}
            next_table = len(actual)
            for table, columns in expected.items():
                have = actual.get(table)
                if have is None:
                    next_table += 1
                    conn.execute(
                        "INSERT INTO platform_tables (name, position) VALUES (?, ?)",
                        (table, next_table),
                    )
                    created.append(table)
                    have = []
                    new_cols = columns
                else:
                    new_cols = [c for c in columns if c not in have]
                    if new_cols:
                        added[table] = new_cols
                conn.executemany(
                    "INSERT INTO platform_columns (table_name, column_name, position) "
                    "VALUES (?, ?, ?)",
                    [(table, c, len(have) + i) for i, c in enumerate(new_cols, 1)],
                )
            self._set_meta("bootstrap_runs", (self._meta("bootstrap_runs") or 0) + 1)
            mode_name = "fresh" if fresh else "sync"
            self._set_meta("bootstrap_last_mode", mode_name)
        return {
            "status": "ok",
            "mode": mode_name,
            "tables_created": created,
            "columns_added": added,
            "tables_existing": len(actual),
        }

    # -- quota and alerts -----------------------------------------------------------------------

    def add_stale_counters(self, n: int) -> list[str]:
        """Put n stuck usage counters in place for cleanup-stale to fix."""
        with self.transaction() as conn:
            start = conn.execute("SELECT COUNT(*) FROM stale_counters").fetchone()[0]
            names = [f"pipelines_running:stale-{i:04d}" for i in range(start + 1, start + n + 1)]
            conn.executemany(
                "INSERT INTO stale_counters (name, value) VALUES (?, ?)",
                [(name, 1 + i % 3) for i, name in enumerate(names)],
            )
        return names

    def reset_daily(self, date: Any) -> dict[str, Any]:
        """Reset every active org's daily usage for `date`."""
        day = parse_date(date)
        with self.transaction():
            count = len(self._active_slugs())
            self._bump_effect("reset-daily", day)
            self._set_meta("last_daily_reset", day)
        return {"status": "ok", "orgs_reset": count}

    def reset_monthly(self, month: Any) -> dict[str, Any]:
        """Reset every active org's monthly usage for `month`."""
        value = parse_month(month)
        with self.transaction():
            count = len(self._active_slugs())
            self._bump_effect("reset-monthly", value)
            self._set_meta("last_monthly_reset", value)
        return {"status": "ok", "orgs_reset": count}

    def cleanup_stale(self) -> dict[str, Any]:
        """Zero the stuck counters; the effect slot is the UTC day it ran (no date in the body)."""
        today = dt.datetime.now(dt.UTC).date().isoformat()
        with self.transaction() as conn:
            fixed = conn.execute("UPDATE stale_counters SET value = 0 WHERE value != 0").rowcount
            self._set_meta(
                "counters_fixed_total", (self._meta("counters_fixed_total") or 0) + fixed
            )
            self._bump_effect("cleanup-stale", today)
        return {"status": "ok", "counters_fixed": fixed}

    def process_alerts(self, date: Any) -> dict[str, Any]:
        """Evaluate alert rules of every active org; which orgs alert is deterministic per date."""
        day = parse_date(date)
        with self.transaction() as conn:
            slugs = self._active_slugs()
            sent = sum(1 for s in slugs if zlib.crc32(f"{s}:{day}".encode()) % 4 == 0)
            conn.execute(
                "INSERT INTO alert_runs (run_date, orgs_processed, alerts_sent) VALUES (?, ?, ?) "
                "ON CONFLICT (run_date) DO UPDATE SET orgs_processed = excluded.orgs_processed, "
                "alerts_sent = alert_runs.alerts_sent + excluded.alerts_sent",
                (day, len(slugs), sent),
            )
            self._bump_effect("process-all", day)
        return {"status": "ok", "orgs_processed": len(slugs), "alerts_sent": sent}

    # -- idempotency ----------------------------------------------------------------------------

    def get_idempotency(self, key: str) -> IdempotencyRecord | None:
        """The stored first use of `key`, if any."""
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT method, path, fingerprint, status, body FROM idempotency WHERE key = ?",
                (key,),
            ).fetchone()
        if row is None:
            return None
        method, path, fingerprint, status, body = row
        return IdempotencyRecord(method, path, fingerprint, status, json.loads(body))

    def put_idempotency(self, key: str, record: IdempotencyRecord) -> None:
        """Remember a successful response for replay (call inside the effect's transaction)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO idempotency (key, method, path, fingerprint, status, body, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    record.method,
                    record.path,
                    record.fingerprint,
                    record.status,
                    json.dumps(record.body),
                    time.time(),
                ),
            )

    # -- snapshot -------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything tests want to assert on, as plain JSON-able data."""
        with self.transaction() as conn:
            orgs = {
                slug: {"status": status, "syncs": syncs, "datasets_synced": datasets}
                for slug, status, syncs, datasets in conn.execute(
                    "SELECT slug, status, syncs, datasets_synced FROM orgs ORDER BY slug"
                )
            }
            effects: dict[str, dict[str, int]] = {kind: {} for kind in EFFECT_KINDS}
            for kind, slot, count in conn.execute(
                "SELECT kind, slot, count FROM effects ORDER BY kind, slot"
            ):
                effects.setdefault(kind, {})[slot] = count
            counters = dict(conn.execute("SELECT name, value FROM stale_counters ORDER BY name"))
            alert_runs = {
                day: {"orgs_processed": processed, "alerts_sent": sent}
                for day, processed, sent in conn.execute(
                    "SELECT run_date, orgs_processed, alerts_sent FROM alert_runs ORDER BY run_date"
                )
            }
            extras: dict[str, list[str]] = {}
            for table, column in conn.execute(
                "SELECT table_name, column_name FROM schema_extras ORDER BY position"
            ):
                extras.setdefault(table, []).append(column)
            keys = conn.execute("SELECT COUNT(*) FROM idempotency").fetchone()[0]
            return {
                "bootstrap": {
                    "runs": self._meta("bootstrap_runs") or 0,
                    "last_mode": self._meta("bootstrap_last_mode"),
                    "tables": self._actual_schema(),
                    "expected_extra_columns": extras,
                },
                "orgs": orgs,
                "quota": {
                    "stale_counters": counters,
                    "counters_fixed_total": self._meta("counters_fixed_total") or 0,
                    "last_daily_reset": self._meta("last_daily_reset"),
                    "last_monthly_reset": self._meta("last_monthly_reset"),
                },
                "alerts": {
                    "sent_total": sum(r["alerts_sent"] for r in alert_runs.values()),
                    "by_date": alert_runs,
                },
                "effects": effects,
                "idempotency_keys": keys,
            }
