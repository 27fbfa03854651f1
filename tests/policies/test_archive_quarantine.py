"""Damaged archive files: named, set aside (never deleted), the pass goes on, no row lost.

Every kind of damage is made to a real ``.pending`` batch file on a real record store (SQLite and
PostgreSQL): cut at every few offsets, empty, garbage, corrupt deflate data, not UTF-8, bad JSON,
no or another header, no trailer, a line after the trailer, a wrong count or sha256, another
table's rows. Each is quarantined with its reason, the pass archives every row, a second pass is
clean. The CLIs read damaged files through real subprocesses: one line, no traceback.
"""

import gzip
import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestration.definitions import defs
from orchestration.policies import checked_jsonl, record_archive
from resources.db import make_engine
from tests.policies.record_seed import CUTOFF, seed_history, snapshot, spec
from tests.policies.test_archive_job import archive_config, step_metadata

CLI = [sys.executable, "-m", "orchestration.cli"]
TABLE = "trigger_history"


@pytest.fixture
def engine(store_url):
    engine = make_engine(store_url)
    yield engine
    engine.dispose()


def _lines(raw: bytes) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(raw).splitlines()]


def _gz(items: list[dict], extra: bytes = b"") -> bytes:
    return gzip.compress(b"".join(json.dumps(i).encode() + b"\n" for i in items) + extra)


def _edit(fn: Callable[[list[dict]], list[dict]]) -> Callable[[bytes], bytes]:
    return lambda raw: _gz(fn(_lines(raw)))


def _set(index: int, **values) -> Callable[[list[dict]], list[dict]]:
    def edit(items: list[dict]) -> list[dict]:
        at = index % len(items)
        return [{**i, **values} if n == at else i for n, i in enumerate(items)]

    return edit


def _other_table(raw: bytes) -> bytes:
    """A whole, valid file (header, trailer, checksum) of another table's rows."""
    rows = [i["row"] for i in _lines(raw) if i["kind"] == "row"]
    return _valid_file(record_archive._lines("command_runs", rows), len(rows))


def _valid_file(lines, count: int) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.jsonl.gz"
        checked_jsonl.write(path, lines, "rows", count)
        return path.read_bytes()


def _flip_middle(raw: bytes) -> bytes:
    mid = len(raw) // 2
    return raw[:mid] + bytes(b ^ 0xFF for b in raw[mid : mid + 16]) + raw[mid + 16 :]


# kind -> (damage applied to the good file's bytes, what the reason must say)
DAMAGE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "empty": (lambda raw: b"", r"empty file \(0 bytes\)"),
    "garbage": (lambda raw: b"\x00\xffnot an archive at all\n" * 40, "not a valid gzip stream"),
    "corrupt deflate data": (_flip_middle, "not a valid gzip stream|not JSON|not UTF-8|cut short"),
    "not utf-8": (lambda raw: gzip.compress(b"\xff\xfe\xfd\n"), "line 1 is not UTF-8 text"),
    "bad json": (lambda raw: _gz(_lines(raw)[:1], b"{not json\n"), r"line 2 is not JSON"),
    "not a record": (lambda raw: _gz([*_lines(raw)[:1], ["x"]]), r"line 2 is not an archive"),
    "other format": (_edit(_set(0, format="someone-else/9")), "unknown format 'someone-else/9'"),
    "no header": (_edit(lambda items: items[1:]), "no header line"),
    "no trailer": (_edit(lambda items: items[:-1]), r"no trailer \(the file was cut short\)"),
    "line after trailer": (
        _edit(lambda items: [*items, items[1]]),
        "follows the trailer",
    ),
    "bad sha256": (_edit(_set(-1, sha256="0" * 64)), "checksum mismatch"),
    "bad count": (_edit(_set(-1, rows=99)), "count mismatch"),
    "another table": (_other_table, "holds command_runs rows, not trigger_history"),
}


