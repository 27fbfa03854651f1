"""Sensor cursor catch-up, orphaned batches, and a stopped run cancelling its commands."""

import time
from datetime import timedelta

import dagster as dg
import sqlalchemy as sa

from orchestration.commands import actions, dispatch, store
from orchestration.commands import models as m
from orchestration.commands.jobs import run_commands_job
from orchestration.commands.pool import CommandPool
from orchestration.commands.sensors import BATCH_TAG, command_dispatch_sensor, reap_orphans
from orchestration.commands.timeutil import minute_floor, utcnow
from resources.record_store import RecordStoreResource
from tests.commands.helpers import backdate_schedules, count_runs, engine_for, seed, simple_catalog


def test_sensor_after_two_hours_down_runs_the_latest_missed_slot_once(sqlite_store_url, instance):
    engine = engine_for(sqlite_store_url)
    seed(engine, simple_catalog("*/5 * * * *"))
    backdate_schedules(engine)
    cursor = (utcnow() - timedelta(hours=2)).isoformat()
    resources = {"record_store": RecordStoreResource(url=sqlite_store_url)}
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    tick = command_dispatch_sensor.evaluate_tick(ctx)
    assert count_runs(engine) == 1 and len(tick.run_requests) == 1
    with engine.connect() as conn:
        slot = conn.execute(sa.select(m.command_runs.c.slot)).scalar_one()
    now = minute_floor(utcnow())
    assert slot.minute % 5 == 0
    assert timedelta(0) <= now.replace(tzinfo=None) - slot < timedelta(minutes=5)
    assert tick.cursor is not None and tick.cursor > cursor


def test_orphaned_batch_of_a_finished_run_is_cancelled(sqlite_store_url, instance):
    engine = engine_for(sqlite_store_url)
    seed(engine, simple_catalog())
    orphan = actions.request_run(engine, "hello", "staging")
    fresh = actions.request_run(engine, "hello", "staging")
    old_key, new_key = "tick:20200101T000000:dead:0", f"tick:{utcnow():%Y%m%dT%H%M%S}:beef:0"
    with engine.begin() as conn:
        for run_id, key in ((orphan, old_key), (fresh, new_key)):
            conn.execute(
                m.command_runs.update()
                .where(m.command_runs.c.id == run_id)
                .values(status=m.QUEUED, batch_key=key)
            )
    for key in (old_key, new_key):
        instance.create_run_for_job(
            run_commands_job, tags={BATCH_TAG: key}, status=dg.DagsterRunStatus.FAILURE,
            run_config={"ops": {"plan_command_runs": {"config": {"command_run_ids": []}}}},
        )  # fmt: skip
    batches = dispatch.unlaunched_batches(engine)
    assert reap_orphans(instance, engine, batches, utcnow()) == 1
    assert store.get_run(engine, orphan)["status"] == m.CANCELLED
    assert store.get_run(engine, fresh)["status"] == m.QUEUED  # too young to judge
    assert list(batches) == [new_key]


def test_stopping_the_pool_cancels_running_commands(sqlite_store_url):
    engine = engine_for(sqlite_store_url)
    seed(engine, simple_catalog(command="sleep 30"))
    run_id = actions.request_run(engine, "hello", "staging", status=m.QUEUED)
    pool = CommandPool(engine, "dagster-run-x", grace_seconds=0.2)
    handle = pool.ensure(run_id)
    deadline = time.monotonic() + 10
    while handle.running is None and time.monotonic() < deadline:
        time.sleep(0.02)
    pool.shutdown(cancel=True)
    row = store.get_run(engine, run_id)
    assert row["status"] == m.CANCELLED
    assert row["dagster_run_id"] == "dagster-run-x"
    assert handle.future.result().result.duration_seconds < 5
