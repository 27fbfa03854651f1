"""The daily archive job on a real instance and record store: runs and history rows, progress."""

import re
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from orchestration.commands import models as cm
from orchestration.definitions import defs
from orchestration.policies import record_archive
from resources.db import make_engine
from tests.conftest import run_config
from tests.policies.record_seed import seed_command_runs, seed_history
from tests.support.results import step_metadata

PROGRESS = re.compile(r"^(archive(?: records)?): (\d+)/(\d+) \(")


def archive_config(tmp_path, store_url, runs_cutoff=None, **extra) -> dict:
    runs = {"archive_dir": str(tmp_path), **extra}
    if runs_cutoff:
        runs["cutoff"] = runs_cutoff
    return {
        "ops": {
            "archive_old_runs": {"config": runs},
            "archive_old_records": {"config": {"archive_dir": str(tmp_path), **extra}},
        },
        "resources": {"record_store": {"config": {"url": store_url}}},
    }


def progress_lines(instance, run_id) -> dict[str, list[tuple[int, int]]]:
    lines: dict[str, list[tuple[int, int]]] = {}
    for entry in instance.all_logs(run_id):
        match = PROGRESS.match(entry.user_message or "")
        if match:
            lines.setdefault(match[1], []).append((int(match[2]), int(match[3])))
    return lines


def assert_monotonic_to_total(points: list[tuple[int, int]]) -> None:
    done = [d for d, _ in points]
    assert points, "no progress events"
    assert done == sorted(done), f"done counts went backwards: {done}"
    assert len({t for _, t in points}) == 1 and done[-1] == points[-1][1]


def test_job_archives_runs_and_old_records_with_monotonic_progress(
    dagster_storage, platform_env, sqlite_store_url, tmp_path
):
    """On both Dagster storages: the progress lines are read back from the run's event log."""
    instance = dagster_storage.instance
    engine = make_engine(sqlite_store_url)
    history = seed_history(engine, old=5, new=2)
    runs = seed_command_runs(engine)
    old_runs = [
        defs.get_job_def("bootstrap").execute_in_process(instance=instance, run_config=run_config())
        for _ in range(2)
    ]
    cutoff = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    result = defs.get_job_def("archive_run_history").execute_in_process(
        instance=instance,
        run_config=archive_config(tmp_path, sqlite_store_url, runs_cutoff=cutoff, batch_size=2),
    )
    assert result.success
    assert all(instance.get_run_by_id(r.run_id) is None for r in old_runs)
    records = step_metadata(result, "archive_old_records")
    assert records["archived"] == 5 + len(runs["old"])
    assert records["tables"]["trigger_history"]["files"] == 3  # 5 rows, batches of 2
    assert records["tables"]["command_runs"]["held_for_next_pass"] == 1
    with engine.connect() as conn:
        left = {r[0] for r in conn.execute(sa.select(cm.command_runs.c.id))}
    assert left == set(runs["inflight"] + runs["new"] + runs["held"])
    back = [r["id"] for r in record_archive.read_records(tmp_path, "trigger_history")]
    assert back == sorted(history["old"])

    lines = progress_lines(instance, result.run_id)
    assert set(lines) == {"archive", "archive records"}
    assert_monotonic_to_total(lines["archive"])
    assert lines["archive"][-1] == (2, 2)
    assert_monotonic_to_total(lines["archive records"])
    assert lines["archive records"][-1][0] == 5 + len(runs["old"]) + 1  # + the held run
    engine.dispose()


def test_cli_reads_archived_records_back(sqlite_store_url, tmp_path, capsys):
    import json

    from orchestration.cli import main
    from tests.policies.record_seed import CUTOFF

    engine = make_engine(sqlite_store_url)
    history = seed_history(engine, old=3, new=1)
    record_archive.archive_records(engine, tmp_path, CUTOFF)
    wanted = sorted(history["old"])[1]
    assert (
        main(["archive", "records", "trigger_history", "--id", str(wanted), "--dir", str(tmp_path)])
        == 0
    )
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["id"] == wanted and json.loads(line)["trigger"] == "escalate"
    assert main(["archive", "records", "command_runs", "--dir", str(tmp_path)]) == 1
    assert "No archived command_runs rows" in capsys.readouterr().err
    engine.dispose()
