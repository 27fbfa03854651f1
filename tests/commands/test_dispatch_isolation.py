"""One bad schedule never stops the tick: the others dispatch and the reaper runs (issue #14, 5).

Bad rows are written straight into the record store (as an older release, a hand edit or a
restore could leave them), bypassing catalog validation; the real sensor then ticks on a real
Dagster instance against SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from orchestration.commands import actions, reaper, store
from orchestration.commands import models as m
from orchestration.commands.jobs import run_command_now_job
from orchestration.commands.sensors import command_dispatch_sensor
from orchestration.commands.timeutil import utcnow
from resources.record_store import RecordStoreResource, ensure_upgraded, make_engine
from tests.commands.helpers import backdate_schedules, count_runs, seed

GOOD = ("good-a", "good-b")
# Crons that a validation-free path could leave in the table; each must fail only its schedule.
BAD_CRONS = {
    "never-feb-30": ["0 0 30 2 *"],
    "never-apr-31": ["0 0 31 4 *"],
    "garbage": ["not a cron at all"],
    "six-fields": ["* * * * * *"],
    "hashed": ["H * * * *"],
    "half-bad": ["* * * * *", "0 0 31 11 *"],  # a good cron beside a bad one: none of it runs
}


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self, level: int = logging.DEBUG) -> str:
        return "\n".join(r.getMessage() for r in self.records if r.levelno >= level)


def _catalog() -> dict:
    return {
        "environments": [{"name": "staging"}],
        "commands": [{"name": "hello", "command": "true", "timeout_seconds": 30}],
        "schedules": [
            {"name": n, "command": "hello", "environments": ["staging"], "cron": "* * * * *"}
            for n in GOOD
        ],
    }


def _insert_bad_schedules(engine: sa.Engine) -> dict[str, int]:
    now = utcnow()
    ids = {}
    with engine.begin() as conn:
        cmd = conn.execute(sa.select(m.commands.c.id)).scalar_one()
        env = conn.execute(sa.select(m.environments.c.id)).scalar_one()
        for name, crons in BAD_CRONS.items():
            sid = conn.execute(
                m.schedules.insert().values(
                    name=name, command_id=cmd, enabled=True, created_at=now, updated_at=now
                )
            ).inserted_primary_key[0]
            conn.execute(
                m.schedule_crons.insert(), [{"schedule_id": sid, "cron": c} for c in crons]
            )
            conn.execute(
                m.schedule_environments.insert().values(schedule_id=sid, environment_id=env)
            )
            ids[name] = sid
    return ids


def _dead_worker(engine: sa.Engine, instance: dg.DagsterInstance) -> int:
    """A command run whose Dagster run FAILED and whose heartbeat is stale: the reaper's case."""
    dagster_run = instance.create_run_for_job(
        run_command_now_job, status=dg.DagsterRunStatus.FAILURE,
        run_config={"ops": {"request_command_run": {"config": {
            "command": "hello", "environment": "staging"}}}},
    )  # fmt: skip
    run_id = actions.request_run(engine, "hello", "staging", status=m.QUEUED)
    assert store.claim_start(engine, run_id, dagster_run.run_id)
    stale = utcnow() - reaper.STALE_AFTER - timedelta(seconds=5)
    with engine.begin() as conn:
        conn.execute(
            m.command_runs.update().where(m.command_runs.c.id == run_id).values(heartbeat_at=stale)
        )
    return run_id


def _runs_per_schedule(engine: sa.Engine) -> dict[str, int]:
    t, s = m.command_runs, m.schedules
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(s.c.name, sa.func.count(t.c.id))
            .select_from(s.outerjoin(t, t.c.schedule_id == s.c.id))
            .group_by(s.c.name)
        ).all()
    return dict(rows)


def _tick(store_url: str, instance: dg.DagsterInstance) -> tuple[dg.SensorResult, _Lines]:
    resources = {"record_store": RecordStoreResource(url=store_url)}
    cursor = (utcnow() - timedelta(minutes=2)).isoformat()
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    lines = _Lines()
    ctx.log.addHandler(lines)
    return command_dispatch_sensor.evaluate_tick(ctx), lines


