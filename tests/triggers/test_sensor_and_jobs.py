"""Real sensor/schedule evaluation and real job runs against a real Dagster instance."""

import json
from datetime import UTC, datetime

import dagster as dg
import pytest

from dev.seed import seed_alerts, seed_traces
from orchestration.definitions import defs
from orchestration.triggers.catalog import ESCALATE_ALERTS
from orchestration.triggers.jobs import build_worker_job
from orchestration.triggers.models import alerts
from orchestration.triggers.runs import (
    TRIGGER_TAG,
    UNFINISHED_RUN_STATUSES,
    in_flight_ids,
    run_tags,
)
from orchestration.triggers.scan import scan
from orchestration.triggers.sensors import build_sensor
from orchestration.triggers.spec import TriggerSpec, older_than
from resources.record_store import RecordStoreResource
from tests.support.results import step_metadata
from tests.support.runs import queued_instance, queued_run
from tests.support.webhook import WebhookReceiver
from tests.triggers.helpers import alert_states

REPO_DEF = defs.get_repository_def()


def _small_spec(**kw) -> TriggerSpec:
    base = dict(
        name="escalate_alerts",
        table=alerts,
        where={"state": "pending", "created_at": older_than(minutes=30)},
        action=ESCALATE_ALERTS.action,
        batch_size=3,
        max_per_tick=5,
    )
    return TriggerSpec(**{**base, **kw})


def _tick(sensor, instance, store_url, cursor=None):
    with dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"record_store": RecordStoreResource(url=store_url)},
    ) as ctx:
        return sensor.evaluate_tick(ctx)


def test_sensor_batches_bounded_keyset_scan_with_cursor(instance, sqlite_store_url, engine=None):
    from resources.record_store import make_engine

    eng = make_engine(sqlite_store_url)
    seed_alerts(eng, due=7, fresh=2)
    spec = _small_spec()
    sensor = build_sensor(spec, build_worker_job(spec), "escalate_alerts_worker")
    first = _tick(sensor, instance, sqlite_store_url)
    ids = [
        r.run_config["ops"]["escalate_alerts_worker"]["config"]["record_ids"]
        for r in first.run_requests
    ]
    assert ids == [[1, 2, 3], [4, 5]]  # max_per_tick 5, batches of 3, never one run per record
    assert json.loads(first.cursor) == {"*": {"after": 5, "pass": 0}}
    assert all(r.tags[TRIGGER_TAG] == "escalate_alerts" for r in first.run_requests)
    assert len({r.run_key for r in first.run_requests}) == 2
    again = _tick(sensor, instance, sqlite_store_url)  # re-evaluated tick: same run keys
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]
    second = _tick(sensor, instance, sqlite_store_url, first.cursor)
    ids2 = [
        r.run_config["ops"]["escalate_alerts_worker"]["config"]["record_ids"]
        for r in second.run_requests
    ]
    assert ids2 == [[6, 7]]
    assert json.loads(second.cursor) == {"*": {"after": 0, "pass": 1}}  # wrapped: new pass
    eng.dispose()


def test_trigger_once_holds_while_a_run_is_in_flight(instance, sqlite_store_url):
    from resources.record_store import make_engine

    eng = make_engine(sqlite_store_url)
    seed_alerts(eng, due=4)
    for once, expected in ((True, []), (False, [[1, 2, 3], [4]])):
        spec = _small_spec(trigger_once=once)
        job = build_worker_job(spec)
        sensor = build_sensor(spec, job, "escalate_alerts_worker")
        first = _tick(sensor, instance, sqlite_store_url)
        if once:
            for req in first.run_requests:  # the runs exist and have not finished
                instance.create_run_for_job(
                    job,
                    run_config=req.run_config,
                    tags=req.tags,
                    status=dg.DagsterRunStatus.STARTED,
                )
        second = _tick(sensor, instance, sqlite_store_url, first.cursor)
        got = [
            r.run_config["ops"]["escalate_alerts_worker"]["config"]["record_ids"]
            for r in second.run_requests
        ]
        assert got == expected
        assert {r.run_key for r in second.run_requests}.isdisjoint(
            {r.run_key for r in first.run_requests}
        )
    eng.dispose()


