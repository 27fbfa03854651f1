"""Release plan -> review -> apply (issue 18), on the real sandbox and a real Dagster instance.

Every job runs against the sandbox, whose Management API runs its SQL on SQLite and, for the
``postgres`` cases, on a real PostgreSQL schema. The sandbox records every request with its SQL,
so "read-only" and "nothing sent" are checked on what the servers heard.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import pytest
import yaml

from dev.sandbox.server import SandboxServer
from orchestration.definitions import defs
from orchestration.release import migrations as migrations_lib
from orchestration.release import plan as plan_lib
from orchestration.release.ops import apply_migrations, release_preflight
from orchestration.resources import build_resources
from resources.environments import ENDPOINT_OVERRIDES, ENVIRONMENTS, Environment
from tests.conftest import TEST_API_KEY, TEST_SUPABASE_TOKEN, run_config
from tests.run_text import run_text
from tests.support.results import step_metadata
from tests.support.sandbox import running_sandbox

ORGS = 7


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server(request, tmp_path, monkeypatch) -> Iterator[SandboxServer]:
    """The sandbox as both APIs of environment ``test``; its SQL on SQLite or PostgreSQL."""
    db_url = request.getfixturevalue("pg_schema_url") if request.param == "postgres" else None
    with running_sandbox(tmp_path, orgs=ORGS, supabase_db_url=db_url) as srv:
        for override in ENDPOINT_OVERRIDES:
            monkeypatch.delenv(override.variable, raising=False)
        monkeypatch.setenv("CA_API_URL", srv.base_url)
        monkeypatch.setenv("CA_ROOT_API_KEY", TEST_API_KEY)
        monkeypatch.setenv("SUPABASE_ACCESS_TOKEN", TEST_SUPABASE_TOKEN)
        monkeypatch.delenv("SUPABASE_PROJECT_REF", raising=False)
        yield srv


@pytest.fixture
def mig_dir(tmp_path) -> Path:
    """A copy of the repo's migrations the test may add to or edit."""
    directory = tmp_path / "migrations"
    directory.mkdir()
    for m in migrations_lib.discover():
        (directory / m.filename).write_text(m.sql)
    return directory


def _point_prod_at(server: SandboxServer, monkeypatch) -> SandboxServer:
    """'prod' pointed at the sandbox (fixed endpoints on loopback): a broken guard shows up as
    requests here, never as traffic to the real service."""
    monkeypatch.setitem(
        ENVIRONMENTS,
        "prod",
        Environment("prod", "cloudact-prod", "-prod", server.base_url, server.base_url),
    )
    monkeypatch.delenv("CA_API_URL")
    monkeypatch.setenv("SUPABASE_PROJECT_REF", "sandbox")
    return server


@pytest.fixture
def as_prod(server, monkeypatch) -> SandboxServer:
    return _point_prod_at(server, monkeypatch)


def _config(environment: str, ops: dict, confirm: bool = False) -> dict:
    env_extra = {"confirm_prod": True} if confirm else {}
    return run_config(environment, env_extra=env_extra, ops=ops)


def _plan(instance, directory: Path, environment: str = "test", confirm: bool = False):
    ops = {"plan_release": {"config": {"migrations_dir": str(directory)}}}
    result = defs.get_job_def("release_plan").execute_in_process(
        instance=instance, run_config=_config(environment, ops, confirm), raise_on_error=False
    )
    assert result.success, run_text(result)
    return step_metadata(result, "plan_release")


def _run(instance, job: str, directory: Path, plan_id=None, environment="test", confirm=False):
    ops: dict = {"apply_migrations": {"config": {"migrations_dir": str(directory)}}}
    if plan_id is not None:
        ops["release_preflight"] = {"config": {"plan_id": plan_id}}
    return defs.get_job_def(job).execute_in_process(
        instance=instance, run_config=_config(environment, ops, confirm), raise_on_error=False
    )


