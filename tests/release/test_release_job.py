"""The release workflow on a real Dagster instance against the real sandbox."""

import json
from collections.abc import Iterator

import dagster as dg
import httpx
import pytest

from dev.sandbox.server import Fault, SandboxServer
from orchestration.definitions import defs
from orchestration.release import guard
from orchestration.release import migrations as migrations_lib
from resources.db import make_engine
from resources.environments import ENVIRONMENTS, Environment
from tests.conftest import TEST_API_KEY, TEST_SUPABASE_TOKEN, run_config
from tests.release import jobs_for_test
from tests.run_text import run_text
from tests.support.results import step_metadata
from tests.support.sandbox import running_sandbox

RELEASE_STEPS = [
    "release_preflight",
    "claim_environment",
    "apply_migrations",
    "run_bootstrap",
    "plan_org_batches",
]


def _execute(instance, job_name="release", config=None, raise_on_error=False):
    return defs.get_job_def(job_name).execute_in_process(
        instance=instance, run_config=config or run_config(), raise_on_error=raise_on_error
    )


def _sandbox_sql(sandbox, sql):
    response = httpx.post(
        f"{sandbox.base_url}/v1/projects/sandbox/database/query",
        json={"query": sql},
        headers={"Authorization": f"Bearer {TEST_SUPABASE_TOKEN}"},
    )
    response.raise_for_status()
    return response.json()


