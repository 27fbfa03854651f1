"""One webhook message per failed run, with the facts an operator needs and no secret.

Configured as a user configures it: ``PLATFORM_OPS_FAILURE_WEBHOOK_URL``, ``DAGSTER_UI_URL`` and
``RECORD_STORE_URL`` set before the definitions are built, the real ``notify_run_failures``
sensor evaluated on a real failed run with the resources those definitions carry.
"""

import json

import dagster as dg
import pytest
import sqlalchemy as sa

from dev.sandbox.server import Fault
from orchestration.definitions import defs
from orchestration.policies.notifications import failed_steps_of
from orchestration.policies.resources import UI_URL_ENV, WEBHOOK_ENV
from resources.db import make_engine
from resources.notifier import outbox
from tests.conftest import TEST_API_KEY, run_config
from tests.policies.deployment import definitions_loaded_with
from tests.support.webhook import WebhookReceiver

UI_URL = "https://dagster.ops.example.test/"  # the trailing slash an operator may well type


def _fail_and_notify(monkeypatch, instance, sandbox, env, secret_in_error="") -> str:
    """One failed ``bootstrap`` run and two evaluations of the real run-failure sensor (a
    re-evaluated tick), everything from the definitions as a code server started with ``env``
    builds them: the job's resources and the sensor's (notifier, record store). The run id."""
    sandbox.add_fault(
        Fault(
            method="POST",
            path="/admin/bootstrap",
            status=400,
            body={"detail": f"bad {TEST_API_KEY}{secret_in_error}"},
        )
    )
    with definitions_loaded_with(monkeypatch, env) as loaded:
        result = loaded.get_job_def("bootstrap").execute_in_process(
            instance=instance, run_config=run_config(), raise_on_error=False
        )
        assert not result.success
        sensor = loaded.get_sensor_def("notify_run_failures")
        resources = {key: loaded.resources[key] for key in sensor.required_resource_keys}
        run = instance.get_run_by_id(result.run_id)
        (failure,) = instance.get_records_for_run(
            result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE
        ).records
        for _tick in range(2):
            context = dg.build_run_status_sensor_context(
                sensor_name=sensor.name,
                dagster_event=failure.event_log_entry.dagster_event,
                dagster_instance=instance,
                dagster_run=run,
                resources=resources,
            ).for_run_failure()
            sensor(context)
    return result.run_id


def test_one_message_per_failed_run_from_the_env_a_user_sets(
    monkeypatch, instance, platform_env, sqlite_store_url
):
    with WebhookReceiver() as hook:
        env = {WEBHOOK_ENV: hook.url, UI_URL_ENV: UI_URL, "RECORD_STORE_URL": sqlite_store_url}
        # The webhook URL is a secret too (it is the credential of a Slack channel).
        run_id = _fail_and_notify(
            monkeypatch, instance, platform_env, env, secret_in_error=f" via {hook.url}"
        )

    assert hook.acknowledged() == {f"run-failure:{run_id}": 1}
    ((_key, body),) = hook.posts
    assert body["job"] == "bootstrap" and body["environment"] == "test"
    assert body["route"] == "ops"  # the api_call recipe's route
    assert body["failed_steps"] == ["run_bootstrap"]
    assert body["error"] == (
        "resources.http_api.ApiError: platform API (test): POST /admin/bootstrap failed with "
        "HTTP 400: bad [REDACTED] via [REDACTED] (not retried: a 400 will not change on retry)"
    )
    link = f"https://dagster.ops.example.test/runs/{run_id}"
    assert body["url"] == link and f"<{link}|open run>" in body["text"]
    assert body["blocks"][0]["text"]["text"] == body["text"]
    assert body["blocks"][1]["elements"][0]["text"] == f"run `{run_id}`"
    sent = json.dumps(body)
    assert TEST_API_KEY not in sent and hook.url not in sent and "127.0.0.1" not in sent


@pytest.mark.parametrize("ui_url", [None, ""], ids=["ui-url-unset", "ui-url-empty"])
def test_without_a_webhook_the_message_is_logged_and_links_the_default_ui(
    monkeypatch, instance, platform_env, sqlite_store_url, ui_url
):
    """Unset or set but empty (compose passes ``DAGSTER_UI_URL=`` through as ""): the default
    UI, never a link relative to nothing (``/runs/<id>``)."""
    env = {WEBHOOK_ENV: None, UI_URL_ENV: ui_url, "RECORD_STORE_URL": sqlite_store_url}
    run_id = _fail_and_notify(monkeypatch, instance, platform_env, env)
    engine = make_engine(sqlite_store_url)
    with engine.connect() as conn:
        (row,) = conn.execute(sa.select(outbox)).mappings().all()
    engine.dispose()
    assert row["dedupe_key"] == f"run-failure:{run_id}"
    assert row["delivered_at"] is not None  # settled as "logged", not left pending forever
    assert row["payload"]["url"] == f"http://127.0.0.1:3000/runs/{run_id}"


def test_a_step_whose_retries_ran_out_is_reported_by_its_own_error(instance):
    """Dagster wraps the last error as "Exceeded max_retries of N"; the page names the cause."""

    @dg.op(retry_policy=dg.RetryPolicy(max_retries=1))
    def flaky() -> None:
        raise RuntimeError("HTTP 503 from POST /admin/bootstrap")

    @dg.job
    def retried_job() -> None:
        flaky()

    result = retried_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    steps, error = failed_steps_of(instance, result.run_id)
    assert steps == ["flaky"]
    assert error == "RuntimeError: HTTP 503 from POST /admin/bootstrap\n"
    assert "max_retries" not in error


def test_sensor_is_registered_and_running_by_default():
    sensor = defs.get_sensor_def("notify_run_failures")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
