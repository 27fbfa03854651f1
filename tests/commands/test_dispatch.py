"""Dispatch ticks against the real record store (SQLite and PostgreSQL)."""

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from orchestration.commands import actions, dispatch
from orchestration.commands import models as m
from resources.record_store import make_engine
from tests.commands.helpers import (
    T0,
    backdate_schedules,
    count_runs,
    seed,
    simple_catalog,
)


def _tick(engine, now, window_start=None):
    return dispatch.tick(engine, now, window_start or now - timedelta(seconds=60))


def test_one_run_per_slot_under_repeated_ticks(engine):
    seed(engine, simple_catalog("34 12 * * *"))
    backdate_schedules(engine)
    first = _tick(engine, T0 + timedelta(seconds=5))
    for seconds in (5, 20, 59):  # re-evaluated ticks over the same window
        again = _tick(engine, T0 + timedelta(seconds=seconds), T0 - timedelta(seconds=55))
        assert again.created == 0
    assert first.created == 1
    assert count_runs(engine) == 1
    (ids,) = first.batches.values()
    assert count_runs(engine, status=m.QUEUED, id=ids[0]) == 1
    # still queued: the same batch is requested again (Dagster's run_key drops the duplicate)
    assert _tick(engine, T0 + timedelta(seconds=30)).batches == first.batches
    assert _tick(engine, T0 + timedelta(minutes=1, seconds=5)).created == 0  # 12:35: not due


@pytest.mark.parametrize("disabled", ["command", "schedule", "environment"])
def test_disabled_parts_are_never_dispatched(engine, disabled):
    data = simple_catalog("* * * * *")
    key = {"command": "commands", "schedule": "schedules", "environment": "environments"}
    data[key[disabled]][0]["enabled"] = False
    seed(engine, data)
    backdate_schedules(engine)
    result = _tick(engine, T0 + timedelta(seconds=1))
    assert (result.created, result.batches) == (0, {})
    assert count_runs(engine) == 0


def test_downtime_runs_only_the_latest_missed_slot(engine):
    seed(engine, simple_catalog("*/5 * * * *"))
    backdate_schedules(engine)
    cursor = (T0 - timedelta(hours=2)).isoformat()
    start = dispatch.window_start_for(cursor, T0, timedelta(hours=24))
    result = dispatch.tick(engine, T0 + timedelta(seconds=10), start)
    assert result.created == 1
    with engine.connect() as conn:
        slot = conn.execute(sa.select(m.command_runs.c.slot)).scalar_one()
    assert slot.replace(tzinfo=None) == T0.replace(minute=30, tzinfo=None)


def test_a_new_schedule_never_runs_a_slot_from_before_it_existed(sqlite_store_url):
    engine = make_engine(sqlite_store_url)
    seed(engine, simple_catalog("*/5 * * * *"))  # created "now" (2026), far after T0
    start = dispatch.window_start_for((T0 - timedelta(hours=1)).isoformat(), T0, timedelta(1))
    assert dispatch.tick(engine, T0, start).created == 0


def test_run_in_is_launched_by_the_first_tick_after_it_is_due(engine):
    seed(engine, simple_catalog())
    run_id = actions.request_run(engine, "hello", "staging", in_seconds=120)
    now = dispatch.utcnow()
    assert _tick(engine, now).batches == {}
    later = _tick(engine, now + timedelta(seconds=121))
    assert list(later.batches.values()) == [[run_id]]
    with pytest.raises(actions.ActionError, match="unknown environment 'nope'"):
        actions.request_run(engine, "hello", "nope")


@pytest.mark.postgres
def test_two_concurrent_dispatchers_on_postgres_create_and_claim_once(pg_store_url):
    setup = make_engine(pg_store_url)
    data = simple_catalog("* * * * *")
    data["schedules"] = [
        {"name": f"s{i}", "command": "hello", "environments": ["staging"], "cron": "* * * * *"}
        for i in range(200)
    ]
    seed(setup, data)
    backdate_schedules(setup)
    now = T0 + timedelta(seconds=3)
    results, errors = [], []
    barrier = threading.Barrier(4)

    def dispatcher() -> None:
        engine = make_engine(pg_store_url)  # its own pool: a second daemon
        try:
            barrier.wait()
            results.append(_tick(engine, now))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=dispatcher) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(r.created for r in results) == 200
    assert count_runs(setup) == 200
    with setup.connect() as conn:
        keys = conn.execute(
            sa.select(m.command_runs.c.batch_key, sa.func.count()).group_by(
                m.command_runs.c.batch_key
            )
        ).all()
    assert sum(n for _, n in keys) == 200 and all(k for k, _ in keys)