def _pending_for_new_rows(engine, root: Path, old: int = 4) -> tuple[Path, list[dict]]:
    """Fresh old rows and their exported batch, as a pass left it (rows not yet deleted)."""
    ids = set(seed_history(engine, old=old, new=0)["old"])
    rows = [r for i, r in snapshot(engine, spec(TABLE)).items() if i in ids]
    pending = record_archive.write_batch(record_archive.batch_path(root, TABLE, rows), TABLE, rows)
    return pending, rows


def _archived_ids(root: Path) -> list[int]:
    return [r["id"] for r in record_archive.read_records(root, TABLE)]


def _in_store(engine) -> set[int]:
    table = spec(TABLE).table
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(sa.select(table.c.id))}


def _assert_set_aside_and_archived(engine, root, pending, rows, damaged, reason, report) -> None:
    """One file quarantined with ``reason``, byte-identical; every row archived exactly once."""
    (moved,) = report.quarantined
    assert moved.file == str(pending) and not pending.exists()
    assert re.search(reason, moved.reason), moved.reason
    assert str(pending) in moved.message() and moved.reason in moved.message()
    assert moved.rows_in_store == len(rows)  # not deleted: archived again from the store
    kept = Path(moved.moved_to)
    assert kept.read_bytes() == damaged  # set aside as it was, never deleted or rewritten
    assert kept.is_relative_to(root / record_archive.QUARANTINE / "records" / TABLE)
    assert kept.name.startswith(pending.name + ".")
    assert report.archived == len(rows) and not _in_store(engine) & {r["id"] for r in rows}
    assert list(root.rglob("*.pending")) == []


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_every_kind_of_damage_is_set_aside_and_the_pass_archives_on(engine, tmp_path, kind):
    damage, reason = DAMAGE[kind]
    pending, rows = _pending_for_new_rows(engine, tmp_path)
    damaged = damage(pending.read_bytes())
    pending.write_bytes(damaged)
    before = snapshot(engine, spec(TABLE))

    report = record_archive.archive_table(engine, tmp_path, spec(TABLE), CUTOFF, batch_size=3)

    _assert_set_aside_and_archived(engine, tmp_path, pending, rows, damaged, reason, report)
    assert [before[i] for i in _archived_ids(tmp_path)] == rows  # each row once, as it was
    again = record_archive.archive_table(engine, tmp_path, spec(TABLE), CUTOFF)
    assert (again.archived, again.quarantined, again.resumed) == (0, [], 0)


def test_a_file_cut_at_every_few_offsets_is_set_aside_each_time(engine, tmp_path):
    """One pass per cut (new rows each time): every offset from 0 to the last byte."""
    good_size = len(_pending_for_new_rows(engine, tmp_path / "probe")[0].read_bytes())
    record_archive.archive_table(engine, tmp_path / "probe", spec(TABLE), CUTOFF)  # probe rows out
    offsets = sorted({*range(0, good_size, 7), good_size - 1})
    assert len(offsets) >= 20
    for n, cut in enumerate(offsets):
        root = tmp_path / f"cut-{n}"
        pending, rows = _pending_for_new_rows(engine, root)
        damaged = pending.read_bytes()[:cut]
        pending.write_bytes(damaged)
        report = record_archive.archive_table(engine, root, spec(TABLE), CUTOFF, batch_size=3)
        reason = "empty file" if cut == 0 else "cut short|not a valid gzip stream"
        _assert_set_aside_and_archived(engine, root, pending, rows, damaged, reason, report)
        assert sorted(_archived_ids(root)) == sorted(r["id"] for r in rows)


def test_damaged_file_whose_rows_were_already_deleted_is_the_kept_only_copy(engine, tmp_path):
    """Crash after the delete, before the rename, then the file is damaged: nothing to re-archive,
    the quarantined file is kept byte for byte and the log line says it is the only copy."""
    pending, rows = _pending_for_new_rows(engine, tmp_path)
    table = spec(TABLE).table
    with engine.begin() as conn:
        conn.execute(table.delete().where(table.c.id.in_([r["id"] for r in rows])))
    damaged = pending.read_bytes()[:-20]
    pending.write_bytes(damaged)

    report = record_archive.archive_table(engine, tmp_path, spec(TABLE), CUTOFF)

    (moved,) = report.quarantined
    assert moved.rows_in_store == 0 and Path(moved.moved_to).read_bytes() == damaged
    assert "exists only in the quarantined file (kept, never deleted)" in moved.message()
    assert report.archived == 0 and list(tmp_path.rglob("*.pending")) == []


