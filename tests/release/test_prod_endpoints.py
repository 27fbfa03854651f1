"""Production talks only to production: no variable moves a prod endpoint, and the preflight
reports the URLs the clients really call.

"prod" is pointed at a stand-in sandbox on loopback (its fixed endpoints), so even a broken
guard sends nothing beyond 127.0.0.1; the override variables point at another sandbox, which
must hear nothing at all.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dev.sandbox.server import SandboxServer
from orchestration.definitions import defs
from resources.environments import ENDPOINT_OVERRIDES, ENVIRONMENTS, Environment
from tests.conftest import run_config
from tests.run_text import run_text
from tests.support.results import step_metadata
from tests.support.sandbox import running_sandbox

PROD_CONFIRMED = {"env_extra": {"confirm_prod": True}}


@pytest.fixture
def prod_standins(tmp_path, monkeypatch, platform_env) -> Iterator[tuple[SandboxServer, ...]]:
    """Two loopback sandboxes as prod's fixed platform and Supabase endpoints."""
    (tmp_path / "prod-api").mkdir()
    (tmp_path / "prod-db").mkdir()
    with (
        running_sandbox(tmp_path / "prod-api", orgs=3) as api,
        running_sandbox(tmp_path / "prod-db", orgs=0) as db,
    ):
        monkeypatch.setitem(
            ENVIRONMENTS,
            "prod",
            Environment("prod", "cloudact-prod", "-prod", api.base_url, db.base_url),
        )
        for override in ENDPOINT_OVERRIDES:
            monkeypatch.delenv(override.variable, raising=False)
        monkeypatch.setenv("SUPABASE_PROJECT_REF", "sandbox")
        yield api, db


def _with_reviewed_plan(instance) -> dict:
    """Prod run config carrying the plan id of a release_plan run (release and migrate on prod
    apply only a reviewed plan)."""
    planned = defs.get_job_def("release_plan").execute_in_process(
        instance=instance, run_config=run_config("prod", **PROD_CONFIRMED), raise_on_error=False
    )
    assert planned.success, run_text(planned)
    plan_id = step_metadata(planned, "plan_release")["plan_id"]
    return run_config(
        "prod", **PROD_CONFIRMED, ops={"release_preflight": {"config": {"plan_id": plan_id}}}
    )


def _override_value(variable: str, sandbox: SandboxServer) -> str:
    # BIGQUERY_EMULATOR_HOST takes host:port; the URL variables take a base URL.
    return (
        sandbox.base_url.removeprefix("http://") if variable.endswith("_HOST") else sandbox.base_url
    )


@pytest.mark.parametrize("job", ["migrate", "release", "bootstrap", "org_sync_all"])
@pytest.mark.parametrize("variable", [o.variable for o in ENDPOINT_OVERRIDES])
def test_every_override_is_refused_for_prod_and_nothing_is_sent(
    instance, platform_env, prod_standins, monkeypatch, job, variable
):
    value = _override_value(variable, platform_env)
    monkeypatch.setenv(variable, value)
    result = defs.get_job_def(job).execute_in_process(
        instance=instance, run_config=run_config("prod", **PROD_CONFIRMED), raise_on_error=False
    )
    assert not result.success
    text = run_text(result)
    assert f"{variable} is set, but environment 'prod' has fixed endpoints" in text
    assert "Nothing was sent" in text
    assert value not in text  # a URL may carry credentials: never echoed
    # Refused at resource init: no step ran, and no server heard anything.
    assert not [e for e in result.all_events if e.event_type_value == "STEP_START"]
    assert platform_env.requests == []
    api, db = prod_standins
    assert api.requests == [] and db.requests == []


def test_an_override_equal_to_the_fixed_endpoint_changes_nothing(
    instance, platform_env, prod_standins, monkeypatch
):
    api, db = prod_standins
    monkeypatch.setenv("CA_API_URL", api.base_url + "/")
    monkeypatch.setenv("SUPABASE_API_URL", db.base_url)
    result = defs.get_job_def("migrate").execute_in_process(
        instance=instance, run_config=_with_reviewed_plan(instance), raise_on_error=False
    )
    assert result.success, run_text(result)


def test_preflight_reports_the_urls_the_clients_call(instance, platform_env, prod_standins):
    api, db = prod_standins
    result = defs.get_job_def("release").execute_in_process(
        instance=instance, run_config=_with_reviewed_plan(instance), raise_on_error=False
    )
    assert result.success, run_text(result)
    reported = step_metadata(result, "release_preflight")
    assert reported["environment"] == "prod"
    assert reported["api_url"] == api.base_url
    assert reported["supabase_api_url"] == db.base_url
    # Every platform call reached the reported platform URL, every SQL call the Supabase one,
    # and nothing reached the test sandbox (CA_API_URL is unset for prod).
    assert api.requests and all(r["path"].startswith("/admin/") for r in api.requests)
    assert db.requests and all(r["path"].startswith("/v1/projects/") for r in db.requests)
    assert platform_env.requests == []
    assert all(r["authorized"] for r in api.requests + db.requests)
