"""Record-store history archive: old trigger history and command runs → verified JSONL → deleted.

The record store's history tables grow by a row per trigger attempt and per command run. Rows in
a final state whose ``finished_at`` is older than the retention are moved out in keyset batches
(``id > :after ORDER BY id LIMIT n``), each batch one file
``<root>/records/<table>/<YYYY-MM-DD>/<first_id>-<last_id>.jsonl.gz`` (date of the batch's
first ``finished_at``, UTC). A command run carries its ``command_run_events`` inside its line,
so a run and its history leave together.

Exactly-once without a database journal: a batch file is written to ``.tmp``, fsynced and
renamed to ``….jsonl.gz.pending``; it is read back and compared row by row with what was
selected (count, ids, values), optionally loaded into BigQuery (verified by counting the ids
there), then exactly those ids are deleted in one transaction, and only then is ``.pending``
renamed to its final name. A pass first finishes every ``.pending`` file it finds: re-verifies
it, re-checks the rows still present against it and deletes them. So a crash at any point loses
nothing, and no row ever lands in two files.

A ``.pending`` file that no longer reads back (cut short, not gzip, bad JSON, bad header, bad or
missing trailer, another table's rows) is moved to ``<root>/quarantine/<its relative
path>.<UTC timestamp>``, named with the reason in the report, and the pass goes on; see
``quarantine_pending`` for why no row is lost that way.

Keyset scan by primary key: old rows sit at low ids, so each batch reads only what it returns
until the last query, which walks the (younger) rest of the table once per pass; no extra index
is needed for a daily job. A command run that a younger retry still references (``retry_of``)
is left for a later pass, when the retry has gone first.
"""

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa

from orchestration.commands import models as cm
from orchestration.policies import checked_jsonl
from orchestration.policies.archive import ArchiveError
from orchestration.triggers import models as tm
from resources.db import as_utc

FORMAT = "platform-ops-record-archive/1"
PENDING = ".pending"
QUARANTINE = "quarantine"


class RecordArchiveError(ArchiveError):
    """An export that did not verify, or rows that changed under us; nothing was deleted."""


@dataclass(frozen=True)
class HistoryTable:
    """One archivable table: which rows are final, and the child rows that leave with them."""

    name: str
    table: sa.Table
    final: Callable[[], sa.ColumnElement[bool]]
    children: sa.Table | None = None
    child_fk: str | None = None
    self_fk: str | None = None  # a column of younger rows that may still point at a row

    @property
    def finished_at(self) -> sa.Column:
        return self.table.c.finished_at

    def archivable(self, cutoff: datetime) -> sa.ColumnElement[bool]:
        return sa.and_(self.final(), self.finished_at.is_not(None), self.finished_at < cutoff)


TABLES: tuple[HistoryTable, ...] = (
    # Every trigger_history row is written when its attempt has finished: all rows are final.
    HistoryTable("trigger_history", tm.trigger_history, final=sa.true),
    HistoryTable(
        "command_runs",
        cm.command_runs,
        final=lambda: cm.command_runs.c.status.in_(cm.TERMINAL),
        children=cm.command_run_events,
        child_fk="command_run_id",
        self_fk="retry_of",
    ),
)


class Sink(Protocol):
    """A second destination (BigQuery) that must hold a batch before its rows are deleted."""

    def load(self, table: str, rows: Sequence[dict[str, Any]]) -> None: ...


@dataclass(frozen=True)
class Quarantined:
    """A ``.pending`` file that did not read back, and where it was moved."""

    table: str
    file: str
    moved_to: str
    reason: str
    rows_in_store: int | None  # rows of its id range still in the store; None: name unparsable

    def message(self) -> str:
        """One line for the run log: the file, why, where it went, what it means for its rows."""
        if self.rows_in_store is None:
            rows = "its id range is unknown (unexpected file name)"
        else:
            rows = (
                f"{self.rows_in_store} row(s) of its id range are still in the record store "
                "(archived again from there)"
            )
        return (
            f"{self.table}: damaged archive file {self.file} set aside as {self.moved_to}: "
            f"{self.reason}; {rows}; any row of its range no longer in the store exists only "
            "in the quarantined file (kept, never deleted)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "file": self.file,
            "moved_to": self.moved_to,
            "reason": self.reason,
            "rows_in_store": self.rows_in_store,
        }


