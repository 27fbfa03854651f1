"""The record store: the project's own tables (triggers, commands, gateways, outbox, history).

SQLAlchemy 2 on a SQLite file by default or PostgreSQL by URL; schema owned by Alembic
(``migrations/record_store``). Each area keeps its tables on its own Alembic branch (a
``branch_labels`` base revision), so areas evolve independently and ``upgrade heads`` applies all.

Every run sets this resource up in a fresh process, and a current store is the common case, so
whether the store is current is first decided without Alembic (~0.1 s, ~9 MB to import, plus
loading every migration script): the revision graph is read from the migration files' literal
``revision``/``down_revision``/``depends_on`` (``_graph``) and compared with the version table.
Alembic is imported only to upgrade, or when that quick check cannot decide (a file it cannot
read, a revision it does not know): then the full check below decides, as before.
"""

from __future__ import annotations

import ast
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import sqlalchemy as sa
import tenacity
from pydantic import Field

from resources.db import SQLITE_WRITER, clear_connection_errors, make_engine, normalize_url

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

REPO = Path(__file__).resolve().parents[1]
MIGRATIONS_DIR = REPO / "migrations" / "record_store"
DEFAULT_URL = f"sqlite:///{REPO / '.dagster_home' / 'record_store.sqlite'}"


class RecordStoreError(dg.DagsterError):
    """The record store cannot be used: unreachable, or a bad ``RECORD_STORE_*`` setting.

    A ``DagsterError`` on purpose: Dagster's user-code boundary passes it through unwrapped, so a
    sensor tick or resource setup shows this message as its headline instead of a generic
    ``DagsterResourceFunctionError`` / ``SensorExecutionError``.
    """


def clear_errors(url: str):
    """``with clear_errors(url):`` a connection failure becomes ``RecordStoreError("record store
    unreachable at <host:port/db>: …")``; other errors pass unchanged."""
    return clear_connection_errors(url, RecordStoreError)


class Base:
    """The one ``metadata`` every area's Core tables share (``Base.metadata``).

    A plain holder, not an ORM ``DeclarativeBase``: the areas define Core tables only, and
    ``sqlalchemy.orm`` (~50-100 ms and a few MB, imported by nothing else a run needs) would
    otherwise be loaded by every run of every job."""

    metadata = sa.MetaData()


def alembic_config(url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


# Alembic keeps its state in module globals (``alembic.context``, ``alembic.op``): two threads
# upgrading at once corrupt each other (KeyError 'config', even a segfault in SQLite), and the
# daemon evaluates sensors on a thread pool. So one upgrade at a time per process.
_UPGRADE_LOCK = threading.RLock()
_UPGRADED: set[str] = set()
# Alembic's version table of the record store (migrations/record_store/env.py uses this one).
# Not "alembic_version": Dagster's own PostgreSQL storage uses that name in the same database.
VERSION_TABLE = "record_store_alembic_version"
# Bound on an upgrade's waits and statements (PostgreSQL): ten minutes.
MIGRATION_TIMEOUT_MS = 600_000


def upgrade(url: str) -> None:
    """Bring the record store at ``url`` to the newest schema of every area (idempotent).

    Threads of one process take turns; processes take turns on PostgreSQL through an advisory
    lock (``migrations/record_store/env.py``).
    """
    with _UPGRADE_LOCK:
        # Through the one engine factory (bounded waits); a migration may wait longer for another
        # process's upgrade (the advisory lock) and run longer statements than the hot path.
        engine = make_engine(url)
        try:
            if _at_heads(engine, url):
                return  # nothing to do: no advisory lock, no waiting on another process
            from alembic import command

            # SQLite: a writer from BEGIN. Alembic reads the version, then migrates; a second
            # process upgrading at once waits for the first (then finds the store at heads)
            # instead of failing its upgrade from reader to writer (resources.db.SQLITE_WRITER).
            with engine.execution_options(**SQLITE_WRITER).begin() as conn:
                if conn.dialect.name == "postgresql":
                    ms = MIGRATION_TIMEOUT_MS
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
                    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")
                cfg = alembic_config(url)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "heads")
        finally:
            engine.dispose()


def _at_heads(engine: sa.Engine, url: str) -> bool:
    """Whether the store already has every area's newest revision: a plain read, so a process
    starting against a current store never queues behind another's upgrade lock (a process
    stopped while holding that lock would otherwise hold up every other one).

    The quick answer (no Alembic) when it can give one; Alembic's otherwise."""
    graph = _graph()
    if graph is not None:
        with engine.connect() as conn:
            current = _stored_revisions(conn)
        quick = _covers_heads(graph, current)
        if quick is not None:
            return quick
    return _at_heads_by_alembic(engine, url)


def _at_heads_by_alembic(engine: sa.Engine, url: str) -> bool:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    script = ScriptDirectory.from_config(alembic_config(url))
    with engine.connect() as conn:
        current = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_heads()
    if not current:
        return False
    # A head that other branches depend on (core) is not stored: compare with what is applied.
    try:
        applied = {r.revision for r in script.iterate_revisions(current, "base")}
    except (RevisionError, CommandError):  # a revision this code does not know: the upgrade
        # itself then says so
        return False
    return set(script.get_heads()) <= applied