def test_two_damaged_files_and_good_ones_in_one_pass(engine, tmp_path):
    """Damage in one file never stops the others: a good pending file is still finished."""
    bad1, rows1 = _pending_for_new_rows(engine, tmp_path)
    bad2, rows2 = _pending_for_new_rows(engine, tmp_path)
    good, rows3 = _pending_for_new_rows(engine, tmp_path)
    bad1.write_bytes(b"")
    bad2.write_bytes(bad2.read_bytes()[:30])
    report = record_archive.archive_table(engine, tmp_path, spec(TABLE), CUTOFF, batch_size=50)
    assert sorted(q.file for q in report.quarantined) == sorted([str(bad1), str(bad2)])
    assert report.resumed == 1 and report.archived == len(rows1 + rows2 + rows3)
    assert good.with_name(good.name.removesuffix(".pending")).exists()  # finished, not set aside
    assert sorted(_archived_ids(tmp_path)) == sorted(r["id"] for r in rows1 + rows2 + rows3)


def test_job_warns_names_the_file_and_lists_it_in_metadata(instance, sqlite_store_url, tmp_path):
    engine = make_engine(sqlite_store_url)
    pending, rows = _pending_for_new_rows(engine, tmp_path)
    pending.write_bytes(pending.read_bytes()[:40])
    job = defs.get_job_def("archive_run_history")
    config = archive_config(tmp_path, sqlite_store_url)
    del config["ops"]["archive_old_runs"]
    result = job.execute_in_process(
        instance=instance, run_config=config, op_selection=["archive_old_records"]
    )
    assert result.success
    md = step_metadata(result, "archive_old_records")
    assert md["quarantined"] == 1 and md["archived"] == len(rows)
    (entry,) = md["quarantined_files"]
    assert entry["file"] == str(pending) and "cut short" in entry["reason"]
    assert md["tables"][TABLE]["quarantined"] == 1
    logs = instance.all_logs(result.run_id)
    warnings = [e.user_message for e in logs if e.level == logging.WARNING]
    (warning,) = [w for w in warnings if "damaged archive file" in w]
    assert str(pending) in warning and "cut short" in warning and entry["moved_to"] in warning

    second = job.execute_in_process(
        instance=instance, run_config=config, op_selection=["archive_old_records"]
    )
    assert step_metadata(second, "archive_old_records")["quarantined"] == 0


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def _assert_one_line_error(proc: subprocess.CompletedProcess, path: Path) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert str(path) in proc.stderr and "damaged" in proc.stderr


@pytest.mark.parametrize("kind", ["empty", "garbage", "bad json", "bad sha256"])
def test_cli_archive_records_and_show_on_a_damaged_file_is_one_line(tmp_path, kind):
    damage, _reason = DAMAGE[kind]
    good = _gz(
        [
            {"kind": "header", "format": record_archive.FORMAT, "table": TABLE},
            {"kind": "row", "row": {"id": 1}},
            {"kind": "end", "rows": 1, "sha256": "0" * 64},
        ]
    )
    final = tmp_path / "records" / TABLE / "2024-01-01" / "1-1.jsonl.gz"
    final.parent.mkdir(parents=True)
    final.write_bytes(damage(good))
    _assert_one_line_error(_run_cli("archive", "records", TABLE, "--dir", str(tmp_path)), final)

    run_file = tmp_path / "runs" / "2024" / "01" / "some-run.jsonl.gz"
    run_file.parent.mkdir(parents=True)
    run_file.write_bytes(damage(good))
    shown = _run_cli("archive", "show", "some-run", "--dir", str(tmp_path))
    _assert_one_line_error(shown, run_file)