def _fail_inserts_for(engine: sa.Engine, schedule_id: int) -> None:
    """A real database trigger that refuses command runs of one schedule (an insert-stage error)."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_one BEFORE INSERT ON command_runs "
                f"WHEN NEW.schedule_id = {schedule_id} "
                "BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.schedule_id = {schedule_id} THEN "
                "RAISE EXCEPTION 'refused by test trigger'; END IF; RETURN NEW; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_one BEFORE INSERT ON command_runs "
                "FOR EACH ROW EXECUTE FUNCTION refuse_one()"
            )


def test_bad_schedules_are_named_and_the_rest_of_the_tick_goes_on(store_url, engine, instance):
    seed(engine, _catalog())
    bad = _insert_bad_schedules(engine)
    backdate_schedules(engine)
    dead = _dead_worker(engine, instance)

    result, lines = _tick(store_url, instance)

    per_schedule = _runs_per_schedule(engine)
    assert {n: per_schedule[n] for n in GOOD} == dict.fromkeys(GOOD, 1)
    assert {n: per_schedule[n] for n in bad} == dict.fromkeys(bad, 0)
    assert sum(len(r.run_config["ops"]["plan_command_runs"]["config"]["command_run_ids"])
               for r in result.run_requests) == len(GOOD)  # fmt: skip
    assert store.get_run(engine, dead)["status"] == m.LOST  # the reaper ran in the same tick
    errors = lines.text(logging.ERROR)
    for name, crons in BAD_CRONS.items():
        bad_cron = crons[-1]
        assert f"schedule {name!r} (id {bad[name]}) skipped this tick: cron {bad_cron!r}" in errors
    assert f"{len(BAD_CRONS)} schedule(s) skipped" in lines.text()
    # the next tick still works and still names them (nothing was left half-done)
    _, again = _tick(store_url, instance)
    assert "never-feb-30" in again.text(logging.ERROR)
    assert {n: _runs_per_schedule(engine)[n] for n in GOOD} == dict.fromkeys(GOOD, 1)


def test_a_schedule_whose_run_cannot_be_inserted_fails_alone(store_url, engine, instance):
    data = _catalog()
    data["schedules"].append(
        {"name": "refused", "command": "hello", "environments": ["staging"], "cron": "* * * * *"}
    )
    seed(engine, data)
    backdate_schedules(engine)
    with engine.connect() as conn:
        refused = conn.execute(
            sa.select(m.schedules.c.id).where(m.schedules.c.name == "refused")
        ).scalar_one()
    _fail_inserts_for(engine, refused)
    dead = _dead_worker(engine, instance)

    result, lines = _tick(store_url, instance)

    per_schedule = _runs_per_schedule(engine)
    assert per_schedule == {**dict.fromkeys(GOOD, 1), "refused": 0}
    assert len(result.run_requests) == 1
    assert store.get_run(engine, dead)["status"] == m.LOST
    assert "schedule 'refused'" in lines.text(logging.ERROR)
    assert "refused by test trigger" in lines.text(logging.ERROR)


def test_the_reaper_runs_even_when_the_whole_dispatch_fails(store_url, engine, instance):
    seed(engine, _catalog())
    dead = _dead_worker(engine, instance)
    with engine.begin() as conn:  # the dispatch query itself now fails, every schedule at once
        conn.execute(sa.text("DROP TABLE schedule_crons"))
    with pytest.raises(Exception, match="schedule_crons"):
        _tick(store_url, instance)
    assert store.get_run(engine, dead)["status"] == m.LOST


# -- one bad stored value (any column the tick reads) fails only its schedule --------------------

# Every column of every table the tick reads for a schedule, with its key. The tick needs the
# ones in READ; a bad value elsewhere (names, texts, timeouts) does not stop it dispatching.
COLUMNS = {
    "schedules": ["name", "command_id", "enabled", "created_at", "updated_at"],
    "commands": ["name", "command", "use_shell", "enabled", "timeout_seconds", "working_dir",
                 "description", "updated_at"],
    "environments": ["name", "enabled", "updated_at"],
    "schedule_environments": ["environment_id"],
    "schedule_crons": ["cron"],
}  # fmt: skip
READ = {
    "schedules.command_id", "schedules.enabled", "schedules.created_at", "commands.enabled",
    "environments.enabled", "schedule_environments.environment_id", "schedule_crons.cron",
}  # fmt: skip
# A value of the wrong type for every column (SQLite keeps any value anywhere).
GARBAGE = ["garbage", b"\x00\xff", 1.5, -7, "", "yes", "2026-13-45 99:99:99"]


def _catalog_with_bad() -> dict:
    data = _catalog()
    data["environments"].append({"name": "bad-env"})
    data["commands"].append({"name": "bad-cmd", "command": "true", "timeout_seconds": 30})
    data["schedules"].append(
        {"name": "bad", "command": "bad-cmd", "environments": ["bad-env"], "cron": "* * * * *"}
    )
    return data


def _damage(engine: sa.Engine, table: str, column: str, value: object) -> int:
    """Write ``value`` into ``table.column`` of the bad schedule's own rows; its schedule id."""
    with engine.begin() as conn:
        sid = conn.execute(sa.select(m.schedules.c.id).where(m.schedules.c.name == "bad")).scalar()
        where = {
            "schedules": f"id = {sid}",
            "commands": "name = 'bad-cmd'",
            "environments": "name = 'bad-env'",
            "schedule_environments": f"schedule_id = {sid}",
            "schedule_crons": f"schedule_id = {sid}",
        }[table]
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"UPDATE {table} SET {column} = %s WHERE {where}", (value,))
            return sid
    # As the sqlite3 shell (or another tool) writes: no foreign-key checks, any type anywhere.
    raw = sqlite3.connect(engine.url.database)
    try:
        raw.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", (value,))
        raw.commit()
    finally:
        raw.close()
    return sid


