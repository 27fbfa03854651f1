"""Optional OpenTelemetry tracing: spans around runs' API calls, W3C ``traceparent`` sent out.

Off by default (``PLATFORM_OPS_TRACING`` unset). When on, every platform/Supabase call is a client
span and carries ``traceparent``, so the platform's own traces join ours.

A span per run: a run's trace id is its run id (a UUID's 128 bits) and its root span id is derived
from it, so every process of the run (any executor, any step) parents its API-call spans to the
same root without passing anything around. The root span itself (named for the job; run id, job
and environment as attributes; start and end from the run record) is recorded once the run has
finished, by the ``trace_finished_runs`` sensor (``orchestration/policies/sensors.py``).
Exporting is the deployment's choice: ``PLATFORM_OPS_TRACING=console`` prints spans, ``otlp``
uses the standard ``OTEL_EXPORTER_OTLP_*`` variables; tests install an in-memory exporter with
``configure``. OpenTelemetry is imported only when tracing is on.
"""

import contextlib
import contextvars
import hashlib
import os
import uuid
from collections.abc import Iterator, MutableMapping
from typing import Any

TRACING_ENV = "PLATFORM_OPS_TRACING"
SERVICE_NAME = "platform-ops"

_provider: Any = None
# (trace_id, span_id) the next span must get: set only while recording a run's root span.
_forced_ids: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "platform_ops_forced_ids", default=None
)


def run_trace_id(run_id: str) -> int:
    """The run's trace id: the run id's UUID bits (so a trace is found from the run page)."""
    try:
        value = uuid.UUID(run_id).int
    except ValueError:
        value = int(hashlib.sha256(run_id.encode()).hexdigest()[:32], 16)
    return value or 1


def run_root_span_id(run_id: str) -> int:
    return int(hashlib.sha256(f"root:{run_id}".encode()).hexdigest()[:16], 16) or 1


def _id_generator() -> Any:
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class RunIdGenerator(RandomIdGenerator):
        """Random ids, except the run-derived ones while a root span is being recorded."""

        def generate_trace_id(self) -> int:
            forced = _forced_ids.get()
            return forced[0] if forced else super().generate_trace_id()

        def generate_span_id(self) -> int:
            forced = _forced_ids.get()
            return forced[1] if forced else super().generate_span_id()

    return RunIdGenerator()


def enabled() -> bool:
    return _provider is not None or bool(os.environ.get(TRACING_ENV, "").strip())


def configure(exporter: Any = None) -> Any:
    """Install the tracer provider once (``exporter`` overrides the env choice); return it."""
    global _provider
    if _provider is not None and exporter is None:
        return _provider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({"service.name": SERVICE_NAME}), id_generator=_id_generator()
    )
    if exporter is None:
        kind = os.environ.get(TRACING_ENV, "").strip().lower()
        if kind == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporter = ConsoleSpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _provider = provider
    return provider


def reset() -> None:
    """Forget the provider (tests)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
    _provider = None


@contextlib.contextmanager
def span(
    name: str, headers: MutableMapping[str, str] | None = None, **attributes: Any
) -> Iterator[Any]:
    """A span when tracing is on (injecting ``traceparent`` into ``headers``), else nothing."""
    if not enabled():
        yield None
        return
    from opentelemetry import propagate, trace

    tracer = trace.get_tracer(SERVICE_NAME, tracer_provider=configure())
    parent = None
    run_id = attributes.get("dagster.run_id")
    if run_id and not trace.get_current_span().get_span_context().is_valid:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(_run_root_context(run_id)))
    with tracer.start_as_current_span(name, context=parent, kind=trace.SpanKind.CLIENT) as current:
        for key, value in attributes.items():
            if value is not None:
                current.set_attribute(key, value)
        if headers is not None:
            propagate.inject(headers)
        yield current


def _run_root_context(run_id: str) -> Any:
    from opentelemetry.trace import SpanContext, TraceFlags

    return SpanContext(
        run_trace_id(run_id), run_root_span_id(run_id), is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )  # fmt: skip


def record_run_span(
    run_id: str,
    job_name: str,
    start: float,
    end: float,
    *,
    failed: bool = False,
    error: str | None = None,
    **attributes: Any,
) -> Any:
    """Record the run's root span (ids derived from ``run_id``; times in epoch seconds)."""
    from opentelemetry import context, trace
    from opentelemetry.trace import Status, StatusCode

    tracer = trace.get_tracer(SERVICE_NAME, tracer_provider=configure())
    token = _forced_ids.set((run_trace_id(run_id), run_root_span_id(run_id)))
    try:
        root = tracer.start_span(
            job_name, context=context.Context(), kind=trace.SpanKind.INTERNAL,
            start_time=int(start * 1e9),
            attributes={k: v for k, v in attributes.items() if v is not None},
        )  # fmt: skip
    finally:
        _forced_ids.reset(token)
    if failed:
        root.set_status(Status(StatusCode.ERROR, (error or "run failed")[:300]))
    root.end(end_time=int(end * 1e9))
    return root
