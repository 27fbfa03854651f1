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


# -- Reading is bounded: gzip bombs, deep nesting, run ids that are patterns -------------------

BOMB_BYTES = 200 * 1024 * 1024  # decompressed; a few hundred KB on disk
MEMORY_BOUND_MIB = 120  # the line cap is 16 MiB: growth stays well under this when bounded


def _write_bomb(path: Path, header: dict, shape: str) -> None:
    """A valid header line, then ``BOMB_BYTES`` of one endless line or of tiny records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb", compresslevel=9) as gz:
        gz.write(json.dumps(header).encode() + b"\n")
        if shape == "one endless line":
            chunk = b"\0" * (1024 * 1024)
            repeats = BOMB_BYTES // len(chunk)
        else:  # so many small records that keeping them parsed would take gigabytes
            chunk = b'{"kind": "event"}\n' * 50_000
            repeats = 30  # 1.5 M records, ~27 MB: enough to show they are not all kept
        for _ in range(repeats):
            gz.write(chunk)


# Imports the heavy modules first, so the growth measured is the read alone.
_MEASURE = """
import json, resource, sys
from pathlib import Path
import orchestration.cli, orchestration.policies.jobs
from orchestration.policies import record_archive
from resources.db import make_engine
from tests.policies.record_seed import CUTOFF, spec
args = json.loads(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if args["what"] == "cli":
    out = orchestration.cli.main(args["argv"])
else:
    report = record_archive.archive_table(
        make_engine(args["url"]), Path(args["root"]), spec(args["table"]), CUTOFF, batch_size=50
    )
    moved = [[q.file, q.reason] for q in report.quarantined]
    out = {"archived": report.archived, "quarantined": moved}
growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"growth_mib": growth, "out": out}))
"""


def _measured(**args) -> tuple[dict, str]:
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1]), proc.stderr


BOMBS = ["one endless line", "many tiny records"]


@pytest.mark.parametrize("shape", BOMBS)
def test_cli_show_on_a_gzip_bomb_is_damaged_within_a_memory_bound(tmp_path, shape):
    from orchestration.policies.archive import FORMAT

    run_file = tmp_path / "runs" / "2024" / "01" / "bomb-run.jsonl.gz"
    _write_bomb(run_file, {"kind": "header", "format": FORMAT, "run_id": "bomb-run"}, shape)
    result, stderr = _measured(
        what="cli", argv=["archive", "show", "bomb-run", "--dir", str(tmp_path)]
    )
    assert result["out"] == 2, stderr
    assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr, stderr
    assert f"damaged archive {run_file}" in stderr
    assert result["growth_mib"] < MEMORY_BOUND_MIB, result


@pytest.mark.parametrize("shape", BOMBS)
def test_pending_pass_quarantines_a_gzip_bomb_within_a_memory_bound(
    sqlite_store_url, tmp_path, shape
):
    engine = make_engine(sqlite_store_url)
    pending, rows = _pending_for_new_rows(engine, tmp_path)
    header = {"kind": "header", "format": record_archive.FORMAT, "table": TABLE}
    _write_bomb(pending, header, shape)
    result, stderr = _measured(what="pass", url=sqlite_store_url, root=str(tmp_path), table=TABLE)
    assert result["out"]["archived"] == len(rows), stderr  # the pass went on: rows re-archived
    ((file, reason),) = result["out"]["quarantined"]
    assert file == str(pending) and re.search("line 2 is over 16 MiB|no trailer", reason), reason
    assert result["growth_mib"] < MEMORY_BOUND_MIB, result
    assert sorted(_archived_ids(tmp_path)) == sorted(r["id"] for r in rows)


def _record_file(path: Path, lines: list[bytes]) -> Path:
    """A record-archive file of raw ``lines`` (header first) with a correct trailer."""
    import hashlib

    body = b"".join(line + b"\n" for line in lines)
    rows = sum(1 for line in lines[1:])
    trailer = {"kind": "end", "rows": rows, "sha256": hashlib.sha256(body).hexdigest()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(body + json.dumps(trailer).encode() + b"\n"))
    return path


def _header_line() -> bytes:
    return json.dumps({"kind": "header", "format": record_archive.FORMAT, "table": TABLE}).encode()


def test_line_cap_boundary_at_every_offset_around_it(tmp_path, monkeypatch):
    """A line of exactly the cap (newline included) reads; one byte more is damage, named."""
    cap = 4096
    monkeypatch.setattr(checked_jsonl, "MAX_LINE_BYTES", cap)
    prefix = b'{"kind": "row", "row": {"id": 1, "pad": "'
    suffix = b'"}}'
    for size in range(cap - 3, cap + 4):
        pad = size - 1 - len(prefix) - len(suffix)  # the newline counts
        line = prefix + b"x" * pad + suffix
        path = _record_file(tmp_path / f"{size}.jsonl.gz", [_header_line(), line])
        if size <= cap:
            (row,) = record_archive.read_batch(path)[1]
            assert len(row["pad"]) == pad
        else:
            with pytest.raises(record_archive.RecordArchiveError, match="line 2 is over"):
                record_archive.read_batch(path)


def test_file_cap_boundary_at_every_offset_around_it(tmp_path, monkeypatch):
    """The file cap counts every decompressed byte, trailer included; one byte over is damage."""
    lines = [
        _header_line(),
        *(json.dumps({"kind": "row", "row": {"id": i}}).encode() for i in range(5)),
    ]
    path = _record_file(tmp_path / "f.jsonl.gz", lines)
    total = len(gzip.decompress(path.read_bytes()))
    for cap in range(total - 3, total + 4):
        monkeypatch.setattr(checked_jsonl, "MAX_FILE_BYTES", cap)
        if cap >= total:
            assert len(record_archive.read_batch(path)[1]) == 5
        else:
            with pytest.raises(record_archive.RecordArchiveError, match="decompressed by line 7"):
                record_archive.read_batch(path)


@pytest.mark.parametrize("depth", [1_000, 10_000, 200_000])
@pytest.mark.parametrize("bracket", ["[", '{"a":'])
def test_deeply_nested_json_is_damage_in_any_line(tmp_path, depth, bracket):
    close = {"[": "]", '{"a":': "}"}[bracket]
    nested = (bracket * depth + "0" + close * depth).encode()
    row = b'{"kind": "row", "row": ' + nested + b"}"
    for n, lines in enumerate([[_header_line(), row], [nested]]):
        path = _record_file(tmp_path / f"deep-{n}.jsonl.gz", lines)
        with pytest.raises(record_archive.RecordArchiveError, match="nested too deeply"):
            record_archive.read_batch(path)


def test_cli_show_a_run_record_nested_too_deeply_is_damaged_exit_2(tmp_path):
    """A line that parses, with a serialized run that does not (deep): damage, exit 2."""
    from orchestration.policies.archive import FORMAT

    deep = "[" * 100_000 + "]" * 100_000
    run_file = tmp_path / "runs" / "2024" / "01" / "deep-run.jsonl.gz"
    run_file.parent.mkdir(parents=True)
    header = json.dumps({"kind": "header", "format": FORMAT, "run_id": "deep-run"})
    checked_jsonl.write(run_file, [header, json.dumps({"kind": "run", "run": deep})], "events", 0)
    _assert_one_line_error(
        _run_cli("archive", "show", "deep-run", "--dir", str(tmp_path)), run_file
    )


@pytest.mark.parametrize(
    "run_id",
    ["*", "?", "[a]", "[!x]*", "**", "*-run", "a*", "../01/other", "a/b", "", "_x", "a\nb"],
)
def test_cli_show_never_uses_the_run_id_as_a_pattern_or_path(tmp_path, run_id):
    """Another run's file is there; a pattern or path never reaches it."""
    other = tmp_path / "runs" / "2024" / "01" / "other-run.jsonl.gz"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"")  # damaged: reading it would print its name
    proc = _run_cli("archive", "show", run_id, "--dir", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "not a run id" in proc.stderr, proc.stderr
    assert "other-run" not in proc.stderr and proc.stdout == ""


def test_find_archive_matches_the_run_id_literally():
    import tempfile

    from orchestration.policies.archive import find_archive

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("abc", "abd", "a-c"):
            path = root / "runs" / "2024" / "01" / f"{name}.jsonl.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
        assert find_archive(root, "abc") == root / "runs" / "2024" / "01" / "abc.jsonl.gz"
        for pattern in ("ab?", "ab[cd]", "a*", "*", "ab"):
            assert find_archive(root, pattern) is None, pattern
