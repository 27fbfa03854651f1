"""``dagster-daemon run`` unattended on a real instance, SQLite and PostgreSQL Dagster storage.

The daemon loads the production code location (``orchestration.definitions``) from a temp
DAGSTER_HOME written by ``platform-ops home [--postgres]``; nothing is started by hand. The trigger
sensors are on by default: their first tick (at daemon start) finds the seeded due alerts and
expired packages and requests worker runs, which the queued-run coordinator launches. The
every-minute ``deliver_trigger_notifications_schedule`` (also on by default) launches its run at
the next minute boundary: the one wait that is not ours to shorten, so the test takes 30-90 s
per storage (more under load). Notifications go to a real webhook receiver on 127.0.0.1.

The PostgreSQL case gets a fresh database for Dagster's storage (its own migrations, no other
test's runs) and a private schema for the record store.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES
from dagster._core.storage.tags import (
    SCHEDULE_NAME_TAG,
    SCHEDULED_EXECUTION_TIME_TAG,
    SENSOR_NAME_TAG,
)

from dev.seed import seed_alerts, seed_packages
from orchestration.triggers.catalog import ESCALATE_ALERTS, EXPIRE_PACKAGES
from orchestration.triggers.models import alerts, edge_packages, notification_outbox
from orchestration.triggers.spec import as_utc, utcnow
from resources.notifier import WEBHOOK_URL_ENV
from resources.record_store import make_engine
from tests.conftest import TEST_API_KEY, TEST_SUPABASE_TOKEN
from tests.daemon import Daemon, make_home, write_workspace
from tests.support.postgres import fresh_database
from tests.support.webhook import WebhookReceiver
from tests.triggers.helpers import history

LOCATION = "platform_ops"
MODULE = "orchestration.definitions"
SCHEDULE = "deliver_trigger_notifications_schedule"
SCHEDULE_JOB = "deliver_trigger_notifications"
TRIGGERS = (ESCALATE_ALERTS, EXPIRE_PACKAGES)
JOBS = tuple(spec.job_name for spec in TRIGGERS)
DUE_ALERTS, FRESH_ALERTS, RESOLVED_ALERTS = 9, 2, 2
EXPIRED_PACKAGES, ACTIVE_PACKAGES = 4, 2
LEFTOVER_KEY = "e2e:interrupted-delivery"
TIMEOUT = 150  # daemon start (~10 s) + the next minute boundary (<= 60 s) + one run, with room


@pytest.fixture
def dagster_pg_url(pg_url: str) -> Iterator[str]:
    """A fresh database for Dagster's PostgreSQL storage, dropped (connections and all) after."""
    with fresh_database(pg_url, "dagster_e2e") as url:
        yield url


def _seed(engine: sa.Engine) -> tuple[set[int], set[int]]:
    """Due alerts (plus fresh and resolved ones), expired packages (plus active), one leftover."""
    seed_alerts(engine, due=DUE_ALERTS, fresh=FRESH_ALERTS, resolved=RESOLVED_ALERTS)
    seed_packages(engine, expired=EXPIRED_PACKAGES, active=ACTIVE_PACKAGES)
    with engine.begin() as conn:
        # A notification a killed run committed but never sent: someone must deliver it once.
        conn.execute(
            notification_outbox.insert().values(
                dedupe_key=LEFTOVER_KEY,
                channel="webhook",
                payload={"event": "e2e.leftover"},
                created_at=utcnow() - timedelta(minutes=5),
            )
        )
        due_alerts = set(
            conn.execute(sa.select(alerts.c.id).where(alerts.c.title.like("due alert %"))).scalars()
        )
        expired = set(
            conn.execute(
                sa.select(edge_packages.c.id).where(edge_packages.c.expires_at < utcnow())
            ).scalars()
        )
    assert len(due_alerts) == DUE_ALERTS and len(expired) == EXPIRED_PACKAGES
    return due_alerts, expired


def _states(engine: sa.Engine, table: sa.Table) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(table.c.id, table.c.state)).all())


def _outbox(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.select(notification_outbox)).all()


def _runs(instance: dg.DagsterInstance, job: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(dg.RunsFilter(job_name=job)))


def _done(instance, engine, due_alerts: set[int], expired: set[int]) -> bool:
    """Every seeded record transitioned, every worker run finished, and a scheduled run done."""
    alert_states, package_states = _states(engine, alerts), _states(engine, edge_packages)
    if any(alert_states[i] != "escalated" for i in due_alerts):
        return False
    if any(package_states[i] != "expired" for i in expired):
        return False
    if any(row.delivered_at is None for row in _outbox(engine)):
        return False
    for spec in TRIGGERS:
        runs = _runs(instance, spec.job_name)
        if not runs or any(r.status in NOT_FINISHED_STATUSES for r in runs):
            return False
    scheduled = _runs(instance, SCHEDULE_JOB)
    return any(r.status not in NOT_FINISHED_STATUSES for r in scheduled)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("storage", ["sqlite", "postgres"])