# revision -> (down revisions, dependencies), as literals in the migration files.
Graph = dict[str, tuple[tuple[str, ...], tuple[str, ...]]]


def _names(value: object) -> tuple[str, ...] | None:
    """A ``down_revision``/``depends_on`` literal as a tuple of ids; None if it is not one."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


_NOT_LITERAL = object()


def _literals(path: Path) -> dict[str, object]:
    """The module-level ``name = <literal>`` assignments of one migration file (not run)."""
    found: dict[str, object] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name):
            try:
                found[target.id] = ast.literal_eval(value)
            except ValueError:
                found[target.id] = _NOT_LITERAL
    return found


@lru_cache(maxsize=4)
def _graph(versions: Path = MIGRATIONS_DIR / "versions") -> Graph | None:
    """The revision graph from the migration files' module-level literals, without importing
    Alembic or the files; None when any file does not spell them as plain literals or names a
    branch label / unknown id (the caller then asks Alembic). Read once per process."""
    graph: Graph = {}
    for path in sorted(versions.glob("*.py")):
        try:
            found = _literals(path)
        except (OSError, SyntaxError, TypeError, ValueError, RecursionError):
            return None  # unreadable or not plain literals: Alembic decides
        revision = found.get("revision")
        down = _names(found.get("down_revision", _NOT_LITERAL))
        deps = _names(found.get("depends_on"))
        if not isinstance(revision, str) or down is None or deps is None or revision in graph:
            return None
        graph[revision] = (down, deps)
    if not graph or any((set(down) | set(deps)) - set(graph) for down, deps in graph.values()):
        return None
    return graph


def _stored_revisions(conn: sa.Connection) -> set[str]:
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return set()
    table = sa.table(VERSION_TABLE, sa.column("version_num"))
    return set(conn.execute(sa.select(table.c.version_num)).scalars())


def _covers_heads(graph: Graph, current: set[str]) -> bool | None:
    """Whether ``current`` (the version table) includes every head once its ancestors and
    dependencies are counted as applied; None for a stored revision these files do not know."""
    if current - set(graph):
        return None
    applied: set[str] = set()
    for stored in current:
        if _ancestors(graph, stored, with_dependencies=False) & current:
            # A stored revision below another on its own branch: a version table Alembic
            # refuses ("overlaps with other requested revisions"); let it say so. (A branch's
            # head that another branch depends on is stored legitimately.)
            return None
        applied |= _ancestors(graph, stored) | {stored}
    heads = set(graph) - {d for down, _ in graph.values() for d in down}
    return heads <= applied


def _ancestors(graph: Graph, revision: str, with_dependencies: bool = True) -> set[str]:
    """Every revision ``revision`` stands on: its downs (and dependencies), transitively."""

    def below(rev: str) -> tuple[str, ...]:
        down, deps = graph[rev]
        return down + deps if with_dependencies else down

    found: set[str] = set()
    todo = list(below(revision))
    while todo:
        rev = todo.pop()
        if rev not in found:
            found.add(rev)
            todo.extend(below(rev))
    return found


@tenacity.retry(
    retry=tenacity.retry_if_exception_type(sa.exc.DBAPIError),
    stop=tenacity.stop_after_attempt(3),
    wait=tenacity.wait_exponential(multiplier=0.2),
    reraise=True,
)
def _upgrade_retrying(url: str) -> None:
    """On SQLite another process creating the same tables at the same moment makes one of them
    fail once; the retry then finds the schema current."""
    upgrade(url)


def ensure_upgraded(url: str) -> None:
    """``upgrade`` once per process and URL (what resources call on every run and tick)."""
    key = normalize_url(url)
    if key in _UPGRADED:
        return
    with _UPGRADE_LOCK:
        if key not in _UPGRADED:
            _upgrade_retrying(url)
            _UPGRADED.add(key)


@lru_cache(maxsize=16)
def _engine_for(url: str) -> sa.Engine:
    return make_engine(url)


class RecordStoreResource(dg.ConfigurableResource):
    """Where the record store lives; ``engine()`` is shared per URL within a process."""

    url: str = Field(
        default_factory=lambda: os.environ.get("RECORD_STORE_URL", DEFAULT_URL),
        description="SQLAlchemy URL (SQLite file by default; postgresql://… in production). "
        "Defaults to $RECORD_STORE_URL.",
    )
    auto_upgrade: bool = Field(
        default=True, description="Apply pending Alembic migrations when a run first uses it."
    )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Upgrade if asked, and check the store answers: an outage or a bad setting fails here
        with "record store unreachable at <host:port/db>" (never the password) as the headline."""
        with clear_errors(self.url):
            if self.auto_upgrade:
                ensure_upgraded(self.url)
            with self.engine().connect():
                pass

    def engine(self) -> sa.Engine:
        with clear_errors(self.url):
            return _engine_for(normalize_url(self.url))

    def clear_errors(self):
        """``with record_store.clear_errors():`` around a sensor's queries (``clear_errors``)."""
        return clear_errors(self.url)
