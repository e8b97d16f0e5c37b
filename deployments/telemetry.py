"""OpenTelemetry tracing: one tracer provider per process, configured from the standard ``OTEL_*`` env.

``OTEL_TRACES_EXPORTER`` (comma-separated) picks the exporters: ``none`` (default), ``console``, ``otlp``
(``OTEL_EXPORTER_OTLP_PROTOCOL`` = ``grpc`` (default) or ``http/protobuf``, ``OTEL_EXPORTER_OTLP_ENDPOINT``)
and ``memory`` (ours, for tests: spans kept in this process, read back with :func:`finished_spans`).
The SDK itself reads ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``; ``OTEL_SDK_DISABLED=true`` turns everything off.

A job's trace crosses processes in two ways, both as a W3C ``traceparent`` carrier (a small dict of strings):
:func:`inject` in the caller, passed as the ``trace=`` keyword of a DeploymentHandle call or stored in the job
record (``record["trace"]``), and :func:`attach` on the other side.

The provider is this module's own, not necessarily the global one: inside a replica Ray Serve may already
have installed its own global provider (``RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH``), and OpenTelemetry lets the
global provider be set only once. Ours becomes the global one only where none was set.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

ENV_EXPORTER = "OTEL_TRACES_EXPORTER"
ENV_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
# Ray Serve's own tracing (ray/serve/_private/constants.py, Ray 2.60): off unless the import path is set.
SERVE_EXPORTER_ENV = "RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH"
SERVE_RATIO_ENV = "RAY_SERVE_TRACING_SAMPLING_RATIO"
SERVE_SPAN_PROCESSORS = "deployments.telemetry:serve_span_processors"
TRACER_NAME = "sonic-serve"

_PROPAGATOR = TraceContextTextMapPropagator()
_lock = threading.Lock()
_configured = False
_provider: Any = None          # opentelemetry.sdk.trace.TracerProvider when enabled
_tracer: trace.Tracer | None = None
_memory: Any = None            # InMemorySpanExporter, shared by our provider and Serve's (memory mode)


class _NoopSpan:
    """What :func:`span` gives when tracing is off: one shared object, no allocation per call."""

    def __enter__(self) -> trace.Span:
        return trace.INVALID_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


_NOOP = _NoopSpan()


def _exporter_names() -> list[str]:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    raw = os.environ.get(ENV_EXPORTER, "none")
    return [n for n in (part.strip().lower() for part in raw.split(",")) if n and n != "none"]


def _memory_exporter():
    global _memory
    if _memory is None:
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        _memory = InMemorySpanExporter()
    return _memory


def _otlp_exporter():
    protocol = os.environ.get(ENV_PROTOCOL, "grpc").strip().lower()
    if protocol == "http/json":  # no JSON encoding in the Python exporters; same port and path
        log.warning("%s=http/json is not supported by the Python OTLP exporter; using http/protobuf", ENV_PROTOCOL)
        protocol = "http/protobuf"
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        raise ValueError(f"{ENV_PROTOCOL} must be grpc or http/protobuf, not {protocol!r}")
    return OTLPSpanExporter()  # reads OTEL_EXPORTER_OTLP_ENDPOINT, _HEADERS, _TIMEOUT, _INSECURE itself


def span_processors() -> list:
    """Span processors for the exporters named by ``OTEL_TRACES_EXPORTER`` (empty when tracing is off)."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    processors = []
    for name in _exporter_names():
        if name == "memory":
            processors.append(SimpleSpanProcessor(_memory_exporter()))
        elif name == "console":
            processors.append(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))  # stdout of now
        elif name == "otlp":
            processors.append(BatchSpanProcessor(_otlp_exporter()))
        else:
            log.warning("%s: unknown exporter %r ignored (none|console|otlp|memory)", ENV_EXPORTER, name)
    return processors


def serve_span_processors() -> list:
    """For ``RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH=deployments.telemetry:serve_span_processors``: Ray Serve's
    own spans (proxy, router, replica) go to the same exporters as ours. Serve wants a function without
    arguments that returns a list of SpanProcessors."""
    return span_processors()


def _resource(service_name: str):
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    resource = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    return resource


def setup_tracing(service_name: str = "sonic-serve") -> None:
    """Configure tracing for this process from the env; later calls do nothing (see :func:`shutdown_tracing`).
    ``service_name`` applies unless ``OTEL_SERVICE_NAME`` or ``OTEL_RESOURCE_ATTRIBUTES`` name the service."""
    global _configured, _provider, _tracer
    with _lock:
        if _configured:
            return
        _configured = True
        try:
            processors = span_processors()
        except Exception:  # noqa: BLE001 - a bad tracing setting must not stop a replica from serving
            log.exception("tracing not started: bad OTEL_* settings")
            return
        if not processors:
            return
        from opentelemetry.sdk.trace import TracerProvider

        provider = TracerProvider(resource=_resource(service_name))  # sampler from OTEL_TRACES_SAMPLER[_ARG]
        for processor in processors:
            provider.add_span_processor(processor)
        _provider, _tracer = provider, provider.get_tracer(TRACER_NAME)
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(provider)  # for third-party instrumentation (e.g. ASGI middleware)
        log.info("tracing on: exporters %s", ",".join(_exporter_names()))


def shutdown_tracing() -> None:
    """Flush and drop this process's provider, so that :func:`setup_tracing` reads the env again."""
    global _configured, _provider, _tracer, _memory
    with _lock:
        if _provider is not None:
            _provider.shutdown()
        _configured, _provider, _tracer, _memory = False, None, None, None