def test_release_runs_in_order_and_records_metadata(instance, platform_env):
    result = _execute(instance, raise_on_error=True)
    assert result.success
    starts = [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"]
    assert starts[:5] == RELEASE_STEPS
    assert starts[-2:] == ["summarize_org_sync", "free_environment"]
    assert all(s.startswith("sync_org_batch[") for s in starts[5:-2])

    migrate_md = step_metadata(result, "apply_migrations")
    assert migrate_md["applied_count"] == len(migrations_lib.discover())
    boot = step_metadata(result, "run_bootstrap")
    assert boot["mode"] == "fresh"
    # A fresh install creates every table the platform then has (21 today), none existed before.
    assert boot["tables_created_count"] == len(platform_env.state()["bootstrap"]["tables"]) >= 21
    summary = step_metadata(result, "summarize_org_sync")
    assert summary["orgs_synced"] == 5

    # Order on the server side too: every migration before bootstrap, bootstrap before any sync.
    paths = [r["path"] for r in platform_env.requests]
    last_sql = max(i for i, p in enumerate(paths) if p.endswith("/database/query"))
    boot_at = paths.index("/admin/bootstrap")
    first_sync = min(i for i, p in enumerate(paths) if p.endswith("/sync"))
    assert last_sql < boot_at < first_sync

    tags = instance.get_run_by_id(result.run_id).tags
    assert tags["platform/environment"] == "test"


def test_second_release_changes_nothing(instance, platform_env):
    assert _execute(instance).success
    state_before = platform_env.state()
    tracked_before = _sandbox_sql(
        platform_env, "SELECT version, checksum FROM platform_ops_schema_migrations"
    )
    second = _execute(instance)
    assert second.success
    assert step_metadata(second, "apply_migrations")["applied_count"] == 0
    boot = step_metadata(second, "run_bootstrap")
    assert boot["mode"] == "sync"
    assert boot["tables_created_count"] == 0 and boot["columns_added_count"] == 0
    state_after = platform_env.state()
    assert state_after["bootstrap"]["tables"] == state_before["bootstrap"]["tables"]
    assert {k: v["datasets_synced"] for k, v in state_after["orgs"].items()} == {
        k: v["datasets_synced"] for k, v in state_before["orgs"].items()
    }
    assert (
        _sandbox_sql(platform_env, "SELECT version, checksum FROM platform_ops_schema_migrations")
        == tracked_before
    )


def test_bootstrap_reports_added_columns(instance, platform_env):
    assert _execute(instance, "bootstrap").success
    platform_env.add_schema_column("org_profiles", "billing_region")
    result = _execute(instance, "bootstrap")
    md = step_metadata(result, "run_bootstrap")
    assert md["mode"] == "sync" and md["columns_added"] == {"org_profiles": ["billing_region"]}


def test_failure_stops_the_sequence_there(instance, platform_env):
    platform_env.add_fault(Fault(method="POST", path="/admin/bootstrap", status=500))
    result = _execute(instance)
    assert not result.success
    failed = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failed == ["run_bootstrap"]
    assert not any(r["path"].startswith("/admin/orgs") for r in platform_env.requests)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_platform_env(request, tmp_path, monkeypatch) -> Iterator[SandboxServer]:
    """``platform_env`` whose Management API runs the SQL on SQLite, or on PostgreSQL (a fresh
    schema of its own): production's database is PostgreSQL, whose transactions the rollback
    contract is about."""
    db_url = request.getfixturevalue("pg_schema_url") if request.param == "postgres" else None
    with running_sandbox(tmp_path, supabase_db_url=db_url) as server:
        _point_jobs_at(server, monkeypatch)
        yield server


def _point_jobs_at(server: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CA_API_URL", server.base_url)
    monkeypatch.setenv("CA_ROOT_API_KEY", TEST_API_KEY)
    monkeypatch.setenv("SUPABASE_ACCESS_TOKEN", TEST_SUPABASE_TOKEN)
    monkeypatch.delenv("SUPABASE_API_URL", raising=False)
    monkeypatch.delenv("SUPABASE_PROJECT_REF", raising=False)


def _table_exists(sandbox, table: str) -> bool:
    """Whether ``table`` exists, asked the same way on SQLite and PostgreSQL."""
    response = httpx.post(
        f"{sandbox.base_url}/v1/projects/sandbox/database/query",
        json={"query": f"SELECT count(*) AS n FROM {table}"},
        headers={"Authorization": f"Bearer {TEST_SUPABASE_TOKEN}"},
    )
    if response.is_success:
        return True
    assert response.status_code == 400 and table in response.text, response.text
    return False


# Two good files, then one that does work (a table, a row in an earlier file's table) before its
# syntax error: all of that must roll back with it.
GOOD_MIGRATIONS = {
    "0001_rel_first.sql": "CREATE TABLE rel_first (id INTEGER PRIMARY KEY);\n"
    "INSERT INTO rel_first (id) VALUES (1);",
    "0002_rel_note.sql": "ALTER TABLE rel_first ADD COLUMN note VARCHAR(40);",
}
BROKEN_MIGRATION = (
    "CREATE TABLE rel_broken_first (id INTEGER);\n"
    "INSERT INTO rel_first (id, note) VALUES (2, 'from the broken file');\n"
    "CREATE TABLE rel_broken (id INTEGER;\n"
)
FIXED_MIGRATION = "INSERT INTO rel_first (id, note) VALUES (2, 'fixed');"


def test_broken_migration_rolls_back_whole_and_a_rerun_applies_only_the_rest(
    instance, sql_platform_env, tmp_path
):
    """The release stops at its migration step; the broken file leaves nothing, the files before
    it stay applied and tracked exactly; a release after the fix applies only that file."""
    server = sql_platform_env
    directory = tmp_path / "migrations"  # every file of a migrations directory is a migration
    directory.mkdir()
    for name, sql in GOOD_MIGRATIONS.items():
        (directory / name).write_text(sql)
    (directory / "0003_rel_broken.sql").write_text(BROKEN_MIGRATION)
    config = run_config(ops={"apply_migrations": {"config": {"migrations_dir": str(directory)}}})
    tracked_sql = (
        "SELECT version, name, checksum FROM platform_ops_schema_migrations ORDER BY version"
    )

    result = _execute(instance, config=config)
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert [f.step_key for f in failures] == ["apply_migrations"]
    assert [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"] == []
    message = failures[0].event_specific_data.error.message
    assert "Migration 0003_rel_broken.sql failed" in message
    assert "syntax error" in message.lower()
    assert "tracking row, which is absent: that transaction did not commit" in message
    assert "Applied before it in this run: 0001_rel_first.sql, 0002_rel_note.sql." in message
    started = [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"]
    assert started == RELEASE_STEPS[:3]  # the sequence stops there: no bootstrap, no org sync
    assert not any(r["path"].startswith("/admin/") for r in server.requests)

    good = migrations_lib.discover(directory)[:2]
    expected_tracked = [
        {"version": m.version, "name": m.name, "checksum": m.checksum} for m in good
    ]
    assert _sandbox_sql(server, tracked_sql) == expected_tracked
    assert _sandbox_sql(server, "SELECT id, note FROM rel_first ORDER BY id") == [
        {"id": 1, "note": None}
    ]
    assert not _table_exists(server, "rel_broken_first")
    assert not _table_exists(server, "rel_broken")
    applied_at = _sandbox_sql(
        server, "SELECT version, applied_at FROM platform_ops_schema_migrations"
    )

    (directory / "0003_rel_broken.sql").write_text(FIXED_MIGRATION)
    server.clear_requests()
    rerun = _execute(instance, config=config)
    assert rerun.success
    migrate_md = step_metadata(rerun, "apply_migrations")
    assert migrate_md["applied"] == ["0003_rel_broken.sql"]
    assert migrate_md["already_applied_count"] == 2
    keyed = [r["idempotency_key"] for r in server.requests if r["idempotency_key"]]
    assert [k.split(":")[2] for k in keyed if k.startswith("migrate:")] == ["0003"]
    fixed = migrations_lib.discover(directory)[2]
    assert _sandbox_sql(server, tracked_sql) == [
        *expected_tracked,
        {"version": "0003", "name": fixed.name, "checksum": fixed.checksum},
    ]
    # The earlier files were not touched again (same tracking rows, same applied_at).
    assert [
        row
        for row in _sandbox_sql(
            server, "SELECT version, applied_at FROM platform_ops_schema_migrations"
        )
        if row["version"] != "0003"
    ] == applied_at
    assert _sandbox_sql(server, "SELECT id, note FROM rel_first ORDER BY id") == [
        {"id": 1, "note": None},
        {"id": 2, "note": "fixed"},
    ]


def test_edited_applied_migration_is_refused(instance, platform_env, tmp_path):
    tmp_path = tmp_path / "migrations"
    tmp_path.mkdir()
    for m in migrations_lib.discover():
        (tmp_path / m.filename).write_text(m.sql)
    config = run_config(ops={"apply_migrations": {"config": {"migrations_dir": str(tmp_path)}}})
    assert _execute(instance, "migrate", config).success
    first = sorted(tmp_path.iterdir())[0]
    first.write_text(first.read_text() + "\n-- edited after apply\n")
    result = _execute(instance, "migrate", config)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "Checksum drift" in failure.event_specific_data.error.message
    assert first.name in failure.event_specific_data.error.message


def test_local_is_refused_before_any_request(instance, platform_env):
    result = _execute(instance, config=run_config("local"))
    assert not result.success
    assert "'local' is refused" in run_text(result)
    assert platform_env.requests == []


def test_prod_without_confirmation_refused_before_any_request(instance, platform_env, monkeypatch):
    # Point "prod" at the sandbox so that a broken guard would show up as requests here,
    # never as traffic to the real service. Prod endpoints are fixed: no CA_API_URL override.
    base = platform_env.base_url
    monkeypatch.setitem(
        ENVIRONMENTS, "prod", Environment("prod", "cloudact-prod", "-prod", base, base)
    )
    monkeypatch.delenv("CA_API_URL")
    monkeypatch.setenv("SUPABASE_PROJECT_REF", "sandbox")
    result = _execute(instance, config=run_config("prod"))
    assert not result.success
    assert "confirm_prod: true" in run_text(result)
    assert platform_env.requests == []
    # With confirmation (and a reviewed plan, which prod requires: tests/release/
    # test_release_plan.py) the same run goes through against the sandbox standing in for prod.
    prod = run_config("prod", env_extra={"confirm_prod": True})
    planned = _execute(instance, "release_plan", prod)
    plan_id = step_metadata(planned, "plan_release")["plan_id"]
    confirmed = _execute(
        instance, config={**prod, "ops": {"release_preflight": {"config": {"plan_id": plan_id}}}}
    )
    assert confirmed.success


def test_partial_org_failure_then_reexecution_syncs_only_failed(instance, platform_env):
    platform_env.add_fault(
        Fault(
            method="POST",
            path="/admin/orgs/org-0002/sync",
            status=400,
            body={"detail": "dataset locked"},
        )
    )
    platform_env.add_fault(
        Fault(method="POST", path="/admin/orgs/org-0004/sync", status=400, body={"detail": "quota"})
    )
    config = run_config(ops={"plan_org_batches": {"config": {"batch_size": 3}}})
    first = dg.execute_job(
        dg.reconstructable(jobs_for_test.org_sync_all), instance=instance, run_config=config
    )
    with first:
        assert not first.success
        failures = [e for e in first.all_events if e.event_type_value == "STEP_FAILURE"]
        assert len(failures) == 2  # both batches hold a failing org
        text = " ".join(f.event_specific_data.error.message for f in failures)
        assert "org-0002" in text and "org-0004" in text and "dataset locked" in text
        first_run_id = first.run_id
    synced_first = {s for s, o in platform_env.state()["orgs"].items() if o["syncs"]}
    assert synced_first == {"org-0001", "org-0003", "org-0005"}

    platform_env.clear_faults()
    platform_env.clear_requests()
    second = dg.execute_job(
        dg.reconstructable(jobs_for_test.org_sync_all),
        instance=instance,
        run_config=config,
        reexecution_options=dg.ReexecutionOptions.from_failure(first_run_id, instance),
    )
    with second:
        assert second.success
    sync_paths = sorted(r["path"] for r in platform_env.requests if r["path"].endswith("/sync"))
    assert sync_paths == ["/admin/orgs/org-0002/sync", "/admin/orgs/org-0004/sync"]
    assert all(o["syncs"] == 1 for o in platform_env.state()["orgs"].values())


def test_secret_values_never_reach_logs_or_events(instance, platform_env, caplog, capfd):
    platform_env.add_fault(Fault(method="POST", path="/admin/orgs/org-0003/sync", status=400))
    platform_env.add_fault(Fault(method="POST", path="/admin/bootstrap", status=503, times=1))
    caplog.set_level("DEBUG")
    result = _execute(instance)
    assert not result.success
    records = instance.get_records_for_run(result.run_id).records
    blob = json.dumps([str(r.event_log_entry) for r in records])
    run = instance.get_run_by_id(result.run_id)
    blob += json.dumps(run.run_config) + json.dumps(dict(run.tags))
    out, err = capfd.readouterr()
    for text in (blob, caplog.text, out, err):
        assert TEST_API_KEY not in text
        assert TEST_SUPABASE_TOKEN not in text
    assert "org-0003" in blob  # the failure itself is visible


def test_second_release_for_same_environment_is_refused_before_any_call(
    instance, platform_env, sqlite_store_url
):
    """The in-run guard for `dagster job execute`, which bypasses the run queue's tag limit."""
    running = dg.DagsterRun(
        job_name="release",
        run_id="0f0f0f0f-0000-4000-8000-000000000001",
        status=dg.DagsterRunStatus.STARTED,
        tags={"platform/environment": "test", "platform/kind": "release"},
    )
    instance.add_run(running)
    stage = dg.DagsterRun(  # another environment's release does not block this one
        job_name="release",
        run_id="0f0f0f0f-0000-4000-8000-000000000002",
        status=dg.DagsterRunStatus.STARTED,
        tags={"platform/environment": "stage", "platform/kind": "release"},
    )
    instance.add_run(stage)
    engine = make_engine(sqlite_store_url)
    guard.acquire_release_lock(engine, instance, "test", running.run_id, "release")
    guard.acquire_release_lock(engine, instance, "stage", stage.run_id, "release")
    config = run_config()
    config["resources"]["record_store"] = {"config": {"url": sqlite_store_url}}
    result = _execute(instance, config=config)
    assert not result.success
    message = run_text(result)
    assert "Another release for environment 'test' is running" in message
    assert running.run_id in message
    steps = [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"]
    assert steps == ["release_preflight", "claim_environment"]
    assert platform_env.requests == []

    instance.report_run_canceled(running)
    assert _execute(instance, config=config).success
    assert guard.read_holder(engine, "test") is None  # freed by the successful run
    assert guard.read_holder(engine, "stage").run_id == stage.run_id


@pytest.mark.postgres
def test_release_on_postgres_storage_and_postgres_database(
    pg_url, pg_schema_url, tmp_path, monkeypatch
):
    with running_sandbox(tmp_path, orgs=3, supabase_db_url=pg_schema_url) as server:
        _point_jobs_at(server, monkeypatch)
        overrides = {"storage": {"postgres": {"postgres_url": pg_url}}}
        with dg.instance_for_test(overrides=overrides) as pg_instance:
            assert "Postgres" in type(pg_instance.run_storage).__name__
            first = _execute(pg_instance)
            assert first.success
            assert step_metadata(first, "summarize_org_sync")["orgs_synced"] == 3
            second = _execute(pg_instance)
            assert step_metadata(second, "apply_migrations")["applied_count"] == 0
            stored = pg_instance.get_run_by_id(first.run_id)
            assert stored.status == dg.DagsterRunStatus.SUCCESS
        rows = _sandbox_sql(server, "SELECT count(*) AS n FROM platform_ops_schema_migrations")
        assert rows == [{"n": len(migrations_lib.discover())}]
