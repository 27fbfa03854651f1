"""SQL migrations applied through the Supabase Management API, never a direct connection.

Applied versions and their checksums live in a tracking table the job creates through the same
API. Each migration runs with its tracking row in one request wrapped in BEGIN/COMMIT, so it is
applied whole or not at all; an applied file whose text changed is refused (checksum drift)
because silently re-running or skipping edited DDL is how environments drift apart.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestration.errors import FinalFailure
from resources.supabase import SqlError, SupabaseSqlClient

TRACKING_TABLE = "platform_ops_schema_migrations"
FILENAME_RE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
DEFAULT_MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations" / "supabase"

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
    """The repo's migrations in version order; a malformed name or a repeated version is refused."""
    if not directory.is_dir():
        raise MigrationError(f"Migrations directory {directory} does not exist.")
    found: dict[str, Migration] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = FILENAME_RE.match(path.name)
        if not match:
            raise MigrationError(
                f"Migration file {path.name} is not named NNNN_lower_snake_name.sql; rename it."
            )
        version = match["version"]
        if version in found:
            raise MigrationError(
                f"Migrations {found[version].filename} and {path.name} share version {version}."
            )
        sql = path.read_text(encoding="utf-8")
        if not sql.strip():
            raise MigrationError(f"Migration {path.name} is empty.")
        found[version] = Migration(version, match["name"], path.name, sql)
    return [found[v] for v in sorted(found)]


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


def read_applied(client: SupabaseSqlClient) -> dict[str, str]:
    client.query(CREATE_TRACKING_SQL)
    rows = client.query(f"SELECT version, checksum FROM {TRACKING_TABLE} ORDER BY version;")
    return {str(r["version"]): str(r["checksum"]) for r in rows}


def migrate(
    client: SupabaseSqlClient,
    migrations: Sequence[Migration],
    *,
    log: Callable[[str], None] = lambda _line: None,
    key_prefix: str = "migrate",
) -> MigrateResult:
    """Apply every pending migration in order; stop at the first failure, naming its file."""
    applied = read_applied(client)
    todo = pending(migrations, applied)
    known = {m.version for m in migrations}
    result = MigrateResult(
        already_applied=[m.filename for m in migrations if m.version in applied],
        unknown_applied=sorted(v for v in applied if v not in known),
    )
    if result.unknown_applied:
        log(
            "Applied versions not in this repo (a newer release ran here?): "
            + ", ".join(result.unknown_applied)
        )
    for index, migration in enumerate(todo, start=1):
        log(f"Applying {migration.filename} ({index}/{len(todo)})")
        try:
            client.query(
                apply_sql(migration),
                idempotency_key=f"{key_prefix}:{migration.version}:{migration.checksum[:16]}",
            )
        except SqlError as exc:
            raise MigrationError(
                f"Migration {migration.filename} failed and was rolled back: {exc.detail}. "
                f"Applied before it in this run: {', '.join(result.applied) or 'none'}.",
                migration=migration.filename,
                sql_error=exc.detail or "",
                applied_this_run=result.applied,
            ) from None
        result.applied.append(migration.filename)
    return result
