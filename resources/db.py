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


# --- showing a store URL ---------------------------------------------------------------------
# One place decides what of a record-store URL a person may see (the CLIs' error lines, the
# sensor / run headline ``record store unreachable at …``, the workers' log lines): the scheme,
# host, port and database, never the userinfo, never the query string (it can carry
# ``password=`` or a ``passfile``). A value that is not ``dialect://…`` at all may be the
# password pasted in: nothing of it is shown. A password holding an unescaped '@' makes the URL
# ambiguous (SQLAlchemy ends the userinfo at the first '@', so the password's tail becomes the
# "host" and the driver echoes it): for display the userinfo ends at the LAST '@', and every piece
# of four characters or more of every password the value could hold is masked in whatever line
# is shown (a driver's message included).

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]{0,40})://(.*)\Z", re.DOTALL)
# ``password=…`` / ``PASSWORD=…`` / ``sslpassword=…`` / ``passfile=…`` in a query or a libpq DSN.
# The value up to '&' (a query) and, as well, up to the next blank (a password holding a raw '&'
# becomes a bogus parameter the driver names).
_SECRET_KEY = re.compile(r"[A-Za-z_]*pass[A-Za-z_]*\s*=\s*('(?:[^'\\]|\\.)*'|[^&\s]*)", re.I)
_SECRET_TAIL = re.compile(r"[A-Za-z_]*pass[A-Za-z_]*\s*=\s*(\S*)", re.I)
_HOST = re.compile(r"[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")
_PORT = re.compile(r"[0-9]{1,5}")
_DATABASE = re.compile(r"[A-Za-z0-9_.$-]{1,63}")
_MASK_MIN = 4  # a piece this long of a password is never shown
NOT_A_URL = (
    "invalid record store URL: the value of RECORD_STORE_URL / --store-url is not a URL "
    "(dialect://host:port/db, e.g. postgresql://host:5432/records or "
    "sqlite:////var/lib/platform-ops/store.sqlite); nothing of it is shown"
)
RESERVED_IN_USERINFO = "the password holds '@': write it percent-encoded, as %40"


class RecordStoreUrlError(RecordStoreSettingError):
    """The record store URL cannot be used as given; the message is the one line (no secret)."""


@dataclass(frozen=True)
class StoreUrl:
    """What may be shown of a store URL: each part already checked to be harmless text."""

    scheme: str
    host: str | None = None
    port: str | None = None
    database: str | None = None
    ambiguous_userinfo: bool = False

    @property
    def is_sqlite(self) -> bool:
        return self.scheme.split("+", 1)[0] == "sqlite"


def parse_store_url(url: str) -> StoreUrl | None:
    """The displayable parts of ``url`` (None when it is not ``dialect://…``).

    Does not use SQLAlchemy's parser on purpose: that one ends the userinfo at the first '@'.
    """
    match = _SCHEME.match(url.strip())
    if not match:
        return None
    scheme, rest = match[1], match[2]
    if scheme.split("+", 1)[0] == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        path = path.partition("?")[0]
        return StoreUrl(scheme, database=path or ":memory:")
    at = rest.rfind("@")
    userinfo, hostpart = (rest[:at], rest[at + 1 :]) if at >= 0 else ("", rest)
    hostpart = hostpart.partition("#")[0]
    hostpart, _, query = hostpart.partition("?")
    netloc, _, database = hostpart.partition("/")
    host, port = _split_netloc(netloc)
    options = dict(_query_pairs(query))
    host = host or options.get("host")
    port = port or options.get("port")
    return StoreUrl(
        scheme,
        host=_shown(host, _HOST),
        port=_shown(port, _PORT),
        database=_shown(database, _DATABASE),
        ambiguous_userinfo="@" in userinfo,
    )


def _split_netloc(netloc: str) -> tuple[str | None, str | None]:
    if netloc.startswith("["):
        host, _, tail = netloc.partition("]")
        return host + "]", tail[1:] if tail.startswith(":") else None
    host, sep, port = netloc.rpartition(":")
    return (host, port) if sep else (netloc or None, None)


