"""Optional tracing: spans per API call, W3C traceparent received by the sandbox, off by default."""

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestration.definitions import defs
from orchestration.policies import tracing
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
