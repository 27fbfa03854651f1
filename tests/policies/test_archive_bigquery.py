"""The archive's BigQuery sink against the real emulator: loaded, counted, never duplicated."""

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from orchestration.definitions import defs
from orchestration.policies import record_archive
from orchestration.policies.bigquery_sink import BigQuerySink
from resources.db import make_engine
from tests.conftest import run_config
from tests.policies.record_seed import CUTOFF, seed_command_runs, seed_history, spec
from tests.policies.test_archive_job import archive_config, step_metadata


def _rows(client, dataset, source):
    query = (
        f"SELECT key, payload FROM `{client.project}.{dataset}.archive_records` "
        f"WHERE source = '{source}' ORDER BY key"
    )
    return [(r["key"], json.loads(r["payload"])) for r in client.query(query).result()]


@pytest.fixture
def dataset():
    return f"archive_{uuid.uuid4().hex[:10]}"


def test_job_loads_runs_and_records_into_bigquery(
    bq_env, bq_client, dataset, instance, platform_env, sqlite_store_url, tmp_path
):
    engine = make_engine(sqlite_store_url)
    history = seed_history(engine, old=4, new=1)
    runs = seed_command_runs(engine)
    (old_run,) = [
        defs.get_job_def("bootstrap").execute_in_process(instance=instance, run_config=run_config())
    ]
    cutoff = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    config = archive_config(
        tmp_path, sqlite_store_url, runs_cutoff=cutoff, bigquery_dataset=dataset, batch_size=3
    )
    result = defs.get_job_def("archive_run_history").execute_in_process(
        instance=instance, run_config=config
    )
    assert result.success
    assert step_metadata(result, "archive_old_records")["bigquery_rows"] == 4 + len(runs["old"])
    assert step_metadata(result, "archive_old_runs")["bigquery_rows"] == 1

    in_bq = _rows(bq_client, dataset, "trigger_history")
    files = list(record_archive.read_records(tmp_path, "trigger_history"))
    assert sorted(int(k) for k, _ in in_bq) == sorted(history["old"])
    assert sorted((p for _, p in in_bq), key=lambda r: r["id"]) == files
    commands = _rows(bq_client, dataset, "command_runs")
    assert sorted(int(k) for k, _ in commands) == sorted(runs["old"])
    assert all(p["command_run_events"] for _, p in commands if p["status"] != "cancelled")
    ((key, run_payload),) = _rows(bq_client, dataset, "dagster_runs")
    assert key == old_run.run_id and run_payload["events"]
    assert instance.get_run_by_id(old_run.run_id) is None
    engine.dispose()


def test_crash_after_bigquery_load_reruns_without_duplicates(
    bq_env, bq_client, dataset, sqlite_store_url, tmp_path
):
    engine = make_engine(sqlite_store_url)
    history = seed_history(engine, old=5, new=0)
    sink = BigQuerySink(bq_client, dataset)

    def crash(_pending):
        raise KeyboardInterrupt("killed after the BigQuery load, before the delete")

    with pytest.raises(KeyboardInterrupt):
        record_archive.archive_table(
            engine, tmp_path, spec("trigger_history"), CUTOFF, sink=sink, after_export=crash
        )
    assert len(_rows(bq_client, dataset, "trigger_history")) == 5
    report = record_archive.archive_table(
        engine, tmp_path, spec("trigger_history"), CUTOFF, sink=BigQuerySink(bq_client, dataset)
    )
    assert report.resumed == 1 and report.archived == 5
    keys = [int(k) for k, _ in _rows(bq_client, dataset, "trigger_history")]
    assert sorted(keys) == sorted(history["old"])  # each once
    engine.dispose()


def test_partial_bigquery_batch_is_replaced_not_doubled(bq_env, bq_client, dataset):
    sink = BigQuerySink(bq_client, dataset)
    rows = [{"id": i, "finished_at": "2026-01-01T00:00:00+00:00", "v": i} for i in range(1, 5)]
    sink.load("t", rows[:2])  # as if a streaming insert had half failed
    sink.load("t", rows)
    assert [int(k) for k, _ in _rows(bq_client, dataset, "t")] == [1, 2, 3, 4]
    assert sink.count("t", ["1", "2", "3", "4", "5"]) == 4


def test_document_larger_than_a_streamed_row_is_stored_in_parts_and_reads_back(
    bq_env, bq_client, dataset
):
    """A run whose event log makes a 12 MB document (BigQuery refuses streamed rows over 10 MB)."""
    from orchestration.policies import bigquery_sink

    sink = BigQuerySink(bq_client, dataset)
    events = [{"storage_id": i, "entry": f"event {i} " + "x" * 1000} for i in range(12_000)]
    big = {"id": "run-big", "finished_at": "2026-01-01T00:00:00+00:00", "events": events}
    small = {"id": "run-small", "finished_at": "2026-01-01T00:00:00+00:00", "events": []}
    size = len(json.dumps(big))
    parts = -(-size // bigquery_sink.PART_BYTES)
    assert size > 10_000_000 and parts > 1

    sink.load("dagster_runs", [big, small])
    sink.load("dagster_runs", [big, small])  # a re-run after a crash: nothing doubled
    query = (
        f"SELECT key, LENGTH(payload) AS n FROM `{bq_client.project}.{dataset}.archive_records` "
        "WHERE source = 'dagster_runs' ORDER BY key"
    )
    stored = {r["key"]: r["n"] for r in bq_client.query(query).result()}
    assert sorted(stored) == sorted(
        [f"run-big:{n}/{parts}" for n in range(1, parts + 1)] + ["run-small"]
    )
    assert max(stored.values()) <= bigquery_sink.PART_BYTES
    assert sink.read_back("dagster_runs", "run-big") == big
    assert sink.read_back("dagster_runs", "run-small") == small
    assert sink.read_back("dagster_runs", "run") is None
    assert sink.rows_loaded == 2
