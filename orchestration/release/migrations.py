"""SQL migrations applied through the Supabase Management API, never a direct connection.

Applied versions and their checksums live in a tracking table the job creates through the same
API. Each migration runs with its tracking row in one request wrapped in BEGIN/COMMIT, so it is
applied whole or not at all; an applied file whose text changed is refused (checksum drift)
because silently re-running or skipping edited DDL is how environments drift apart.

"Whole or not at all" holds only if the file itself cannot end that transaction: a ``COMMIT`` in
a file commits what came before it, and a later error rolls back only the rest. So every pending
file is scanned (``sql_scan``) and one carrying transaction control or a statement PostgreSQL
refuses inside a transaction block is refused before any of its SQL is sent. Every file of the
directory must be named ``NNNN_lower_snake_name.sql`` (or be one of ``IGNORED_FILES``): a file
that looks like a migration but is misnamed is an error, never silently skipped.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestration.release.sql_scan import SqlScanError, refused_statements
from resources.errors import FinalFailure
from resources.http_api import ApiError
from resources.identifiers import display
from resources.supabase import SqlError, SupabaseSqlClient

TRACKING_TABLE = "platform_ops_schema_migrations"
FILENAME_RE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
DEFAULT_MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations" / "supabase"
# The only entries that may sit beside the migrations without being one.
IGNORED_FILES = frozenset({"README.md", ".gitkeep"})

CREATE_TRACKING_SQL = f"""CREATE TABLE IF NOT EXISTS {TRACKING_TABLE} (
    version VARCHAR(16) PRIMARY KEY,
    name VARCHAR(200) NOT NULL,
    checksum VARCHAR(64) NOT NULL,
    applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);"""


class MigrationError(FinalFailure):
    """A migration could not be planned or applied; the message names the file."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    filename: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


@dataclass
class MigrateResult:
    applied: list[str] = field(default_factory=list)
    already_applied: list[str] = field(default_factory=list)
    unknown_applied: list[str] = field(default_factory=list)


def discover(directory: Path = DEFAULT_MIGRATIONS_DIR) -> list[Migration]:
    """The repo's migrations in version order.

    Every entry of the directory must be a migration named ``NNNN_lower_snake_name.sql`` or one
    of ``IGNORED_FILES``; misnamed entries, repeated versions and empty files are all refused in
    one error, so an operator fixes them in one pass and nothing is applied meanwhile.
    """
    if not directory.is_dir():
        raise MigrationError(f"Migrations directory {directory} does not exist.")
    found: dict[str, Migration] = {}
    misnamed: list[str] = []
    problems: list[str] = []
    for path in sorted(directory.iterdir()):
        if path.name in IGNORED_FILES:
            continue
        match = FILENAME_RE.match(path.name)
        if not match or not path.is_file():
            misnamed.append(path.name)
            continue
        version = match["version"]
        if version in found:
            problems.append(f"{found[version].filename} and {path.name} share version {version}")
            continue
        sql = path.read_text(encoding="utf-8")
        if not sql.strip():
            problems.append(f"{path.name} is empty")
        found[version] = Migration(version, match["name"], path.name, sql)
    if misnamed:
        problems.insert(
            0,
            f"not named NNNN_lower_snake_name.sql: {', '.join(misnamed)} (rename, or move out of "
            f"the directory; only {', '.join(sorted(IGNORED_FILES))} may sit beside migrations)",
        )
    if problems:
        raise MigrationError(
            f"Migrations directory {directory}: {'; '.join(problems)}. Nothing was applied.",
            problems=problems,
        )
    return [found[v] for v in sorted(found)]


def check_atomic(migrations: Sequence[Migration]) -> None:
    """Refuse, in one error naming every file and line, migrations that cannot apply atomically.

    Each file is sent inside BEGIN ... COMMIT with its tracking row; a statement that ends or
    splits that transaction (COMMIT, ROLLBACK, SAVEPOINT, ...) or that PostgreSQL will not run in
    a transaction block (VACUUM, CREATE INDEX CONCURRENTLY, ...) would break that promise.
    """
    offences: list[str] = []
    for migration in migrations:
        try:
            refused = refused_statements(migration.sql)
        except SqlScanError as exc:
            offences.append(f"{migration.filename} line {exc.line}: {exc.what}")
            continue
        offences += [f"{migration.filename} line {r.line}: {r.text} ({r.why})" for r in refused]
    if offences:
        raise MigrationError(
            "Migration(s) that cannot be applied atomically, refused before any was sent: "
            + "; ".join(offences)
            + ". Each file runs in one transaction the job opens and commits: remove the "
            "transaction control; put a statement that cannot run in a transaction (e.g. "
            "CREATE INDEX CONCURRENTLY) outside these migrations.",
            offences=offences,
        )


