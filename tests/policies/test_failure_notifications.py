"""One webhook message per failed run, with the facts an operator needs and no secret."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from dev.sandbox.server import Fault
from orchestration.definitions import defs
from orchestration.policies.notifications import failed_steps_of
from orchestration.policies.resources import FailureNotifierConfig
from orchestration.policies.sensors import notify_run_failures
from resources.record_store import RecordStoreResource
from tests.conftest import TEST_API_KEY, run_config


@pytest.fixture
def webhook():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"body": json.loads(body), "key": self.headers.get("Idempotency-Key")})
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def _evaluate(instance, run_id, store_url, hook_url):
    run = instance.get_run_by_id(run_id)
    failure = next(
        r.event_log_entry.dagster_event
        for r in instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.RUN_FAILURE
        ).records
    )
    context = dg.build_run_status_sensor_context(
        sensor_name="notify_run_failures",
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=run,
        resources={
            "record_store": RecordStoreResource(url=store_url),
            "policies_failure_notifier": FailureNotifierConfig(
                webhook_url=hook_url, ui_url="http://127.0.0.1:3000"
            ),
        },
    ).for_run_failure()
    notify_run_failures(context)


def test_one_message_per_failed_run_without_secrets(
    instance, platform_env, sqlite_store_url, webhook
):
    hook_url, received = webhook
    platform_env.add_fault(
        Fault(
            method="POST",
            path="/admin/bootstrap",
            status=400,
            body={"detail": f"bad {TEST_API_KEY}"},
        )
    )
    result = defs.get_job_def("bootstrap").execute_in_process(
        instance=instance, run_config=run_config(), raise_on_error=False
    )
    assert not result.success

    _evaluate(instance, result.run_id, sqlite_store_url, hook_url)
    _evaluate(instance, result.run_id, sqlite_store_url, hook_url)  # re-evaluated tick

    assert len(received) == 1
    body = received[0]["body"]
    assert body["job"] == "bootstrap" and body["environment"] == "test"
    assert body["route"] == "ops"  # the api_call recipe's route
    assert body["failed_steps"] == ["run_bootstrap"]
    assert "HTTP 400" in body["error"]
    assert body["url"] == f"http://127.0.0.1:3000/runs/{result.run_id}"
    assert "text" in body and "blocks" in body
    assert TEST_API_KEY not in json.dumps(body)
    assert received[0]["key"] == f"run-failure:{result.run_id}"


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