def _check_isolated(engine, instance, url, table, column, value) -> None:
    seed(engine, _catalog_with_bad())
    backdate_schedules(engine)
    sid = _damage(engine, table, column, value)
    dead = _dead_worker(engine, instance)
    case = f"{table}.{column} = {value!r}"

    result, lines = _tick(url, instance)

    per_schedule = _runs_per_schedule(engine)
    assert {n: per_schedule[n] for n in GOOD} == dict.fromkeys(GOOD, 1), case
    bad_runs = count_runs(engine, schedule_id=sid)  # by id: its name may be the damaged value
    assert store.get_run(engine, dead)["status"] == m.LOST, case  # the reaper ran
    errors = lines.text(logging.ERROR)
    if f"{table}.{column}" in READ:
        assert bad_runs == 0, case
        named = [f"bad value in {table}.{column}"] + (["cron"] if column == "cron" else [])
        assert any(f"(id {sid}) skipped this tick: {n}" in errors for n in named), (case, errors)
        assert "1 schedule(s) skipped" in lines.text(), case
    else:  # not needed to dispatch: the schedule runs (its run checks what it needs)
        assert bad_runs == 1, (case, errors)
    assert len(result.run_requests) == 1, case


def test_a_bad_value_in_any_column_fails_only_its_schedule_sqlite(tmp_path, instance):
    """Every column the tick reads, every wrong-typed value, on SQLite (the default store).
    Before the fix a bad created_at raised for the whole tick (no schedule ran) and a bad
    enabled silently never ran."""
    for table, columns in COLUMNS.items():
        for column in columns:
            for index, value in enumerate(GARBAGE):
                url = f"sqlite:///{tmp_path / f'{table}-{column}-{index}.sqlite'}"
                ensure_upgraded(url)
                _check_isolated(make_engine(url), instance, url, table, column, value)


# What PostgreSQL's types let through and its driver cannot read back (or the tick cannot use).
PG_SHAPES = {
    "created_at": ["infinity", "-infinity", "0001-01-01 00:00:00+00 BC"],
    "updated_at": ["infinity", "-infinity", "0001-01-01 00:00:00+00 BC"],
}


def test_a_bad_value_postgres_allows_fails_only_its_schedule(pg_schema_url, instance):
    ensure_upgraded(pg_schema_url)
    engine = make_engine(pg_schema_url)
    for column, values in PG_SHAPES.items():
        for value in values:
            with engine.begin() as conn:  # each case on a clean catalog
                for table in ("command_run_events", "command_runs", "schedule_crons",
                              "schedule_environments", "schedules", "variables", "commands",
                              "environments"):  # fmt: skip
                    conn.execute(sa.text(f"DELETE FROM {table}"))
            _check_isolated(engine, instance, pg_schema_url, "schedules", column, value)