def _query_pairs(query: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    try:
        return parse_qsl(query, keep_blank_values=True)
    except ValueError:
        return []


def _shown(value: str | None, pattern: re.Pattern) -> str | None:
    if not value:
        return None
    return value if pattern.fullmatch(value) else "<not shown>"


def show_url(url: str) -> str:
    """``postgresql://host:port/db`` or ``sqlite:///<path>``: the store named for a person."""
    parts = parse_store_url(url)
    if parts is None:
        return "<RECORD_STORE_URL not shown: not a URL>"
    if parts.is_sqlite:
        return hide_url_secrets(f"{parts.scheme}:///{_printable(parts.database)}", url)
    shown = f"{parts.scheme}://{parts.host or 'localhost'}"
    shown += f":{parts.port}" if parts.port else ""
    return hide_url_secrets(f"{shown}/{parts.database or ''}", url)


def where(url: str) -> str:
    """``host:port/db`` (PostgreSQL) or the SQLite file: the store named without any credential
    (the sensor and run headline; ``show_url`` is the same parts with the scheme)."""
    parts = parse_store_url(normalize_url(url))
    if parts is None:
        return "<RECORD_STORE_URL not shown: not a URL>"
    if parts.is_sqlite:
        return hide_url_secrets(f"sqlite file {_printable(parts.database)}", url)
    shown = f"{parts.host or 'localhost'}:{parts.port or 5432}/{parts.database or ''}"
    return hide_url_secrets(shown, url)


def _printable(text: str | None) -> str:
    text = text or ""
    return text if text.isprintable() else repr(text)


def url_secrets(url: str) -> list[str]:
    """Every string ``url`` could hold as a password, whichever way it is read: after the first
    ':' of the userinfo up to the last '@', SQLAlchemy's reading (first '@'), every ``*pass*=``
    value of the query or a DSN, each raw and percent-decoded; a value that is not a URL (and
    not a DSN) is itself taken as a secret."""
    from urllib.parse import unquote, unquote_plus

    text = url.strip()
    found: list[str] = []
    match = _SCHEME.match(text)
    if match is None and not any(c.isspace() for c in text) and "=" not in text:
        found.append(text)
    if match is not None:
        at = match[2].rfind("@")
        userinfo = match[2][:at] if at >= 0 else ""
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
    with suppress(Exception):
        password = sa.engine.make_url(text).password
        if password:
            found.append(str(password))
    found += [value.strip("'") for value in _SECRET_KEY.findall(text)]
    found += _SECRET_TAIL.findall(text)
    every = {form for s in found for form in (s, unquote(s), unquote_plus(s))}
    return sorted(s for s in every if s)


def hide_url_secrets(text: str, url: str | None) -> str:
    """``text`` with every run of characters that belongs to a piece (4+ characters) of any
    password ``url`` could hold replaced by ``***``. Shorter passwords are not searched for
    (they would mask ordinary words); they never reach a shown URL anyway."""
    if not url or not text:
        return text
    grams = {
        secret[i : i + _MASK_MIN]
        for secret in url_secrets(url)
        for i in range(len(secret) - _MASK_MIN + 1)
    }
    if not grams:
        return text
    hidden = [False] * len(text)
    for i in range(len(text) - _MASK_MIN + 1):
        if text[i : i + _MASK_MIN] in grams:
            hidden[i : i + _MASK_MIN] = [True] * _MASK_MIN
    out, i = [], 0
    while i < len(text):
        if hidden[i]:
            while i < len(text) and hidden[i]:
                i += 1
            out.append("***")
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def url_hint(url: str) -> str:
    """``; <how to fix the URL>`` when its userinfo is ambiguous, else ``""``."""
    parts = parse_store_url(url)
    return f"; {RESERVED_IN_USERINFO}" if parts is not None and parts.ambiguous_userinfo else ""


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


# The default store (``resources.record_store.DEFAULT_URL``): the only one whose directory is
# created; an explicit URL whose directory is missing is a typo, refused before anything exists.
DEFAULT_SQLITE_PATH = Path(__file__).resolve().parents[1] / ".dagster_home" / "record_store.sqlite"
_URL_HINT = "check RECORD_STORE_URL / --store-url"


def checked_url(url: str) -> sa.URL:
    """SQLAlchemy's URL for ``url``, or ``RecordStoreUrlError`` with one line that says what is
    wrong and echoes nothing but ``show_url`` (SQLAlchemy's own messages can quote the value)."""
    if parse_store_url(url) is None:
        raise RecordStoreUrlError(NOT_A_URL)
    shown = show_url(url)
    try:
        parsed = sa.engine.make_url(normalize_url(url))
    except ValueError:
        raise RecordStoreUrlError(
            f"invalid record store URL {shown}: the port must be a number; {_URL_HINT}"
        ) from None
    except sa.exc.ArgumentError:
        raise RecordStoreUrlError(
            f"invalid record store URL {shown}: not dialect://user:password@host:port/db; "
            f"{_URL_HINT}"
        ) from None
    try:
        parsed.get_dialect()
    except sa.exc.NoSuchModuleError:
        raise RecordStoreUrlError(
            f"invalid record store URL {shown}: unknown database kind (use postgresql:// or "
            f"sqlite:///); {_URL_HINT}"
        ) from None
    return parsed


def _sqlite_directory(database: str | None) -> None:
    """Create the default store's directory; refuse an explicit file whose directory is missing
    (nothing is created for a mistyped URL)."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    parent = Path(database).parent
    if parent.is_dir():
        return
    if Path(database).resolve() == DEFAULT_SQLITE_PATH:
        parent.mkdir(parents=True, exist_ok=True)
        return
    state = "is not a directory" if parent.exists() else "does not exist"
    raise RecordStoreUrlError(
        f"directory {_printable(str(parent))} of the SQLite record store {state}: create it "
        f"(mkdir -p) or fix the path; nothing was created; {_URL_HINT}"
    )


# Execution option naming how an SQLite transaction begins (``make_engine``'s "begin" event):
# ``engine.execution_options(**SQLITE_WRITER).begin()`` or ``conn.execution_options(
# **SQLITE_WRITER)`` before the connection's first statement. PostgreSQL ignores it.
SQLITE_BEGIN = "sqlite_begin"
# A unit that reads and then writes takes the write lock at BEGIN: under WAL a deferred
# transaction that read before another connection committed cannot upgrade to a writer (it fails
# at once with SQLITE_BUSY_SNAPSHOT, without waiting the busy timeout).
SQLITE_WRITER = {SQLITE_BEGIN: "IMMEDIATE"}
_SQLITE_BEGINS = {
    "DEFERRED": "BEGIN",
    "IMMEDIATE": "BEGIN IMMEDIATE",
    "EXCLUSIVE": "BEGIN EXCLUSIVE",
}


def _sqlite_transactions(engine: sa.Engine, busy_ms: int) -> None:
    """SQLAlchemy's documented pysqlite recipe ("Serializable isolation / Savepoints /
    Transactional DDL"): the driver's own transaction control is turned off and every
    SQLAlchemy transaction emits its ``BEGIN``.

    Why: in legacy mode (Python 3.11) pysqlite begins a transaction only at the first
    INSERT/UPDATE/DELETE. When that first write is inside ``begin_nested()``, the ``SAVEPOINT``
    opens the real transaction and its ``RELEASE`` COMMITS it: the outer transaction is no
    longer atomic (a later error or a SIGKILL leaves the savepoint's writes committed), and
    its reads before the savepoint were not in it either.
    """

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # no implicit BEGIN / COMMIT by the driver
        cur = dbapi_conn.cursor()  # outside any transaction: journal_mode cannot change in one
        cur.execute("PRAGMA journal_mode=WAL")  # readers never block the one writer
        cur.execute("PRAGMA foreign_keys=ON")  # a no-op inside a transaction
        cur.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return  # asked for no transaction
        dbapi_conn = conn.connection.dbapi_connection
        if dbapi_conn.isolation_level is not None and not dbapi_conn.in_transaction:
            # AUTOCOMMIT's reset on check-in hands the driver its implicit BEGIN back
            dbapi_conn.isolation_level = None
        mode = str(options.get(SQLITE_BEGIN, "DEFERRED")).upper()
        if mode not in _SQLITE_BEGINS:
            raise ValueError(
                f"execution option {SQLITE_BEGIN}={mode!r} is not valid: use one of "
                f"{', '.join(_SQLITE_BEGINS)} (default DEFERRED)"
            )
        conn.exec_driver_sql(_SQLITE_BEGINS[mode])


def make_engine(url: str, environ: os._Environ | dict | None = None) -> sa.Engine:
    """The record store's engine; every engine of the project comes from here (bounded waits,
    ``pool_pre_ping`` so a connection the server dropped is replaced, not handed out; on SQLite
    every transaction is one transaction from its ``BEGIN``, see ``_sqlite_transactions``)."""
    s = settings(environ)
    parsed = checked_url(url)
    url = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        _sqlite_directory(parsed.database)
        engine = sa.create_engine(url, connect_args={"timeout": s.busy_timeout_ms / 1000})
        _sqlite_transactions(engine, s.busy_timeout_ms)
        return engine
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
    why = hide_url_secrets(reason(exc), url)
    return (
        f"record store unreachable at {where(url)}: {why} "
        f"(check RECORD_STORE_URL and that the database server is up{url_hint(url)})"
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