@dataclass
class TableReport:
    archived: int = 0
    children: int = 0
    files: list[str] = field(default_factory=list)
    resumed: int = 0  # pending files finished from an interrupted pass
    skipped: int = 0  # still referenced by a younger row (next pass)
    quarantined: list[Quarantined] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {
            "rows": self.archived,
            "children": self.children,
            "files": len(self.files),
            "resumed": self.resumed,
            "held_for_next_pass": self.skipped,
            "quarantined": len(self.quarantined),
        }


@dataclass
class RecordReport:
    tables: dict[str, TableReport] = field(default_factory=dict)
    bytes_written: int = 0

    @property
    def archived(self) -> int:
        return sum(t.archived for t in self.tables.values())

    @property
    def quarantined(self) -> list[Quarantined]:
        return [q for t in self.tables.values() for q in t.quarantined]


def _value(value: Any) -> Any:
    if isinstance(value, datetime):  # SQLite hands back naive UTC; PostgreSQL aware
        return as_utc(value).isoformat()
    return value


def _row(mapping: Any) -> dict[str, Any]:
    return {key: _value(val) for key, val in dict(mapping).items()}


def batch_path(root: Path, table: str, rows: Sequence[dict[str, Any]]) -> Path:
    day = datetime.fromisoformat(rows[0]["finished_at"]).astimezone(UTC)
    return (
        root / "records" / table / f"{day:%Y-%m-%d}" / f"{rows[0]['id']}-{rows[-1]['id']}.jsonl.gz"
    )


def _lines(table: str, rows: Sequence[dict[str, Any]]) -> Iterator[str]:
    yield json.dumps({"kind": "header", "format": FORMAT, "table": table}, sort_keys=True)
    for row in rows:
        yield json.dumps({"kind": "row", "row": row}, sort_keys=True)


