"""SQLAlchemy engines for the record store, without importing Dagster.

Kept free of Dagster so light processes (the gateway agent) start in a fraction of a second;
``resources.record_store`` builds on it.

``make_engine`` is the one engine factory of the project: every wait on the record store is bounded
here, once (lock, statement, idle-in-transaction and connect timeouts on PostgreSQL, the busy
timeout on SQLite; ``Settings``), and ``retrying`` is the one reconnect policy (a window that
covers a server restart, exponential backoff, a log line per retry). See docs/triggers.md,
"Database faults".
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
import tenacity

Log = Callable[[str], None]
_logger = logging.getLogger("platform_ops.record_store")

# PostgreSQL error codes the retry policy and the lock diagnostics tell apart.
LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout (or NOWAIT)
QUERY_CANCELED = "57014"  # statement_timeout, or pg_cancel_backend: never retried


def as_utc(value: datetime) -> datetime:
    """The record store keeps UTC, and SQLite hands datetimes back naive: a naive value is taken
    to be UTC, an aware one is converted. The one copy every area uses."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def normalize_url(url: str) -> str:
    """``postgresql://`` → psycopg2 explicitly, whatever SQLAlchemy's default driver is."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


class RecordStoreSettingError(ValueError):
    """A ``RECORD_STORE_*`` variable that is not a valid bound; the message is the one line."""


@dataclass(frozen=True)
class _Setting:
    env: str
    default: int
    low: int
    high: int
    unit: str
    why: str


# Defaults: a lock is waited for 5 s (a competing worker's chunk takes well under 1 s); no
# statement of the record store runs for minutes (a 5,000-id chunk takes ~0.1 s); a transaction of
# ours is idle at most for a webhook POST (5 s); a restart of the server takes seconds.
SETTINGS = (
    _Setting("RECORD_STORE_LOCK_TIMEOUT_MS", 5_000, 1, 3_600_000, "ms", "a wait for a lock"),
    _Setting(
        "RECORD_STORE_STATEMENT_TIMEOUT_MS", 300_000, 1, 86_400_000, "ms", "one statement's run"
    ),
    _Setting(
        "RECORD_STORE_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        300_000,
        1,
        86_400_000,
        "ms",
        "a session of ours idle inside a transaction (the server ends it)",
    ),
    _Setting("RECORD_STORE_CONNECT_TIMEOUT_S", 10, 2, 600, "s", "opening one connection"),
    _Setting("RECORD_STORE_BUSY_TIMEOUT_MS", 30_000, 1, 3_600_000, "ms", "SQLite's write lock"),
    _Setting(
        "RECORD_STORE_RETRY_WINDOW_S", 60, 0, 3_600, "s", "retrying a lost connection (0: no retry)"
    ),
)
_BY_ENV = {s.env: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    """The bounds in force (from the environment, else the defaults)."""

    lock_timeout_ms: int
    statement_timeout_ms: int
    idle_in_transaction_timeout_ms: int
    connect_timeout_s: int
    busy_timeout_ms: int
    retry_window_s: int


def _read(setting: _Setting, environ: os._Environ | dict) -> int:
    raw = environ.get(setting.env)
    if raw is None or raw.strip() == "":
        return setting.default
    text = raw.strip()
    if not re.fullmatch(r"[0-9]{1,12}", text) or not setting.low <= int(text) <= setting.high:
        shown = text if len(text) <= 20 else text[:20] + "…"
        raise RecordStoreSettingError(
            f"{setting.env}={shown!r} is not valid: set a whole number of {setting.unit} from "
            f"{setting.low} to {setting.high} (bounds {setting.why}; default {setting.default}), "
            "or unset it"
        )
    return int(text)


def settings(environ: os._Environ | dict | None = None) -> Settings:
    """Read and validate every ``RECORD_STORE_*`` bound; a bad one raises one clear line."""
    env = os.environ if environ is None else environ
    v = [_read(s, env) for s in SETTINGS]
    return Settings(*v)


def where(url: str) -> str:
    """``host:port/db`` (PostgreSQL) or the SQLite file: the store named without any credential."""
    try:
        u = sa.engine.make_url(normalize_url(url))
    except Exception:
        return "<unparseable RECORD_STORE_URL>"
    if u.get_backend_name() == "sqlite":
        return f"sqlite file {u.database or ':memory:'}"
    return f"{u.host or 'localhost'}:{u.port or 5432}/{u.database or ''}"


def _pg_connect_args(url: sa.URL, s: Settings) -> dict:
    """libpq parameters: the session bounds as ``options`` (kept after any the URL carries, which
    therefore win), the connect timeout, TCP keepalives (a vanished server is noticed in ~1 min
    instead of the kernel's two hours), and an application name for ``pg_stat_activity``."""
    ours = (
        f"-c lock_timeout={s.lock_timeout_ms} -c statement_timeout={s.statement_timeout_ms} "
        f"-c idle_in_transaction_session_timeout={s.idle_in_transaction_timeout_ms}"
    )
    theirs = url.query.get("options")
    if isinstance(theirs, tuple):
        theirs = " ".join(theirs)
    args: dict = {
        "options": f"{ours} {theirs}" if theirs else ours,
        "connect_timeout": s.connect_timeout_s,
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    if "application_name" not in url.query:
        args["application_name"] = "platform-ops"
    return args


def make_engine(url: str, environ: os._Environ | dict | None = None) -> sa.Engine:
    """The record store's engine; every engine of the project comes from here (bounded waits,
    ``pool_pre_ping`` so a connection the server dropped is replaced, not handed out)."""
    s = settings(environ)
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": s.busy_timeout_ms / 1000})
        busy = s.busy_timeout_ms

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL: readers never block the one writer
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(busy)}")
            cur.close()

        return engine
    parsed = sa.engine.make_url(url)
    return sa.create_engine(
        parsed.difference_update_query(["options"]),
        connect_args=_pg_connect_args(parsed, s),
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
    )


# --- what a failure is -----------------------------------------------------------------------


def pgcode(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "pgcode", None)


def is_lock_timeout(exc: BaseException) -> bool:
    return pgcode(exc) == LOCK_NOT_AVAILABLE


def is_connection_error(exc: BaseException) -> bool:
    """The store could not be reached or the connection was lost (not: a statement failed)."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return False
    code = pgcode(exc)
    if code is not None:  # 08xxx connection exceptions, 57P0x shutdown / cannot connect now
        return code.startswith("08") or code.startswith("57P")
    text = str(exc.orig).lower()
    # libpq errors carry no code (refused, closed unexpectedly, timeout, DNS): an outage; SQLite's
    # "database is locked" is contention, not an outage.
    return "database is locked" not in text and "busy" not in text


def is_transient(exc: BaseException) -> bool:
    """Worth redoing the whole unit of work: a lost or refused connection, a server starting or
    stopping, a deadlock or serialization failure, a lock timeout, SQLite busy. Never a statement
    timeout or cancel (it would only run as long again) nor an error in the statement itself."""
    if is_connection_error(exc):
        return True
    return isinstance(exc, sa.exc.OperationalError) and pgcode(exc) != QUERY_CANCELED


def reason(exc: BaseException) -> str:
    """``<DBAPI class>: <first line>``: short enough for a log line, no SQL, no parameters."""
    orig = getattr(exc, "orig", None) or exc
    lines = [ln.strip() for ln in str(orig).strip().splitlines() if ln.strip()]
    return f"{type(orig).__name__}: {lines[0] if lines else '(no message)'}"


def _emit(log: Log | None, line: str) -> None:
    (log or _logger.warning)(line)


def retrying(
    what: str,
    log: Log | None = None,
    *,
    window_s: float | None = None,
    retry_on: Callable[[BaseException], bool] = is_transient,
) -> tenacity.Retrying:
    """The reconnect policy: redo ``what`` on a transient failure for up to the retry window
    (``RECORD_STORE_RETRY_WINDOW_S``, default 60 s: a restart takes seconds), exponential backoff
    0.25 s … 8 s with jitter, one log line per retry naming the attempt and the wait. After the
    window the last error is raised. Only for units that are safe to redo (a transaction that
    rolled back as a whole, an idempotent delivery)."""
    window = settings().retry_window_s if window_s is None else window_s

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        left = max(0.0, window - (state.seconds_since_start or 0.0))
        _emit(
            log,
            f"{what} retried after: {reason(exc)}; attempt {state.attempt_number} failed, next in "
            f"{wait:.2f} s ({left:.0f} s left of the {window:g} s retry window)",
        )

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(retry_on),
        stop=tenacity.stop_before_delay(window),
        wait=tenacity.wait_exponential_jitter(initial=0.25, max=8.0, jitter=0.25),
        before_sleep=before_sleep,
        reraise=True,
    )


def unreachable_message(url: str, exc: BaseException) -> str:
    """The one line for a store that cannot be reached: where (no credential), why, what to do."""
    why = reason(exc)
    password = None
    with suppress(Exception):
        password = sa.engine.make_url(normalize_url(url)).password
    if password:
        why = why.replace(str(password), "***")
    return (
        f"record store unreachable at {where(url)}: {why} "
        "(check RECORD_STORE_URL and that the database server is up)"
    )


@contextmanager
def clear_connection_errors(url: str, error: type[Exception]) -> Iterator[None]:
    """Re-raise a connection failure as ``error("record store unreachable at …")`` and a bad
    ``RECORD_STORE_*`` setting as ``error(<its line>)``; the cause is dropped (it can carry the
    URL), the message says everything."""
    try:
        yield
    except RecordStoreSettingError as exc:
        raise error(str(exc)) from None
    except sa.exc.DBAPIError as exc:
        if not is_connection_error(exc):
            raise
        raise error(unreachable_message(url, exc)) from None