def pending(migrations: Sequence[Migration], applied: Mapping[str, str]) -> list[Migration]:
    """Migrations not yet applied, after refusing any applied one whose checksum changed."""
    drifted = [m for m in migrations if m.version in applied and applied[m.version] != m.checksum]
    if drifted:
        lines = "; ".join(
            f"{m.filename} (applied {applied[m.version][:12]}, file now {m.checksum[:12]})"
            for m in drifted
        )
        raise MigrationError(
            f"Checksum drift: already-applied migration(s) were edited: {lines}. Restore the "
            "applied text and put the change in a new migration.",
            drifted=[m.filename for m in drifted],
        )
    return [m for m in migrations if m.version not in applied]


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def apply_sql(migration: Migration) -> str:
    """One request: the migration and its tracking row, in one transaction."""
    body = migration.sql.strip()
    if not body.endswith(";"):
        body += ";"
    return (
        "BEGIN;\n"
        f"{body}\n"
        f"INSERT INTO {TRACKING_TABLE} (version, name, checksum) VALUES "
        f"({_quote(migration.version)}, {_quote(migration.name)}, {_quote(migration.checksum)});\n"
        "COMMIT;"
    )


READ_APPLIED_SQL = f"SELECT version, checksum FROM {TRACKING_TABLE} ORDER BY version;"
# A read that works whether or not the table exists (to_regclass answers NULL for a missing one).
TRACKING_PRESENT_SQL = f"SELECT to_regclass('{TRACKING_TABLE}') IS NOT NULL AS present;"


def read_applied(client: SupabaseSqlClient) -> dict[str, str]:
    """Applied versions and checksums; creates the tracking table first (the apply path)."""
    client.query(CREATE_TRACKING_SQL)
    rows = client.query(READ_APPLIED_SQL)
    return {str(r["version"]): str(r["checksum"]) for r in rows}


def read_applied_readonly(client: SupabaseSqlClient) -> dict[str, str]:
    """Applied versions and checksums through reads only: a missing tracking table means nothing
    is applied yet. The release plan uses this, because a plan must change nothing, not even
    create an empty table (a reviewer could not tell a plan from a half-run release)."""
    rows = client.query(TRACKING_PRESENT_SQL)
    if not rows or not rows[0].get("present"):
        return {}
    return {str(r["version"]): str(r["checksum"]) for r in client.query(READ_APPLIED_SQL)}


def _tracked_after_failure(client: SupabaseSqlClient, migration: Migration) -> bool | None:
    """Whether the tracking row of ``migration`` exists now (None: the check itself failed)."""
    try:
        rows = client.query(
            f"SELECT version FROM {TRACKING_TABLE} WHERE version = {_quote(migration.version)};"
        )
    except ApiError:
        return None
    return bool(rows)


def failure_outcome(tracked: bool | None, migration: Migration) -> str:
    """What is known about a failed request's effect, and nothing more.

    The request is one transaction holding the file and its tracking row. A present row means all
    of it was committed. An absent row means only that this transaction did not commit: a file
    that ended it early (a ``COMMIT`` the scan did not see) would have committed what came before
    its error, and nothing here can tell. So the message says the file passed the check and asks
    for a look, instead of claiming nothing was committed.
    """
    if tracked is None:
        return (
            f"Whether any of it was committed could not be checked: look for version "
            f"{migration.version} in {TRACKING_TABLE} before running again"
        )
    if tracked:
        return (
            "Its tracking row exists, so the database committed it despite the error: "
            "check it, then run again (it will count as applied)"
        )
    return (
        "It was sent as one transaction with its tracking row, which is absent: that transaction "
        "did not commit. The file passed the transaction-control check, so nothing of it was "
        "committed unless it ended that transaction itself in a way the check did not see; "
        "before running again, check that none of the objects it creates exist"
    )


def migrate(
    client: SupabaseSqlClient,
    migrations: Sequence[Migration],
    *,
    log: Callable[[str], None] = lambda _line: None,
    key_prefix: str = "migrate",
) -> MigrateResult:
    """Apply every pending migration in order; stop at the first failure, naming its file.

    Every pending file is checked (``check_atomic``) before the first one is sent, so a bad file
    anywhere in the batch leaves the database as it was.
    """
    applied = read_applied(client)
    todo = pending(migrations, applied)
    check_atomic(todo)
    known = {m.version for m in migrations}
    result = MigrateResult(
        already_applied=[m.filename for m in migrations if m.version in applied],
        unknown_applied=sorted(v for v in applied if v not in known),
    )
    if result.unknown_applied:
        log(
            "Applied versions not in this repo (a newer release ran here?): "
            # Read from the database: escaped, one line each (no forged log lines).
            + ", ".join(display(v) for v in result.unknown_applied)
        )
    for index, migration in enumerate(todo, start=1):
        log(f"Applying {migration.filename} ({index}/{len(todo)})")
        try:
            client.query(
                apply_sql(migration),
                idempotency_key=f"{key_prefix}:{migration.version}:{migration.checksum[:16]}",
            )
        except SqlError as exc:
            outcome = failure_outcome(_tracked_after_failure(client, migration), migration)
            raise MigrationError(
                f"Migration {migration.filename} failed: {exc.detail}. {outcome}. "
                f"Applied before it in this run: {', '.join(result.applied) or 'none'}.",
                migration=migration.filename,
                sql_error=exc.detail or "",
                applied_this_run=result.applied,
            ) from None
        except ApiError as exc:
            # Not an answer from the database (timeout, 5xx after retries): the request may or
            # may not have run. Say what the tracking table shows, then let the step's retry
            # policy decide (a replay carries the same idempotency key).
            outcome = failure_outcome(_tracked_after_failure(client, migration), migration)
            log(f"Migration {migration.filename}: request failed ({exc.message}). {outcome}.")
            raise
        result.applied.append(migration.filename)
    return result