def enabled() -> bool:
    return _tracer is not None


def _attribute(value: Any) -> Any:
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str | bool | int | float) for v in value):
        return list(value)
    if isinstance(value, Mapping):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def span(name: str, **attributes: Any):
    """Context manager: a child span of the current one (a new trace when there is none), made current
    while the block runs; an exception raised in it is recorded on the span. ``None`` attributes are
    skipped. A shared no-op when tracing is off."""
    if _tracer is None:
        return _NOOP
    attrs = {key: _attribute(value) for key, value in attributes.items() if value is not None}
    return _tracer.start_as_current_span(name, attributes=attrs)


def start_span(name: str, **attributes: Any) -> trace.Span:
    """A child span of the current one that is *not* made current and stays open until ``.end()``: for work
    that overlaps other spans (steps of a wavefront). ``INVALID_SPAN`` (whose ``end`` does nothing) when off."""
    if _tracer is None:
        return trace.INVALID_SPAN
    attrs = {key: _attribute(value) for key, value in attributes.items() if value is not None}
    return _tracer.start_span(name, attributes=attrs)


def carrier_of(span: trace.Span) -> dict[str, str]:
    """``span`` as a W3C carrier (see :func:`inject`); ``{}`` for a non-recording span."""
    carrier: dict[str, str] = {}
    if span.get_span_context().is_valid:
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def set_attributes(**attributes: Any) -> None:
    """Add attributes to the current span (no-op when none is recording)."""
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes({k: _attribute(v) for k, v in attributes.items() if v is not None})


def inject() -> dict[str, str]:
    """The current span as a W3C carrier (``traceparent``, ``tracestate``); ``{}`` when there is none."""
    carrier: dict[str, str] = {}
    if trace.get_current_span().get_span_context().is_valid:
        _PROPAGATOR.inject(carrier)
    return carrier


class attach:  # lower case: used like a function, ``with attach(carrier):``
    """Continue the trace of ``carrier`` (from :func:`inject`) inside the block: spans opened in it become
    children of the carrier's span, whatever span is current. Does nothing for an empty or invalid carrier."""

    __slots__ = ("carrier", "_token")

    def __init__(self, carrier: Mapping[str, str] | None):
        self.carrier = carrier
        self._token = None

    def __enter__(self) -> attach:
        if not self.carrier:
            return self
        ctx = _PROPAGATOR.extract(dict(self.carrier))
        parent = trace.get_current_span(ctx).get_span_context()
        if not parent.is_valid:
            return self
        self._token = otel_context.attach(ctx)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            otel_context.detach(self._token)
            self._token = None


def job_trace(record: dict[str, Any]) -> dict[str, str]:
    """Anchor a job's trace when it is queued: a ``job.submit`` span, ended at once (so it is exported even if
    the process dies later), under ``record["trace"]`` when the ingress stored one; its carrier replaces
    ``record["trace"]`` and is returned. Every run of the job (the first, and any resume after a restart)
    then opens its ``job`` span under this carrier, so all runs share one trace. ``{}`` when tracing is off."""
    with attach(record.get("trace")), span("job.submit", job_id=record.get("id"), tenant=record.get("tenant")):
        carrier = inject()
    if carrier:
        record["trace"] = carrier
    return carrier


def trace_ids() -> dict[str, str]:
    """``trace_id`` and ``span_id`` (hex) of the current span, for log lines; ``{}`` when there is none."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


def finished_spans() -> list[dict[str, Any]]:
    """Spans ended so far in this process (memory exporter only; ``[]`` otherwise), oldest first."""
    if _memory is None:
        return []
    spans = []
    for s in _memory.get_finished_spans():
        parent = s.parent
        spans.append({
            "name": s.name,
            "trace_id": format(s.context.trace_id, "032x"),
            "span_id": format(s.context.span_id, "016x"),
            "parent_id": format(parent.span_id, "016x") if parent is not None else None,
            "attributes": dict(s.attributes or {}),
            "status": s.status.status_code.name,
            "service": s.resource.attributes.get("service.name"),
            "start_ns": s.start_time,
            "end_ns": s.end_time,
        })
    return spans


def clear_spans() -> None:
    if _memory is not None:
        _memory.clear()


def serve_tracing_env(sampling_ratio: float, exporter_import_path: str = SERVE_SPAN_PROCESSORS) -> dict[str, str]:
    """Env that turns Ray Serve's own tracing on (proxy → router → replica spans) at ``sampling_ratio``, with
    its spans exported like ours. Set it on the head and on every worker before Ray starts. Serve's tracing
    is on only when the import path is set; its sampling ratio defaults to 0.01. A ratio of 0 turns it off."""
    ratio = float(sampling_ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"sampling ratio must be within [0, 1], not {sampling_ratio}")
    if ratio == 0.0:
        return {SERVE_EXPORTER_ENV: "", SERVE_RATIO_ENV: "0"}
    return {SERVE_EXPORTER_ENV: exporter_import_path, SERVE_RATIO_ENV: repr(ratio)}


__all__ = ["attach", "clear_spans", "enabled", "finished_spans", "inject", "job_trace", "serve_span_processors",
           "serve_tracing_env", "set_attributes", "setup_tracing", "shutdown_tracing", "span", "span_processors",
           "trace_ids"]