def _steps(result) -> list[str]:
    return [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"]


def _writes(srv: SandboxServer) -> list[str]:
    """Every request that is not one of the plan's reads: a platform call other than GET, a SQL
    request other than exactly one of the statements the plan module sends (an allow-list, so a
    write hidden in a SELECT, e.g. a function with side effects, is caught too)."""
    writes = []
    for r in srv.requests:
        if r["path"].startswith("/v1/"):
            if r["sql"] not in plan_lib.PLAN_QUERIES:
                writes.append(f"SQL {r['sql']!r}")
        elif r["method"] != "GET":
            writes.append(f"{r['method']} {r['path']}")
    return writes


def _sql(srv: SandboxServer, sql: str) -> list[dict]:
    response = httpx.post(
        f"{srv.base_url}/v1/projects/sandbox/database/query",
        json={"query": sql},
        headers={"Authorization": f"Bearer {TEST_SUPABASE_TOKEN}"},
    )
    response.raise_for_status()
    return response.json()


def _tracked(srv: SandboxServer) -> list[str]:
    rows = _sql(srv, f"SELECT version FROM {migrations_lib.TRACKING_TABLE} ORDER BY version")
    return [r["version"] for r in rows]


def _tracking_table_exists(srv: SandboxServer) -> bool:
    rows = _sql(srv, migrations_lib.TRACKING_PRESENT_SQL)
    return bool(rows[0]["present"])


def test_plan_on_a_fresh_database_is_read_only(instance, server, mig_dir):
    (mig_dir / "0003_org_feature_flags_note.sql").unlink()  # two pending files
    md = _plan(instance, mig_dir)
    assert md["pending"] == ["0001_platform_ops_audit.sql", "0002_org_feature_flags.sql"]
    assert md["blocked"] is False and md["applied_count"] == 0
    assert md["active_orgs"] == ORGS
    summary = md["summary"]
    for m in migrations_lib.discover(mig_dir):
        assert m.checksum in summary and m.sql.strip() in summary
    assert "| 0001 | platform_ops_audit |" in summary and "| 2 |" in summary  # two statements
    assert "no dry run" in summary
    assert "`org-0001`, `org-0002`, `org-0003`, `org-0004`, `org-0005` and 2 more" in summary
    assert "wrapped in `BEGIN` / the file / `INSERT` of its tracking row / `COMMIT`" in summary
    assert server.base_url in summary and "code version" in summary
    # Only reads reached the servers, and the tracking table was not even created.
    assert _writes(server) == []
    assert {r["method"] for r in server.requests if not r["path"].startswith("/v1/")} == {"GET"}
    assert not _tracking_table_exists(server)
    # The id is the documented hash of the target state, shown with the YAML that applies it.
    migrations = migrations_lib.discover(mig_dir)
    expected = plan_lib.PlanTarget(
        "test",
        server.base_url,
        server.base_url,
        "sandbox",
        tuple((m.version, m.name, m.checksum) for m in migrations),
        (),
    )
    assert md["plan_id"] == expected.plan_id
    assert md["plan_id"] in md["launchpad_yaml"]


def test_plan_with_nothing_pending(instance, server, mig_dir):
    assert _run(instance, "release", mig_dir).success  # test needs no plan
    server.clear_requests()
    md = _plan(instance, mig_dir)
    assert md["pending"] == [] and md["applied_count"] == 3 and md["blocked"] is False
    assert "Nothing pending." in md["summary"]
    assert _writes(server) == []


def test_drift_blocks_the_plan_and_release_refuses_it(instance, server, mig_dir):
    assert _run(instance, "migrate", mig_dir).success
    first = mig_dir / "0001_platform_ops_audit.sql"
    first.write_text(first.read_text() + "\n-- edited after apply\n")
    server.clear_requests()
    md = _plan(instance, mig_dir)
    assert md["blocked"] is True
    assert "checksum drift" in md["blocked_reason"] and first.name in md["blocked_reason"]
    assert "**BLOCKED**" in md["summary"]
    result = _run(instance, "release", mig_dir, md["plan_id"])
    assert not result.success
    assert "is blocked" in run_text(result) and first.name in run_text(result)
    assert _steps(result) == ["release_preflight"]
    assert _writes(server) == []


def test_release_applies_the_reviewed_plan_pasted_from_its_yaml(instance, server, mig_dir):
    md = _plan(instance, mig_dir)
    # The YAML the plan shows is a working launchpad config (plus the tests' fast retries).
    pasted = yaml.safe_load(md["launchpad_yaml"].split("```yaml\n", 1)[1].split("```", 1)[0])
    config = run_config()
    config["resources"]["environment"] = pasted["resources"]["environment"]
    config["ops"] = pasted["ops"]
    result = defs.get_job_def("release").execute_in_process(
        instance=instance, run_config=config, raise_on_error=False
    )
    assert result.success, run_text(result)
    assert step_metadata(result, "release_preflight")["plan_id"] == md["plan_id"]
    assert step_metadata(result, "apply_migrations")["applied_count"] == 3
    assert _tracked(server) == ["0001", "0002", "0003"]


def test_a_file_added_after_the_plan_is_refused_and_nothing_is_written(instance, server, mig_dir):
    md = _plan(instance, mig_dir)
    (mig_dir / "0004_late_arrival.sql").write_text("CREATE TABLE late_arrival (id INTEGER);\n")
    server.clear_requests()
    result = _run(instance, "release", mig_dir, md["plan_id"])
    assert not result.success
    text = run_text(result)
    assert "file added: 0004_late_arrival.sql" in text and "Run release_plan again" in text
    assert _steps(result) == ["release_preflight"]
    assert _writes(server) == []
    assert not _tracking_table_exists(server)


def test_an_edited_pending_file_is_named(instance, server, mig_dir):
    md = _plan(instance, mig_dir)
    last = mig_dir / "0003_org_feature_flags_note.sql"
    last.write_text(last.read_text() + "ALTER TABLE org_feature_flags ADD COLUMN who TEXT;\n")
    result = _run(instance, "migrate", mig_dir, md["plan_id"])
    assert not result.success
    assert f"file edited: {last.name}" in run_text(result)
    assert _writes(server) == []


@pytest.mark.parametrize("job", ["release", "migrate"])
def test_prod_without_a_plan_id_is_refused_and_nothing_is_sent(instance, as_prod, mig_dir, job):
    result = _run(instance, job, mig_dir, environment="prod", confirm=True)
    assert not result.success
    assert "run release_plan for prod first" in run_text(result)
    assert as_prod.requests == []
    # With the reviewed plan's id the same run goes through.
    md = _plan(instance, mig_dir, "prod", confirm=True)
    assert "confirm_prod: true" in md["launchpad_yaml"]
    result = _run(instance, job, mig_dir, md["plan_id"], environment="prod", confirm=True)
    assert result.success, run_text(result)
    assert _tracked(as_prod) == ["0001", "0002", "0003"]


def test_a_plan_of_another_environment_is_refused(instance, server, mig_dir, monkeypatch):
    md = _plan(instance, mig_dir)  # planned for test
    as_prod = _point_prod_at(server, monkeypatch)
    as_prod.clear_requests()
    result = _run(instance, "release", mig_dir, md["plan_id"], environment="prod", confirm=True)
    assert not result.success
    assert "environment test -> prod" in run_text(result)
    assert _writes(as_prod) == []


def test_a_resumed_apply_with_the_same_plan_id_applies_the_rest(instance, server, mig_dir):
    # The second pending file fails until an operator creates what it needs.
    (mig_dir / "0004_seed_defaults.sql").write_text("INSERT INTO seed_target (id) VALUES (1);\n")
    md = _plan(instance, mig_dir)
    assert len(md["pending"]) == 4
    first = _run(instance, "release", mig_dir, md["plan_id"])
    assert not first.success
    assert "0004_seed_defaults.sql failed" in run_text(first)
    assert _tracked(server) == ["0001", "0002", "0003"]

    _sql(server, "CREATE TABLE seed_target (id INTEGER)")
    again = _run(instance, "release", mig_dir, md["plan_id"])
    assert again.success, run_text(again)
    assert step_metadata(again, "release_preflight")["plan_id"] == md["plan_id"]
    applied = step_metadata(again, "apply_migrations")
    assert applied["applied"] == ["0004_seed_defaults.sql"]
    assert applied["already_applied_count"] == 3
    assert _sql(server, "SELECT count(*) AS n FROM seed_target") == [{"n": 1}]


def test_a_malformed_plan_id_is_refused_before_any_request(instance, server, mig_dir):
    result = _run(instance, "release", mig_dir, "not-a-plan\n")
    assert not result.success
    assert "is not a plan id" in run_text(result)
    assert server.requests == []


@pytest.mark.parametrize("job", ["release", "migrate"])
def test_prod_apply_migrations_alone_needs_a_plan_id_too(instance, as_prod, mig_dir, job):
    """A step selection (CLI --op-selection, UI step subset, re-execute selected steps) skips
    the preflight: apply_migrations itself refuses, and nothing reaches the servers."""
    subset = defs.get_job_def(job).get_subset(op_selection=["apply_migrations"])
    ops = {"apply_migrations": {"config": {"migrations_dir": str(mig_dir)}}}
    result = subset.execute_in_process(
        instance=instance, run_config=_config("prod", ops, confirm=True), raise_on_error=False
    )
    assert not result.success
    assert "run release_plan for prod first" in run_text(result)
    assert as_prod.requests == []
    # A step subset cannot carry a plan id (the preflight's config is not in its schema), so
    # on prod the whole job runs, or "re-execute from failure" (which keeps the run's config).


def test_a_tracking_row_deleted_after_the_plan_is_refused(instance, server, mig_dir):
    assert _run(instance, "migrate", mig_dir).success
    md = _plan(instance, mig_dir)
    assert md["pending"] == []  # reviewed: nothing to apply
    _sql(server, f"DELETE FROM {migrations_lib.TRACKING_TABLE} WHERE version = '0003'")
    server.clear_requests()
    result = _run(instance, "release", mig_dir, md["plan_id"])
    assert not result.success
    assert "no longer applied (tracking row deleted since the plan): `'0003'`" in run_text(result)
    assert _steps(result) == ["release_preflight"]
    assert _writes(server) == []
    assert _tracked(server) == ["0001", "0002"]


def test_a_plan_for_another_database_is_refused(instance, server, mig_dir, monkeypatch):
    md = _plan(instance, mig_dir)  # project ref "sandbox"
    assert "# Supabase project ref: sandbox" in md["launchpad_yaml"]
    server.supabase_project_ref = "other-db"  # the same API serving another project
    monkeypatch.setenv("SUPABASE_PROJECT_REF", "other-db")
    server.clear_requests()
    result = _run(instance, "release", mig_dir, md["plan_id"])
    assert not result.success
    assert "Supabase project ref `'sandbox'` -> `'other-db'`" in run_text(result)
    assert _steps(result) == ["release_preflight"]
    assert _writes(server) == []


def test_a_pasted_id_in_upper_case_with_spaces_is_the_same_id(instance, server, mig_dir):
    md = _plan(instance, mig_dir)
    result = _run(instance, "migrate", mig_dir, f"  {md['plan_id'].upper()}\n")
    assert result.success, run_text(result)
    assert step_metadata(result, "release_preflight")["plan_id"] == md["plan_id"]
    assert _tracked(server) == ["0001", "0002", "0003"]


def test_another_code_version_applying_is_warned_about(instance, server, mig_dir, monkeypatch):
    monkeypatch.setenv(plan_lib.CODE_VERSION_ENV, "1.0.0+aaa")
    md = _plan(instance, mig_dir)
    monkeypatch.setenv(plan_lib.CODE_VERSION_ENV, "1.0.1+bbb")
    result = _run(instance, "migrate", mig_dir, md["plan_id"])
    assert result.success, run_text(result)
    warnings = [
        e.message
        for e in instance.all_logs(result.run_id)
        if e.level == 30 and "was made by code version" in e.message
    ]
    assert len(warnings) == 1 and "'1.0.0+aaa'" in warnings[0] and "'1.0.1+bbb'" in warnings[0]


HOSTILE = ["[APPROVED](https://evil.example)", "<img src=x onerror=alert(1)>", "**x**"]


def _outside_code_spans(text: str) -> str:
    """``text`` with every Markdown code span removed (a run of n backticks up to the next run
    of exactly n): what a Markdown renderer would interpret."""
    out, i = [], 0
    while i < len(text):
        if text[i] != "`":
            out.append(text[i])
            i += 1
            continue
        n = len(text[i:]) - len(text[i:].lstrip("`"))
        j = i + n
        while True:
            k = text.find("`" * n, j)
            if k < 0:
                return "".join(out) + text[i:]  # an unclosed run is literal backticks
            m = len(text[k:]) - len(text[k:].lstrip("`"))
            if m == n:
                i = k + n
                break
            j = k + m
    return "".join(out)


def test_untrusted_values_are_shown_as_text(instance, server, mig_dir):
    for slug in HOSTILE:
        server.add_org(slug, any_slug=True)
    assert _run(instance, "migrate", mig_dir).success
    table = migrations_lib.TRACKING_TABLE
    # A drifted checksum and an applied version this repo does not know, both forged.
    _sql(server, f"UPDATE {table} SET checksum = 'ab\n# h`x`' WHERE version = '0001'")
    _sql(
        server,
        f"INSERT INTO {table} (version, name, checksum) VALUES "
        f"('9999\n# h``', 'forged', '{'0' * 64}')",
    )
    md = _plan(instance, mig_dir)
    assert md["blocked"] is True
    summary, reason = md["summary"], md["blocked_reason"]
    rendered = _outside_code_spans(summary)
    for bad in [*HOSTILE, "# h", "evil.example", "<img"]:
        assert bad not in rendered, bad
    assert "\n# h" not in summary and "\n" not in reason
    assert "`'[APPROVED](https://evil.example)'`" in summary
    assert "``'ab\\n# h`x`'``" in reason  # escaped, in a span its backticks cannot close
    result = _run(instance, "release", mig_dir, md["plan_id"])
    assert not result.success
    refusal = next(
        e.event_specific_data.error.message
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE"
    )
    assert "is blocked" in refusal and "\n# h" not in refusal.strip()
    assert "# h" not in _outside_code_spans(refusal)


# Plain-function rules of the plan (no server).


def _m(version: str, name: str, sql: str) -> migrations_lib.Migration:
    return migrations_lib.Migration(version, name, f"{version}_{name}.sql", sql)


def _build(migrations, applied, orgs=("a-org",), code="git abc", env="test", ref="sandbox"):
    return plan_lib.build_plan(
        environment=env,
        api_url="http://127.0.0.1:1",
        supabase_api_url="http://127.0.0.1:2",
        project_ref=ref,
        migrations=migrations,
        applied=applied,
        orgs=list(orgs),
        code_version=code,
    )


def test_the_id_covers_the_applied_set_and_a_resume_still_matches():
    files = [
        _m("0001", "a", "CREATE TABLE a (id INT);"),
        _m("0002", "b", "CREATE TABLE b (x INT);"),
    ]
    fresh = _build(files, {})
    half = _build(files, {"0001": files[0].checksum}, orgs=("x", "y"), code="git def")
    done = _build(files, {v: m.checksum for v, m in zip(("0001", "0002"), files, strict=True)})
    # Resumed after 1 or 2 files: accepted; orgs and code version are not in the id.
    assert half.plan_id != fresh.plan_id and [p.version for p in half.pending] == ["0002"]
    assert plan_lib.match_plan(fresh, fresh.plan_id) == 0
    assert plan_lib.match_plan(half, fresh.plan_id) == 1
    assert plan_lib.match_plan(done, fresh.plan_id) == 2
    assert plan_lib.match_plan(done, half.plan_id) == 1
    # A "nothing pending" plan does not cover a file whose tracking row was deleted since.
    assert plan_lib.match_plan(half, done.plan_id) is None
    with pytest.raises(plan_lib.PlanRefused, match=r"no longer applied .*`'0002'`"):
        plan_lib.verify(half, done.plan_id, done.target)
    # Applied out of order (0002 without 0001) is not a resume of the fresh plan.
    skipped = _build(files, {"0002": files[1].checksum})
    assert plan_lib.match_plan(skipped, fresh.plan_id) is None
    # Another database (project ref) is another plan.
    other_db = _build(files, {}, ref="other-db")
    assert plan_lib.match_plan(other_db, fresh.plan_id) is None
    with pytest.raises(
        plan_lib.PlanRefused, match="Supabase project ref `'sandbox'` -> `'other-db'`"
    ):
        plan_lib.verify(other_db, fresh.plan_id, fresh.target)
    assert _build(files, {}, env="stage").plan_id != fresh.plan_id
    assert _build([*files, _m("0003", "c", "SELECT 1;")], {}).plan_id != fresh.plan_id
    edited = [files[0], _m("0002", "b", "CREATE TABLE b (y INT);")]
    assert _build(edited, {}).plan_id != fresh.plan_id
    unknown = _build(files, {"0009": "f" * 64})
    assert unknown.target.unknown_applied == ("0009",) and unknown.plan_id != fresh.plan_id


def test_gaps_and_non_atomic_files_block_the_plan():
    files = [_m("0001", "a", "CREATE TABLE a (id INT);"), _m("0002", "b", "COMMIT;")]
    gap = _build(files, {"0002": files[1].checksum})
    assert gap.blocked and "0001_a.sql is pending but version `'0002'` is applied" in gap.gaps[0]
    atomic = _build(files, {})
    assert atomic.blocked and "0002_b.sql line 1: COMMIT" in atomic.not_atomic[0]


def test_a_fence_holds_sql_with_backticks():
    text = "SELECT '```' AS x;"
    fenced = plan_lib.fence(text, "sql")
    assert fenced.startswith("````sql\n") and fenced.endswith("\n````")


def test_code_version_prefers_the_build_variable(tmp_path):
    assert plan_lib.code_version({"PLATFORM_OPS_CODE_VERSION": "1.2.3+abc"}) == "1.2.3+abc"
    assert plan_lib.code_version({"PLATFORM_OPS_CODE_VERSION": "x<b>"}) == "x?b?"
    assert plan_lib.code_version({}).startswith("git ")  # this checkout
    assert plan_lib.code_version({}, root=tmp_path).startswith(("platform-ops ", "unknown"))


@dg.op(ins={"after": dg.In(dg.Nothing)}, config_schema={"path": str})
def deploy_a_file(context) -> None:
    """A deploy landing between the preflight's check and the first migration."""
    Path(context.op_config["path"]).write_text("CREATE TABLE between_steps (id INTEGER);\n")


@dg.job
def preflight_then_deploy_then_migrate() -> None:
    apply_migrations(deploy_a_file(release_preflight()))


def test_a_file_deployed_after_the_preflight_is_refused_before_the_first_write(
    instance, server, mig_dir
):
    md = _plan(instance, mig_dir)
    job = dg.Definitions(
        jobs=[preflight_then_deploy_then_migrate], resources=build_resources()
    ).get_job_def("preflight_then_deploy_then_migrate")
    ops = {
        "release_preflight": {"config": {"plan_id": md["plan_id"]}},
        "deploy_a_file": {"config": {"path": str(mig_dir / "0004_between_steps.sql")}},
        "apply_migrations": {"config": {"migrations_dir": str(mig_dir)}},
    }
    server.clear_requests()
    result = job.execute_in_process(
        instance=instance, run_config=_config("test", ops), raise_on_error=False
    )
    assert not result.success
    assert "file added: 0004_between_steps.sql" in run_text(result)
    failed = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failed == ["apply_migrations"]
    assert _writes(server) == []


def test_the_plan_run_shows_no_secret(instance, server, mig_dir, capfd):
    md = _plan(instance, mig_dir)
    (run,) = instance.get_runs(dg.RunsFilter(tags={plan_lib.PLAN_ID_TAG: md["plan_id"]}))
    blob = repr([r.event_log_entry for r in instance.get_records_for_run(run.run_id).records])
    blob += repr(run.run_config) + repr(dict(run.tags))
    out, err = capfd.readouterr()
    for text in (blob, out, err):
        assert TEST_API_KEY not in text and TEST_SUPABASE_TOKEN not in text
    assert md["plan_id"] in blob and server.base_url in blob  # the metadata itself is there