def test_daemon_transitions_seeded_records_and_fires_a_schedule_unattended(
    storage, request, sandbox, tmp_path, monkeypatch
):
    postgres = storage == "postgres"
    store_url = request.getfixturevalue("pg_store_url" if postgres else "sqlite_store_url")
    if postgres:
        monkeypatch.setenv("DAGSTER_PG_URL", request.getfixturevalue("dagster_pg_url"))
    home = make_home(tmp_path / "dagster_home", postgres=postgres)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    workspace = write_workspace(tmp_path / "workspace.yaml", MODULE, LOCATION)
    engine = make_engine(store_url)
    request.addfinalizer(engine.dispose)  # before the schema/database fixtures drop theirs
    due_alerts, expired = _seed(engine)

    with WebhookReceiver() as receiver, dg.DagsterInstance.get() as instance:
        # The instance really is on the storage under test (runs, events, schedules/sensors).
        kind = "Postgres" if postgres else "Sqlite"
        for part in (instance.run_storage, instance.event_log_storage, instance.schedule_storage):
            assert type(part).__name__.startswith(kind), type(part)
        env = {
            "DAGSTER_HOME": str(home),
            "RECORD_STORE_URL": store_url,
            WEBHOOK_URL_ENV: receiver.url,
            "CA_API_URL": sandbox.base_url,
            "CA_ROOT_API_KEY": TEST_API_KEY,
            "SUPABASE_ACCESS_TOKEN": TEST_SUPABASE_TOKEN,
        }
        started = utcnow()
        with Daemon(workspace, env, tmp_path / "daemon.log") as daemon:
            seconds = daemon.wait_for(
                lambda: _done(instance, engine, due_alerts, expired),
                TIMEOUT,
                what=f"every seeded record transitioned and a scheduled run done on {storage}",
                poll=1.0,
            )
            # Runs as they are now: stopping the daemon would interrupt a later tick's run.
            runs_of = {job: _runs(instance, job) for job in (*JOBS, SCHEDULE_JOB)}
            log = daemon.log_tail()
        print(f"[{storage}] everything done {seconds:.1f}s after the daemon started")

        # Every worker run the sensors asked for succeeded, and came from the sensor.
        worker_runs = {}
        for spec in TRIGGERS:
            runs = runs_of[spec.job_name]
            assert runs, spec.name
            worker_runs[spec.name] = {r.run_id for r in runs}
            for run in runs:
                assert run.status == dg.DagsterRunStatus.SUCCESS, (spec.name, run.run_id, log)
                assert run.tags[SENSOR_NAME_TAG] == f"{spec.name}_sensor"
                assert run.tags["platform/trigger"] == spec.name
        # Launched by the every-minute schedule on its own, at a boundary after the daemon came
        # up (a later tick's run may have been still running).
        scheduled = runs_of[SCHEDULE_JOB]
        finished = [r for r in scheduled if r.status not in NOT_FINISHED_STATUSES]
        assert finished and all(r.status == dg.DagsterRunStatus.SUCCESS for r in finished), log
        finished = [instance.get_run_record_by_id(r.run_id) for r in finished]
        for run in scheduled:
            assert run.tags[SCHEDULE_NAME_TAG] == SCHEDULE
            tick = datetime.fromisoformat(run.tags[SCHEDULED_EXECUTION_TIME_TAG])
            assert tick > started and tick.second == 0 and tick.microsecond == 0, tick

    # Records: exactly the due ones transitioned, each exactly once; the rest untouched.
    alert_states = _states(engine, alerts)
    assert {i for i, s in alert_states.items() if s == "escalated"} == due_alerts
    assert Counter(alert_states.values()) == {
        "escalated": DUE_ALERTS,
        "pending": FRESH_ALERTS,
        "resolved": RESOLVED_ALERTS,
    }
    package_states = _states(engine, edge_packages)
    assert {i for i, s in package_states.items() if s == "expired"} == expired
    assert Counter(package_states.values())["active"] == ACTIVE_PACKAGES
    for spec, ids in ((ESCALATE_ALERTS, due_alerts), (EXPIRE_PACKAGES, expired)):
        rows = history(engine, spec.name)
        assert {r.status for r in rows} == {"succeeded"}, rows
        assert Counter(r.record_id for r in rows) == dict.fromkeys(ids, 1)
        assert all(r.actor == spec.actor for r in rows)
        assert {r.run_id for r in rows} <= worker_runs[spec.name]  # done by the sensor's runs
    # Notifications: one per escalated alert plus the leftover, each delivered and POSTed once.
    keys = {f"escalate_alerts:{i}" for i in due_alerts} | {LEFTOVER_KEY}
    outbox = _outbox(engine)
    assert {r.dedupe_key for r in outbox} == keys
    assert all(r.delivered_at is not None for r in outbox)
    assert receiver.key_counts() == dict.fromkeys(keys, 1)
    since = {
        spec.name: max(as_utc(r.finished_at) for r in history(engine, spec.name)) - started
        for spec in TRIGGERS
    }
    print(
        f"[{storage}] transitioned after "
        + ", ".join(f"{name} {d.total_seconds():.1f}s" for name, d in since.items())
        + f"; scheduled run finished {min(r.end_time for r in finished) - started.timestamp():.1f}s"
    )
