"""Optional tracing: spans per API call, W3C traceparent received by the sandbox, off by default."""

import dagster as dg
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestration.definitions import defs
from resources import tracing
from tests.conftest import run_config


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
    import json
    import time

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