def write_batch(path: Path, table: str, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` to ``path + .pending`` atomically and deterministically; return that path.

    ``mtime=0`` in the gzip header: the same rows always give the same bytes.
    """
    pending = path.with_name(path.name + PENDING)
    checked_jsonl.write(pending, _lines(table, rows), "rows", len(rows), deterministic=True)
    return pending


def read_batch(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """(table, rows) of a batch file, checking its trailer (row count and checksum)."""
    items = checked_jsonl.read(path, FORMAT, "row", "rows", RecordArchiveError)
    return items[0]["table"], [i["row"] for i in items if i["kind"] == "row"]


def _fetch(conn: sa.Connection, spec: HistoryTable, query: sa.Select) -> list[dict[str, Any]]:
    rows = [_row(r) for r in conn.execute(query).mappings()]
    if spec.children is not None and rows:
        fk = spec.children.c[spec.child_fk]
        by_parent: dict[int, list[dict[str, Any]]] = {r["id"]: [] for r in rows}
        children = conn.execute(
            sa.select(spec.children).where(fk.in_(list(by_parent))).order_by(fk, spec.children.c.id)
        ).mappings()
        for child in children:
            by_parent[child[spec.child_fk]].append(_row(child))
        for row in rows:
            row[spec.children.name] = by_parent[row["id"]]
    return rows


def _still_referenced(conn: sa.Connection, spec: HistoryTable, ids: list[int]) -> set[int]:
    """Ids of ``ids`` that a row outside ``ids`` points at (``retry_of``): not deletable yet."""
    if spec.self_fk is None or not ids:
        return set()
    col = spec.table.c[spec.self_fk]
    query = sa.select(col).where(col.in_(ids), spec.table.c.id.not_in(ids))
    return {r[0] for r in conn.execute(query)}


def _delete(engine: sa.Engine, spec: HistoryTable, ids: list[int], cutoff: datetime) -> None:
    """Delete exactly ``ids`` (still archivable) and their children, all or nothing."""
    with engine.begin() as conn:
        if spec.children is not None:
            conn.execute(spec.children.delete().where(spec.children.c[spec.child_fk].in_(ids)))
        deleted = conn.execute(
            spec.table.delete().where(spec.table.c.id.in_(ids), spec.archivable(cutoff))
        ).rowcount
        if deleted != len(ids):
            raise RecordArchiveError(
                f"{spec.name}: {deleted} of {len(ids)} exported rows were still archivable; "
                "rolled back, nothing deleted"
            )


def _verify(pending: Path, spec: HistoryTable, rows: list[dict[str, Any]]) -> None:
    table, back = read_batch(pending)
    if table != spec.name or [r["id"] for r in back] != [r["id"] for r in rows]:
        raise RecordArchiveError(f"{pending}: read back other ids than were written")
    if back != rows:
        raise RecordArchiveError(f"{pending}: read back other values than were written")


def _finish(
    engine: sa.Engine,
    spec: HistoryTable,
    pending: Path,
    rows: list[dict[str, Any]],
    cutoff: datetime,
    sink: Sink | None,
    after_export: Callable[[Path], None] | None,
) -> Path:
    """Verified file → sink → delete → final name; returns the final path."""
    if sink is not None:
        sink.load(spec.name, rows)
    if after_export:
        after_export(pending)  # test hook: a crash between export and delete
    _delete(engine, spec, [r["id"] for r in rows], cutoff)
    return _finish_rename(pending)


def resume_pending(
    engine: sa.Engine,
    root: Path,
    spec: HistoryTable,
    cutoff: datetime,
    report: TableReport,
    sink: Sink | None = None,
    on_quarantine: Callable[[Quarantined], None] | None = None,
) -> None:
    """Finish batches an interrupted pass exported but did not (fully) delete.

    A file that does not read back is quarantined (``quarantine_pending``) and the pass goes on.
    """
    for pending in sorted((root / "records" / spec.name).glob(f"*/*{PENDING}")):
        try:
            table, rows = read_batch(pending)
            if table != spec.name:
                raise RecordArchiveError(f"{pending}: holds {table} rows, not {spec.name}")
        except RecordArchiveError as exc:
            moved = quarantine_pending(engine, root, spec, pending, str(exc))
            report.quarantined.append(moved)
            if on_quarantine:
                on_quarantine(moved)
            continue
        ids = [r["id"] for r in rows]
        with engine.connect() as conn:
            present = _fetch(
                conn, spec, sa.select(spec.table).where(spec.table.c.id.in_(ids)).order_by("id")
            )
        by_id = {r["id"]: r for r in rows}
        if any(by_id.get(r["id"]) != r for r in present):
            raise RecordArchiveError(f"{pending}: rows changed since export; left in place")
        if present:  # all of them (the delete is one transaction): delete now
            rows_present = [by_id[r["id"]] for r in present]
            if sink is not None:
                sink.load(spec.name, rows)
            _delete(engine, spec, [r["id"] for r in rows_present], cutoff)
        final = _finish_rename(pending)
        report.resumed += 1
        report.archived += len(present)
        report.files.append(str(final))


def quarantine_pending(
    engine: sa.Engine, root: Path, spec: HistoryTable, pending: Path, error: str
) -> Quarantined:
    """Move a ``.pending`` file that does not read back out of the way; never delete it.

    Were its rows deleted from the store? ``.pending`` only ever appears by an atomic rename of
    a complete, fsynced file (``checked_jsonl.write``; a crash while writing leaves ``.tmp``),
    and rows are deleted only after that very file has been read back and verified (``_verify``
    in ``archive_table``, ``read_batch`` in ``resume_pending``). So a damaged ``.pending`` is
    either (a) damaged before any verification passed: that pass stopped, nothing was deleted,
    every row is still in the store; or (b) damaged after a verification passed, while it sat
    between the delete and the rename (a crash in that window, then a disk error, an edit, a
    copy cut short): its rows may be gone from the store and this file is their only copy. The
    file cannot tell (a) from (b), so it is moved, never deleted, to
    ``<root>/quarantine/<relative path>.<UTC timestamp>`` (same file system: an atomic rename),
    and the rows of its id range still in the store are counted: those stay in the store and
    the keyset scan archives them again into a fresh file. Nothing reads the quarantine
    directory, so no row is read back twice.
    """
    relative = pending.relative_to(root)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    dest = root / QUARANTINE / relative.parent / f"{relative.name}.{stamp}"
    n = 0
    while dest.exists():  # never overwrite an earlier quarantined copy
        n += 1
        dest = dest.with_name(f"{relative.name}.{stamp}-{n}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(pending, dest)
    reason = error.removeprefix(f"{pending}: ")
    in_store = _rows_in_range(engine, spec, pending)
    return Quarantined(spec.name, str(pending), str(dest), reason, in_store)


def _rows_in_range(engine: sa.Engine, spec: HistoryTable, pending: Path) -> int | None:
    """Rows of the store whose id lies in the file's ``<first>-<last>`` name; None: no range."""
    first, sep, rest = pending.name.partition("-")
    last = rest.split(".", 1)[0].split("~", 1)[0]
    if not (sep and first.isdigit() and last.isdigit()):
        return None
    ids = spec.table.c.id
    query = sa.select(sa.func.count()).where(ids >= int(first), ids <= int(last))
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _finish_rename(pending: Path) -> Path:
    """``.pending`` → final name, once its rows are gone from the record store."""
    final = pending.with_name(pending.name.removesuffix(PENDING))
    if final.exists():  # SQLite may reuse ids after deleting the newest rows: keep both files
        digest = hashlib.sha256(pending.read_bytes()).hexdigest()[:8]
        final = final.with_name(final.name.replace(".jsonl.gz", f"~{digest}.jsonl.gz"))
    os.replace(pending, final)
    return final


def count_archivable(engine: sa.Engine, spec: HistoryTable, cutoff: datetime) -> int:
    with engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(spec.table).where(spec.archivable(cutoff))
        return int(conn.execute(query).scalar_one())


def archive_table(
    engine: sa.Engine,
    root: Path,
    spec: HistoryTable,
    cutoff: datetime,
    *,
    batch_size: int = 1000,
    sink: Sink | None = None,
    on_progress: Callable[[int], None] | None = None,
    after_export: Callable[[Path], None] | None = None,
    on_quarantine: Callable[[Quarantined], None] | None = None,
) -> TableReport:
    """Move every archivable row of one table out, batch by batch (see the module doc)."""
    cutoff = as_utc(cutoff)
    report = TableReport()
    resume_pending(engine, root, spec, cutoff, report, sink, on_quarantine)
    after = 0
    while True:
        query = (
            sa.select(spec.table)
            .where(spec.table.c.id > after, spec.archivable(cutoff))
            .order_by(spec.table.c.id)
            .limit(batch_size)
        )
        with engine.connect() as conn:
            rows = _fetch(conn, spec, query)
            if not rows:
                return report
            after = rows[-1]["id"]
            held = _still_referenced(conn, spec, [r["id"] for r in rows])
        if held:
            rows = [r for r in rows if r["id"] not in held]
            report.skipped += len(held)
        if rows:
            pending = write_batch(batch_path(root, spec.name, rows), spec.name, rows)
            _verify(pending, spec, rows)
            final = _finish(engine, spec, pending, rows, cutoff, sink, after_export)
            report.archived += len(rows)
            if spec.children is not None:
                report.children += sum(len(r[spec.children.name]) for r in rows)
            report.files.append(str(final))
        if on_progress:
            on_progress(len(rows) + len(held))


def archive_records(
    engine: sa.Engine,
    root: Path,
    cutoff: datetime,
    *,
    batch_size: int = 1000,
    tables: Sequence[HistoryTable] = TABLES,
    sink: Sink | None = None,
    on_progress: Callable[[int], None] | None = None,
    after_export: Callable[[Path], None] | None = None,
    on_quarantine: Callable[[Quarantined], None] | None = None,
) -> RecordReport:
    report = RecordReport()
    for spec in tables:
        table_report = archive_table(
            engine, root, spec, cutoff, batch_size=batch_size, sink=sink,
            on_progress=on_progress, after_export=after_export, on_quarantine=on_quarantine,
        )  # fmt: skip
        report.tables[spec.name] = table_report
        report.bytes_written += sum(Path(f).stat().st_size for f in table_report.files)
    return report


def _first_id(path: Path) -> tuple[int, int, str]:
    """Sort key: files by their first id; a file not named ``<first>-…`` sorts after, by name
    (and is then read and checked like any other) instead of failing the sort."""
    first = path.name.split("-", 1)[0]
    return (0, int(first), path.name) if first.isdigit() else (1, 0, path.name)


def read_records(root: Path, table: str) -> Iterator[dict[str, Any]]:
    """Every archived row of ``table``, file by file in id order (for read-back and tests)."""
    files = sorted((root / "records" / table).glob("*/*.jsonl.gz"), key=_first_id)
    for path in files:
        yield from read_batch(path)[1]
