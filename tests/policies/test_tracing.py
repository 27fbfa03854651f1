"""Optional tracing: spans per API call, W3C traceparent received by the sandbox, off by default.

The first tests install an in-memory exporter (exact span contents); the last two switch tracing
on as a deployment does, ``PLATFORM_OPS_TRACING=console`` / ``otlp`` (+ ``OTEL_EXPORTER_OTLP_*``)
in the environment of a real ``dagster job execute`` run (one subprocess each) and of the
root-span sensor (evaluated in this process, on that run's instance).
"""

import io
import json
import subprocess
import time

import dagster as dg
import pytest
import yaml
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dev.sandbox.server import Fault
from orchestration.definitions import defs
from resources import tracing
from tests.conftest import TEST_API_KEY, run_config
from tests.job_cli import REPO, dagster_home, instance_at, job_env, job_execute_cmd
from tests.policies.otlp_collector import OtlpCollector


@pytest.fixture
def exporter(monkeypatch):
    monkeypatch.delenv(tracing.TRACING_ENV, raising=False)
    memory = InMemorySpanExporter()
    tracing.configure(memory)
    yield memory
    tracing.reset()


def test_api_calls_are_spans_and_send_traceparent(instance, platform_env, exporter):
    result = defs.get_job_def("bootstrap").execute_in_process(
        instance=instance, run_config=run_config()
    )
    (call,) = [r for r in platform_env.requests if r["path"] == "/admin/bootstrap"]
    spans = [s for s in exporter.get_finished_spans() if s.name == "POST /admin/bootstrap"]
    assert len(spans) == 1
    span = spans[0]
    assert span.attributes["dagster.run_id"] == result.run_id
    version, trace_id, span_id, _flags = call["traceparent"].split("-")
    assert version == "00"
    assert trace_id == f"{span.context.trace_id:032x}"
    assert span_id == f"{span.context.span_id:016x}"


def test_off_by_default_sends_no_traceparent(instance, platform_env, monkeypatch):
    monkeypatch.delenv(tracing.TRACING_ENV, raising=False)
    tracing.reset()
    assert not tracing.enabled()
    defs.get_job_def("bootstrap").execute_in_process(instance=instance, run_config=run_config())
    assert all(r["traceparent"] is None for r in platform_env.requests)


def test_a_real_run_gets_one_root_span_parenting_its_api_calls(instance, platform_env, exporter):
    from opentelemetry.trace import SpanKind

    from orchestration.policies.sensors import trace_finished_runs

    before = time.time() - 1
    result = defs.get_job_def("bootstrap").execute_in_process(
        instance=instance, run_config=run_config()
    )
    context = dg.build_sensor_context(
        instance=instance, cursor=json.dumps({"after": before, "ids": []})
    )
    tick = trace_finished_runs.evaluate_tick(context)
    assert json.loads(tick.cursor)["ids"] == [result.run_id]
    spans = exporter.get_finished_spans()
    roots = [s for s in spans if s.parent is None]
    assert [r.name for r in roots] == ["bootstrap"]
    (root,) = roots
    assert root.kind == SpanKind.INTERNAL
    assert root.attributes["dagster.run_id"] == result.run_id
    assert root.attributes["dagster.job_name"] == "bootstrap"
    assert root.attributes["deployment.environment"] == "test"
    assert root.context.trace_id == int(result.run_id.replace("-", ""), 16)
    record = instance.get_run_record_by_id(result.run_id)
    assert root.start_time == int(record.start_time * 1e9) and root.end_time >= root.start_time
    calls = [s for s in spans if s.name == "POST /admin/bootstrap"]
    assert calls and all(
        c.parent.span_id == root.context.span_id and c.context.trace_id == root.context.trace_id
        for c in calls
    )
    (request,) = [r for r in platform_env.requests if r["path"] == "/admin/bootstrap"]
    assert request["traceparent"].split("-")[1] == f"{root.context.trace_id:032x}"

    # the next tick records nothing again: one root span per run
    again = trace_finished_runs.evaluate_tick(
        dg.build_sensor_context(instance=instance, cursor=tick.cursor)
    )
    assert again.skip_message == "no newly finished runs"
    assert len([s for s in exporter.get_finished_spans() if s.parent is None]) == 1


def test_root_span_sensor_skips_when_tracing_is_off(instance, monkeypatch):
    from orchestration.policies.sensors import trace_finished_runs

    monkeypatch.delenv(tracing.TRACING_ENV, raising=False)
    tracing.reset()
    tick = trace_finished_runs.evaluate_tick(dg.build_sensor_context(instance=instance))
    assert "tracing is off" in tick.skip_message


# --- Through the env a deployment sets: real `dagster job execute` runs, real exporters ---------


def _console_spans(text: str) -> list[dict]:
    """The spans ``ConsoleSpanExporter`` printed (one indented JSON object each) in ``text``."""
    decoder = json.JSONDecoder()
    spans, at = [], 0
    while (at := text.find('{\n    "name"', at)) != -1:
        span, at = decoder.raw_decode(text, at)
        spans.append(span)
    return spans