def test_unfinished_run_statuses_are_dagsters_not_finished_statuses():
    """Named by public ``dg.DagsterRunStatus`` members; a Dagster upgrade that adds an
    unfinished status fails here (the private list is named in this test only)."""
    from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

    assert len(set(UNFINISHED_RUN_STATUSES)) == len(UNFINISHED_RUN_STATUSES)
    assert set(UNFINISHED_RUN_STATUSES) == set(NOT_FINISHED_STATUSES)


@pytest.mark.parametrize("status", list(dg.DagsterRunStatus), ids=lambda s: s.value)
def test_in_flight_ids_are_the_ids_of_unfinished_runs_only(status):
    spec = _small_spec(trigger_once=True)
    job = build_worker_job(spec)
    config = {"ops": {"escalate_alerts_worker": {"config": {"record_ids": [7, 8]}}}}
    with queued_instance() as instance:
        if status == dg.DagsterRunStatus.QUEUED:  # as the coordinator queues a sensor's run
            queued_run(instance, job, config, run_tags(spec))
        else:
            instance.create_run_for_job(job, run_config=config, tags=run_tags(spec), status=status)
        got = in_flight_ids(instance, spec, "escalate_alerts_worker")
    assert got == ({7, 8} if status in UNFINISHED_RUN_STATUSES else set())


def test_tenants_tag_runs_and_keep_a_cursor_each(instance, sqlite_store_url):
    from resources.record_store import make_engine

    eng = make_engine(sqlite_store_url)
    seed_alerts(eng, due=6, tenants=2)
    spec = _small_spec(
        tenants=lambda conn: ["tenant-0", "tenant-1"], tenant_column="tenant_id", max_per_tick=10
    )
    with eng.connect() as conn:
        found = scan(spec, conn, None)
    assert [(b.tenant, b.ids) for b in found.batches] == [
        ("tenant-0", [1, 3, 5]),
        ("tenant-1", [2, 4, 6]),
    ]
    sensor = build_sensor(spec, build_worker_job(spec), "escalate_alerts_worker")
    result = _tick(sensor, instance, sqlite_store_url)
    assert [r.tags["platform/tenant"] for r in result.run_requests] == ["tenant-0", "tenant-1"]
    assert set(json.loads(result.cursor)) == {"tenant-0", "tenant-1"}
    eng.dispose()


def test_escalate_job_runs_from_launchpad_config_and_is_idempotent(instance, store_url):
    from resources.record_store import make_engine

    eng = make_engine(store_url)
    seed_alerts(eng, due=3, fresh=1)
    job = REPO_DEF.get_job("escalate_alerts")
    with WebhookReceiver() as hook:
        resources = {"record_store": RecordStoreResource(url=store_url)}
        config = {
            "ops": {"escalate_alerts_worker": {"config": {"record_ids": [1, 2, 3, 4]}}},
            "resources": {"triggers_notifier": {"config": {"webhook_url": hook.url}}},
        }
        runs = [
            job.execute_in_process(run_config=config, instance=instance, resources=resources)
            for _ in range(2)
        ]
        keys = hook.key_counts()
    assert all(r.success for r in runs)
    meta = step_metadata(runs[0], "escalate_alerts_worker")
    assert meta["succeeded"] == 3 and meta["skipped"] == 1
    assert keys == {f"escalate_alerts:{i}": 1 for i in (1, 2, 3)}  # twice = once
    assert [alert_states(eng)[i] for i in (1, 2, 3, 4)] == ["escalated"] * 3 + ["pending"]
    assert runs[0].dagster_run.tags["platform/trigger-actor"] == "system:alert-escalation"
    eng.dispose()


