"""The whole code location loads, and the record store migrates on both backends."""

import sqlalchemy as sa

from orchestration.definitions import defs
from resources.record_store import make_engine, upgrade


def test_definitions_load_and_every_job_has_a_description():
    repo = defs.get_repository_def()
    jobs = repo.get_all_jobs()
    assert {"release", "migrate", "bootstrap", "org_sync_all"} <= {j.name for j in jobs}
    for job in jobs:
        if not job.name.startswith("__"):
            assert job.description, f"job {job.name} has no description"
    for schedule in repo.schedule_defs:
        assert schedule.description, f"schedule {schedule.name} has no description"
    for sensor in repo.sensor_defs:
        assert sensor.description, f"sensor {sensor.name} has no description"


def test_record_store_upgrade_is_idempotent(store_url):
    upgrade(store_url)  # second time: nothing to do
    engine = make_engine(store_url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"notification_outbox", "record_store_alembic_version"} <= tables
    assert "alembic_version" not in tables  # Dagster's own table name is left alone