@pytest.fixture
def deployment(tmp_path, platform_env, monkeypatch):
    """A DAGSTER_HOME with the repo's dagster.yaml, the run config file, tracing state reset.

    The sandbox variables are in this process's environment (``platform_env``), which the CLI
    subprocess inherits; each test adds the tracing variables a deployment would set.
    """
    monkeypatch.delenv(tracing.TRACING_ENV, raising=False)
    tracing.reset()
    config = tmp_path / "run_config.yaml"
    config.write_text(yaml.safe_dump(run_config()))
    yield dagster_home(tmp_path), config
    tracing.reset()


def _execute(home, config, env) -> subprocess.CompletedProcess:
    """``dagster job execute -j bootstrap`` as an operator runs it (a failed run exits 1)."""
    return subprocess.run(
        job_execute_cmd("bootstrap", config), cwd=REPO, env=job_env(home, env),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _root_spans_tick(monkeypatch, home, env, since: float, exporter=None) -> dg.DagsterRun:
    """One tick of the real ``trace_finished_runs`` sensor, tracing switched on by ``env``; the
    exporter is the one ``env`` chooses, or ``exporter`` (a console exporter printing to a
    stream the test reads: the process's stdout is pytest's)."""
    from orchestration.policies.sensors import trace_finished_runs

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    tracing.reset()  # the exporter is chosen from the env on first use, as in a fresh process
    if exporter is not None:
        tracing.configure(exporter)
    with instance_at(home) as instance:
        (run,) = instance.get_runs()
        context = dg.build_sensor_context(
            instance=instance, cursor=json.dumps({"after": since, "ids": []})
        )
        tick = trace_finished_runs.evaluate_tick(context)
    assert json.loads(tick.cursor)["ids"] == [run.run_id]
    return run


def test_console_tracing_prints_the_runs_spans_and_its_root_span(
    deployment, platform_env, monkeypatch
):
    home, config = deployment
    env = {tracing.TRACING_ENV: "console"}
    since = time.time() - 1
    proc = _execute(home, config, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (call,) = [s for s in _console_spans(proc.stdout) if s["name"] == "POST /admin/bootstrap"]

    printed = io.StringIO()
    run = _root_spans_tick(monkeypatch, home, env, since, ConsoleSpanExporter(out=printed))
    (root,) = _console_spans(printed.getvalue())

    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert root["name"] == "bootstrap" and root["parent_id"] is None
    assert root["kind"] == "SpanKind.INTERNAL"
    assert root["status"]["status_code"] == "UNSET"  # a run that succeeded is no error
    assert root["context"]["trace_id"] == "0x" + run.run_id.replace("-", "")
    assert root["attributes"]["dagster.run_status"] == "SUCCESS"
    assert root["attributes"]["deployment.environment"] == "test"
    # The run's API call, printed by the run's own process, hangs under that root.
    assert call["context"]["trace_id"] == root["context"]["trace_id"]
    assert call["parent_id"] == root["context"]["span_id"]
    assert call["attributes"]["dagster.run_id"] == run.run_id
    (request,) = [r for r in platform_env.requests if r["path"] == "/admin/bootstrap"]
    assert request["traceparent"] == (
        f"00-{call['context']['trace_id'][2:]}-{call['context']['span_id'][2:]}-01"
    )
    # What the console path printed, the run's spans and the root span, holds no credential.
    assert TEST_API_KEY not in proc.stdout and TEST_API_KEY not in printed.getvalue()


def test_otlp_tracing_exports_a_failed_runs_spans_with_error_status(
    deployment, platform_env, monkeypatch
):
    home, config = deployment
    platform_env.add_fault(
        Fault(method="POST", path="/admin/bootstrap", status=400, body={"detail": "no"})
    )
    with OtlpCollector() as collector:
        env = {tracing.TRACING_ENV: "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint}
        since = time.time() - 1
        proc = _execute(home, config, env)
        assert proc.returncode != 0  # the run failed, and the CLI says so
        (call,) = collector.named("POST /admin/bootstrap")  # exported by the run's process

        run = _root_spans_tick(monkeypatch, home, env, since)
        (root,) = collector.named("bootstrap")

    assert run.status == dg.DagsterRunStatus.FAILURE
    assert set(collector.paths) == {"/v1/traces"}
    assert root.parent_span_id == 0 and root.kind == "SPAN_KIND_INTERNAL"
    assert (root.status, root.status_message) == ("STATUS_CODE_ERROR", "run failure")
    assert root.trace_id == int(run.run_id.replace("-", ""), 16)
    assert root.attributes["dagster.run_status"] == "FAILURE"
    assert root.attributes["deployment.environment"] == "test"
    assert root.service == call.service == tracing.SERVICE_NAME
    assert (call.trace_id, call.parent_span_id) == (root.trace_id, root.span_id)
    assert call.kind == "SPAN_KIND_CLIENT" and call.status == "STATUS_CODE_ERROR"
    assert TEST_API_KEY.encode() not in b"".join(collector.bodies)
