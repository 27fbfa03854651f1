"""Run-history archive round trip on a real instance: export → delete → read back identical.

On both Dagster storages (``dagster_storage``): SQLite, the local default, and PostgreSQL,
production's (deploy/dagster.yaml). Checks that need no instance stay single.
"""

import gzip
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from orchestration.definitions import defs
from orchestration.policies import archive, ops
from tests.conftest import run_config
from tests.policies.test_archive_job import archive_config
from tests.support.results import step_metadata

CLI = [sys.executable, "-m", "orchestration.cli"]


def _run_jobs(instance, n):
    job = defs.get_job_def("bootstrap")
    return [
        job.execute_in_process(instance=instance, run_config=run_config()).run_id for _ in range(n)
    ]


def _snapshot(instance, run_id):
    run = instance.get_run_by_id(run_id)
    events = [
        dg.serialize_value(r.event_log_entry) for r in instance.get_records_for_run(run_id).records
    ]
    return dg.serialize_value(run), events


def test_round_trip_and_nothing_newer_touched(dagster_storage, platform_env, tmp_path):
    instance = dagster_storage.instance
    old = _run_jobs(instance, 2)
    before = {run_id: _snapshot(instance, run_id) for run_id in old}
    kept_before = {run_id: dagster_storage.leftovers(run_id) for run_id in old}
    assert all(all(kept.values()) for kept in kept_before.values()), kept_before
    time.sleep(0.05)
    cutoff = datetime.now(UTC)
    time.sleep(0.05)
    (newer,) = _run_jobs(instance, 1)
    newer_before = _snapshot(instance, newer)

    report = archive.archive_runs(instance, tmp_path, cutoff)
    assert sorted(report.archived) == sorted(old) and report.failed == {}
    for run_id in old:
        assert instance.get_run_by_id(run_id) is None
        back = archive.read_archive(archive.find_archive(tmp_path, run_id))
        assert dg.serialize_value(back.run) == before[run_id][0]
        assert [dg.serialize_value(e) for e in back.events] == before[run_id][1]
    assert _snapshot(instance, newer) == newer_before  # the newer run: record and events as were
    assert archive.find_archive(tmp_path, newer) is None
    # Gone from the storage itself, not only from Dagster's answers: on SQLite the run's
    # event-log shard file (Dagster leaves it on disk after delete_run; SQLite-only, PostgreSQL
    # has no per-run files), on PostgreSQL its rows in runs, run_tags and event_logs.
    assert [sum(dagster_storage.leftovers(run_id).values()) for run_id in old] == [0, 0]
    assert all(dagster_storage.leftovers(newer).values()), dagster_storage.leftovers(newer)

    again = archive.archive_runs(instance, tmp_path, cutoff)  # idempotent: nothing left to do
    assert again.archived == [] and again.failed == {}
    assert len(list(tmp_path.rglob("*.jsonl.gz"))) == 2


def test_crash_between_export_and_delete_loses_nothing(dagster_storage, platform_env, tmp_path):
    instance = dagster_storage.instance
    (run_id,) = _run_jobs(instance, 1)
    snapshot = _snapshot(instance, run_id)
    cutoff = datetime.now(UTC) + timedelta(seconds=1)

    def crash(_run_id):
        raise KeyboardInterrupt("killed after export")

    with pytest.raises(KeyboardInterrupt):
        archive.archive_runs(instance, tmp_path, cutoff, after_export=crash)
    assert instance.get_run_by_id(run_id) is not None  # exported, not deleted
    assert all(dagster_storage.leftovers(run_id).values())
    assert archive.find_archive(tmp_path, run_id) is not None

    report = archive.archive_runs(instance, tmp_path, cutoff)  # the next pass finishes the job
    assert report.archived == [run_id]
    assert instance.get_run_by_id(run_id) is None
    assert sum(dagster_storage.leftovers(run_id).values()) == 0
    back = archive.read_archive(archive.find_archive(tmp_path, run_id))
    assert [dg.serialize_value(e) for e in back.events] == snapshot[1]
    assert len(list(tmp_path.rglob("*.jsonl.gz"))) == 1
    assert list(tmp_path.rglob("*.tmp")) == []


def test_damaged_archive_is_detected(instance, platform_env, tmp_path):
    (run_id,) = _run_jobs(instance, 1)
    path, _count = archive.export_run(instance, run_id, tmp_path)
    with gzip.open(path, "rt") as fh:
        lines = fh.read().splitlines()
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines[:-2] + lines[-1:]) + "\n")  # drop one event
    with pytest.raises(archive.ArchiveError, match="mismatch"):
        archive.read_archive(path)


def test_archive_job_and_cli_read_back(dagster_storage, platform_env, sqlite_store_url, tmp_path):
    instance = dagster_storage.instance
    old = _run_jobs(instance, 2)
    # Cutoffs taken after what they must cover has ended (not "now + 1 s": under load a run
    # takes longer than that, and the first archive run then was not old enough for the second).
    config = archive_config(tmp_path, sqlite_store_url, runs_cutoff=datetime.now(UTC).isoformat())
    job = defs.get_job_def("archive_run_history")
    result = job.execute_in_process(instance=instance, run_config=config)
    meta = step_metadata(result, "archive_old_runs")
    assert meta["archived"] == 2 and meta["done"] == 2
    assert all(instance.get_run_by_id(r) is None for r in old)
    assert [sum(dagster_storage.leftovers(r).values()) for r in old] == [0, 0]
    config = archive_config(tmp_path, sqlite_store_url, runs_cutoff=datetime.now(UTC).isoformat())
    second = job.execute_in_process(instance=instance, run_config=config)
    meta = step_metadata(second, "archive_old_runs")
    assert meta["archived"] == 1  # only the first archive run itself; the old ones are gone
    assert len(list(tmp_path.rglob("*.jsonl.gz"))) == 3

    proc = subprocess.run(
        [*CLI, "archive", "show", old[0], "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"run {old[0]}  job bootstrap  status SUCCESS" in proc.stdout
    assert "STEP_SUCCESS [run_bootstrap]" in proc.stdout
    missing = subprocess.run(
        [*CLI, "archive", "show", "nope", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 1 and "No archive for run nope" in missing.stderr


def test_schedule_is_on_by_default_daily_at_0330_utc_for_runs_older_than_30_days():
    schedule = defs.get_schedule_def("archive_run_history_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 3 * * *", "UTC")
    tick_time = datetime(2026, 3, 1, 3, 30, tzinfo=UTC)
    context = dg.build_schedule_context(scheduled_execution_time=tick_time)
    (request,) = schedule.evaluate_tick(context).run_requests
    # The tick's run sets no cutoff: the op's default applies, 30 days before the run.
    assert "cutoff" not in (request.run_config.get("ops", {}).get("archive_old_runs") or {})
    assert ops.cutoff_of(ops.ArchiveConfig(), now=tick_time) == tick_time - timedelta(days=30)
