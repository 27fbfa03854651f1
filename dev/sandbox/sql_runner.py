"""Run the SQL of a Supabase `database/query` call on a real database.

The real Management API runs the text on the project's PostgreSQL as one implicit transaction and
answers with the rows of the last statement. Migrations in this project are sent that way, so the
sandbox must keep the same all-or-nothing semantics: on PostgreSQL by sending the whole text in one
`cursor.execute` (the server's simple-query protocol gives the implicit transaction), on SQLite by
splitting the text into complete statements and running them inside one explicit transaction.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any, Protocol

Row = dict[str, Any]


class SqlError(Exception):
    """The database rejected the SQL; the text is the database's own message (answered as 400)."""


class DatabaseUnavailable(Exception):
    """The database could not be reached at all (answered as 503 so clients retry)."""


class SqlRunner(Protocol):
    """Executes one request's SQL text and returns the rows of its last result set."""

    def run(self, sql: str) -> list[Row]: ...


def to_jsonable(value: Any) -> Any:
    """Make a database value JSON-serialisable the way PostgREST-like APIs render it."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    return str(value)


def _rows(description: Any, records: list[Any]) -> list[Row]:
    names = [col[0] for col in description]
    return [{n: to_jsonable(v) for n, v in zip(names, rec, strict=True)} for rec in records]


def strip_leading_comments(sql: str) -> str:
    """Drop leading whitespace and SQL comments, so a statement can be classified by keyword."""
    text = sql
    while True:
        text = text.lstrip()
        if text.startswith("--"):
            newline = text.find("\n")
            text = "" if newline < 0 else text[newline + 1 :]
        elif text.startswith("/*"):
            end = text.find("*/", 2)
            text = "" if end < 0 else text[end + 2 :]
        else:
            return text


def _is_empty(statement: str) -> bool:
    return not strip_leading_comments(statement).strip().strip(";").strip()


def split_sqlite_statements(sql: str) -> list[str]:
    """Split SQL text into complete statements.

    `sqlite3.complete_statement` is asked at each semicolon whether the text so far is complete,
    so semicolons inside quotes, comments and trigger bodies (BEGIN ... END) do not split.
    """
    statements: list[str] = []
    start = 0
    pos = sql.find(";")
    while pos >= 0:
        candidate = sql[start : pos + 1]
        if sqlite3.complete_statement(candidate):
            statements.append(candidate)
            start = pos + 1
        pos = sql.find(";", pos + 1)
    statements.append(sql[start:])
    return [s.strip() for s in statements if not _is_empty(s)]


def _transaction_verb(statement: str) -> str | None:
    """'begin' / 'commit' / 'rollback' for whole-transaction control statements, else None."""
    words = re.findall(r"[A-Za-z_]+", strip_leading_comments(statement)[:80].upper())
    if not words:
        return None
    if words[0] == "BEGIN":
        return "begin"
    if words[0] in ("COMMIT", "END"):
        return "commit"
    if words[0] == "ROLLBACK" and "TO" not in words[1:3]:
        return "rollback"
    return None


def _sqlite_regclass(conn: sqlite3.Connection, name: object) -> str | None:
    if not isinstance(name, str):
        return None
    row = conn.execute(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?", (name,)
    ).fetchone()
    return row[0] if row else None


class SqliteRunner:
    """SQLite stand-in for the project's PostgreSQL: one connection and transaction per request."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # SQLite upgrades read locks to write locks without waiting for busy handlers, which
        # fails concurrent writers; requests are short, so serialising them is the simple fix.
        self._lock = threading.Lock()

    def run(self, sql: str) -> list[Row]:
        """Execute all statements atomically, honouring explicit BEGIN/COMMIT/ROLLBACK."""
        statements = split_sqlite_statements(sql)
        with self._lock:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            # PostgreSQL's to_regclass(name): the name when the table exists, else NULL. The
            # release plan asks with it whether the tracking table exists, through a read only.
            conn.create_function(
                "to_regclass", 1, lambda name: _sqlite_regclass(conn, name), deterministic=False
            )
            try:
                return self._run(conn, statements)
            finally:
                conn.close()

    @staticmethod
    def _run(conn: sqlite3.Connection, statements: list[str]) -> list[Row]:
        result: list[Row] = []
        try:
            for statement in statements:
                verb = _transaction_verb(statement)
                if verb == "begin":
                    # Inside the implicit transaction a BEGIN just makes it explicit, as on PG.
                    if not conn.in_transaction:
                        conn.execute(statement)
                    continue
                if verb in ("commit", "rollback"):
                    if conn.in_transaction:
                        conn.execute(statement)
                    continue
                if not conn.in_transaction:
                    conn.execute("BEGIN")
                cursor = conn.execute(statement)
                if cursor.description is not None:
                    result = _rows(cursor.description, cursor.fetchall())
            if conn.in_transaction:
                conn.execute("COMMIT")
        except (sqlite3.Error, sqlite3.Warning) as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise SqlError(str(exc)) from exc
        return result


def _libpq_url(url: str) -> str:
    """Accept SQLAlchemy URLs (postgresql+psycopg2://...) by dropping the driver part."""
    return re.sub(r"^postgres(?:ql)?\+[A-Za-z0-9_]+://", "postgresql://", url)


class PostgresRunner:
    """Runs the text on PostgreSQL exactly as the Management API does: one execute, one commit."""

    def __init__(self, url: str, connect_timeout: int = 5) -> None:
        self.url = _libpq_url(url)
        self.connect_timeout = connect_timeout

    def run(self, sql: str) -> list[Row]:
        """Execute the whole text in one call; on any error roll the whole request back."""
        import psycopg2  # imported lazily: only needed when a PostgreSQL URL is configured

        if _is_empty(sql):
            return []
        try:
            conn = psycopg2.connect(self.url, connect_timeout=self.connect_timeout)
        except psycopg2.OperationalError as exc:
            raise DatabaseUnavailable(str(exc).strip()) from exc
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql)
                rows = (
                    _rows(cursor.description, cursor.fetchall())
                    if cursor.description is not None
                    else []
                )
            conn.commit()
            return rows
        except psycopg2.Error as exc:
            conn.rollback()
            raise SqlError((exc.pgerror or str(exc)).strip()) from exc
        finally:
            conn.close()


def make_runner(db_url: str | None, sqlite_path: str | Path) -> SqlRunner:
    """PostgreSQL when a URL is given, else a SQLite file (offline default)."""
    if db_url:
        return PostgresRunner(db_url)
    return SqliteRunner(sqlite_path)
