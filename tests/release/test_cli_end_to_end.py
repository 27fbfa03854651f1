"""`dagster job execute -j release` as an operator runs it: subprocess, the repo's dagster.yaml."""

import dagster as dg
import pytest

from tests.conftest import TEST_API_KEY, TEST_SUPABASE_TOKEN
from tests.job_cli import REPO, dagster_home, instance_at, job_execute, runs_of


@pytest.mark.slow
def test_dagster_job_execute_release(sandbox, tmp_path):
    home = dagster_home(tmp_path)
    env = {
        "CA_API_URL": sandbox.base_url,
        "CA_ROOT_API_KEY": TEST_API_KEY,
        "SUPABASE_ACCESS_TOKEN": TEST_SUPABASE_TOKEN,
    }
    proc = job_execute(home, "release", REPO / "config" / "release-test.yaml", env)
    assert TEST_API_KEY not in proc.stdout + proc.stderr

    state = sandbox.state()
    assert all(o["syncs"] == 1 for o in state["orgs"].values())
    assert state["bootstrap"]["last_mode"] == "fresh"

    (run,) = runs_of(home, "release")
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags["platform/environment"] == "test"
    assert run.tags["platform/kind"] == "release"


def test_platform_ops_home_writes_instance_settings(tmp_path, monkeypatch):
    from orchestration.cli import main

    assert main(["home", "--dir", str(tmp_path / "h")]) == 0
    assert (tmp_path / "h" / "dagster.yaml").read_text() == (REPO / "dagster.yaml").read_text()
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    with pytest.raises(SystemExit, match="DAGSTER_PG_URL"):
        main(["home", "--postgres", "--dir", str(tmp_path / "p")])


@pytest.mark.postgres
def test_repo_postgres_yaml_loads_against_local_server(pg_url, tmp_path):
    home = dagster_home(tmp_path, source=REPO / "dagster.postgres.yaml")
    with instance_at(home, DAGSTER_PG_URL=pg_url) as instance:
        assert "Postgres" in type(instance.run_storage).__name__
        config = instance.run_coordinator.get_run_queue_config()
        limits = config.tag_concurrency_limits
        assert {
            "key": "platform/release-environment",
            "value": {"applyLimitPerUniqueValue": True},
            "limit": 1,
        } in limits
