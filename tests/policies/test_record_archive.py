"""Record-store history archive on SQLite and PostgreSQL: export → verify → delete, exactly once."""

import pytest
import sqlalchemy as sa

from orchestration.commands import models as cm
from orchestration.policies import record_archive
from tests.policies.record_seed import CUTOFF, seed_command_runs, seed_history, snapshot, spec


def _ids(engine, table: sa.Table) -> set[int]:
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(sa.select(table.c.id))}


def test_round_trip_in_batches_and_nothing_newer_or_in_flight_touched(engine, tmp_path):
    history = seed_history(engine, old=7, new=3)
    runs = seed_command_runs(engine)
    before_h = snapshot(engine, spec("trigger_history"))
    before_r = snapshot(engine, spec("command_runs"))
    ticks: list[int] = []

    report = record_archive.archive_records(
        engine, tmp_path, CUTOFF, batch_size=3, on_progress=ticks.append
    )

    h, r = report.tables["trigger_history"], report.tables["command_runs"]
    assert h.archived == 7 and r.archived == len(runs["old"]) and r.skipped == 1
    assert r.children == sum(len(before_r[i]["command_run_events"]) for i in runs["old"])
    assert _ids(engine, spec("trigger_history").table) == set(history["new"])
    kept = set(runs["inflight"] + runs["new"] + runs["held"])
    assert _ids(engine, cm.command_runs) == kept
    with engine.connect() as conn:
        left = {e[0] for e in conn.execute(sa.select(cm.command_run_events.c.command_run_id))}
    # the archived runs' events left with them; the kept runs' events all stayed
    assert left == {i for i in kept if before_r[i]["command_run_events"]}

    back_h = list(record_archive.read_records(tmp_path, "trigger_history"))
    assert back_h == [before_h[i] for i in sorted(history["old"])]
    back_r = list(record_archive.read_records(tmp_path, "command_runs"))
    assert back_r == [before_r[i] for i in sorted(runs["old"])]
    assert all(row["status"] in cm.TERMINAL for row in back_r)
    # files named by their id range under the first row's finished_at date; 7 rows / 3 = 3 files
    names = sorted(p.name for p in (tmp_path / "records" / "trigger_history").rglob("*.jsonl.gz"))
    assert len(names) == 3
    first = sorted(history["old"])[:3]
    assert f"{first[0]}-{first[-1]}.jsonl.gz" in names
    assert list(tmp_path.rglob("*.pending")) == [] and list(tmp_path.rglob("*.tmp")) == []
    assert sum(ticks) == 7 + len(runs["old"]) + 1  # every candidate counted once

    again = record_archive.archive_records(engine, tmp_path, CUTOFF, batch_size=3)
    assert again.archived == 0


def test_crash_between_export_and_delete_then_rerun_loses_and_duplicates_nothing(engine, tmp_path):
    history = seed_history(engine, old=8, new=2)
    before = snapshot(engine, spec("trigger_history"))
    calls = []

    def crash_on_second(pending):
        calls.append(pending)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed after export, before delete")

    with pytest.raises(KeyboardInterrupt):
        record_archive.archive_table(
            engine, tmp_path, spec("trigger_history"), CUTOFF, batch_size=3,
            after_export=crash_on_second,
        )  # fmt: skip
    (pending,) = list(tmp_path.rglob("*.pending"))
    assert pending == calls[1]
    exported_not_deleted = [r["id"] for r in record_archive.read_batch(pending)[1]]
    assert set(exported_not_deleted) <= _ids(engine, spec("trigger_history").table)
    pending_bytes = pending.read_bytes()

    report = record_archive.archive_table(
        engine, tmp_path, spec("trigger_history"), CUTOFF, batch_size=3
    )
    assert report.resumed == 1 and report.archived == 8 - 3  # batch 1 went before the crash
    assert list(tmp_path.rglob("*.pending")) == []
    finished = pending.with_name(pending.name.removesuffix(".pending"))
    assert finished.read_bytes() == pending_bytes  # the same file, now final
    back = list(record_archive.read_records(tmp_path, "trigger_history"))
    assert [r["id"] for r in back] == sorted(history["old"])  # each row exactly once
    assert back == [before[i] for i in sorted(history["old"])]
    assert _ids(engine, spec("trigger_history").table) == set(history["new"])


def test_crash_after_delete_before_rename_finishes_without_error(engine, tmp_path):
    history = seed_history(engine, old=4, new=1)
    rows = list(snapshot(engine, spec("trigger_history")).values())
    old_rows = [r for r in rows if r["id"] in history["old"]]
    path = record_archive.batch_path(tmp_path, "trigger_history", old_rows)
    record_archive.write_batch(path, "trigger_history", old_rows)
    with engine.begin() as conn:  # the delete committed, then the process died
        table = spec("trigger_history").table
        conn.execute(table.delete().where(table.c.id.in_(history["old"])))

    report = record_archive.archive_table(engine, tmp_path, spec("trigger_history"), CUTOFF)
    assert report.resumed == 1 and report.archived == 0
    assert path.exists() and list(tmp_path.rglob("*.pending")) == []
    assert list(record_archive.read_records(tmp_path, "trigger_history")) == old_rows


def test_a_changed_row_is_not_deleted_and_a_damaged_file_is_detected(engine, tmp_path):
    history = seed_history(engine, old=2, new=0)
    rows = list(snapshot(engine, spec("trigger_history")).values())
    path = record_archive.batch_path(tmp_path, "trigger_history", rows)
    pending = record_archive.write_batch(path, "trigger_history", rows)
    table = spec("trigger_history").table
    with engine.begin() as conn:
        conn.execute(table.update().where(table.c.id == history["old"][0]).values(error="edited"))
    with pytest.raises(record_archive.RecordArchiveError, match="changed since export"):
        record_archive.archive_table(engine, tmp_path, spec("trigger_history"), CUTOFF)
    assert _ids(engine, table) == set(history["old"])

    raw = pending.read_bytes()
    pending.write_bytes(raw[: len(raw) // 2])
    with pytest.raises((record_archive.RecordArchiveError, EOFError, OSError)):
        record_archive.read_batch(pending)
    assert _ids(engine, table) == set(history["old"])
