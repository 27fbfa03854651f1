"""Optional OpenTelemetry tracing: spans around runs' API calls, W3C ``traceparent`` sent out.

Off by default (``PLATFORM_OPS_TRACING`` unset). When on, every platform/Supabase call is a client
span and carries ``traceparent``, so the platform's own traces join ours. Exporting is the
deployment's choice: ``PLATFORM_OPS_TRACING=console`` prints spans, ``otlp`` uses the standard
``OTEL_EXPORTER_OTLP_*`` variables; tests install an in-memory exporter with ``configure``.
OpenTelemetry is imported only when tracing is on.
"""

import contextlib
import os
from collections.abc import Iterator, MutableMapping
from typing import Any

TRACING_ENV = "PLATFORM_OPS_TRACING"
SERVICE_NAME = "platform-ops"

_provider: Any = None


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

    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
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
    with tracer.start_as_current_span(name, kind=trace.SpanKind.CLIENT) as current:
        for key, value in attributes.items():
            if value is not None:
                current.set_attribute(key, value)
        if headers is not None:
            propagate.inject(headers)
        yield current