def test_trace_summary_schedule_and_asset_materialization(instance, sqlite_store_url):
    from resources.record_store import make_engine

    eng = make_engine(sqlite_store_url)
    seed_traces(eng, stale=3, fresh=2)
    schedule = REPO_DEF.get_schedule_def("refresh_trace_summaries_schedule")
    when = datetime(2026, 3, 2, 10, 5, tzinfo=UTC)
    with dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=when,
        resources={"record_store": RecordStoreResource(url=sqlite_store_url)},
    ) as ctx:
        data = schedule.evaluate_tick(ctx)
    (req,) = data.run_requests
    assert req.run_config == {"ops": {"trace_summaries": {"config": {"record_ids": [1, 2, 3]}}}}
    assert f"p{int(when.timestamp())}" in req.run_key
    job = REPO_DEF.get_job("refresh_trace_summaries")
    res = job.execute_in_process(
        run_config=req.run_config,
        instance=instance,
        tags=req.tags,
        resources={"record_store": RecordStoreResource(url=sqlite_store_url)},
    )
    assert res.success
    mat = instance.get_latest_materialization_event(
        dg.AssetKey("trace_summaries")
    ).asset_materialization
    assert mat.metadata["refreshed_trace_ids"].value == [1, 2, 3]
    assert mat.metadata["refreshed_count"].value == 3
    eng.dispose()


@pytest.mark.parametrize(
    "job_name",
    [
        "escalate_alerts",
        "expire_packages",
        "refresh_trace_summaries",
        "deliver_trigger_notifications",
    ],
)
def test_every_trigger_job_is_in_the_code_location(job_name):
    """In the code location as built: the node that takes the run's config, and the tags the
    run coordinator's queue limits and the run list filter on (not just a description)."""
    from orchestration.triggers.catalog import TRIGGERS
    from orchestration.triggers.jobs import TRIGGER_JOBS

    job = REPO_DEF.get_job(job_name)
    nodes = [n.name for n in job.graph.nodes]
    if job_name in TRIGGERS:
        spec = TRIGGERS[job_name]
        assert nodes == [TRIGGER_JOBS[job_name][1]]
        assert job.description == spec.description
        assert run_tags(spec).items() <= job.tags.items()
        assert job.tags["platform/trigger-queue"] == spec.queue
    else:
        assert nodes == [f"{job_name}_action"]
        assert job.tags["platform/kind"] == "scheduled_action"
        assert "platform/trigger-queue" not in job.tags  # a sweep is not held by a trigger queue


def test_worker_reports_monotonic_progress_per_committed_chunk(instance, store_url):
    """One progress line per committed chunk (done/total, rate, ETA), done never going back."""
    import re

    from resources.record_store import make_engine

    eng = make_engine(store_url)
    seed_alerts(eng, due=1200)
    eng.dispose()
    job = REPO_DEF.get_job("escalate_alerts")
    config = {"ops": {"escalate_alerts_worker": {"config": {"record_ids": list(range(1, 1201))}}}}
    res = job.execute_in_process(
        run_config=config,
        instance=instance,
        resources={"record_store": RecordStoreResource(url=store_url)},
    )
    assert res.success
    lines = [
        e.message
        for e in instance.all_logs(res.run_id)
        if e.message and e.message.startswith("trigger escalate_alerts: ") and "ETA" in e.message
    ]
    done = [int(re.search(r": (\d+)/1200 ", line).group(1)) for line in lines]
    # A line per committed chunk: the Python path (SQLite) commits every 500 records, the
    # one-statement path (PostgreSQL) all 1,200 at once (its chunk is 5,000).
    assert done == ([500, 1000, 1200] if "sqlite" in store_url else [1200]), lines
    meta = step_metadata(res, "escalate_alerts_worker")
    assert meta["succeeded"] == 1200 and meta["rate_per_second"] > 0
