"""Optional OpenTelemetry traces: one span per proxied request, the upstream call as its child.

Enabled by `OTEL_EXPORTER_OTLP_ENDPOINT` (OTLP over HTTP/protobuf, the collector's port 4318) with the
`otel` extra installed; otherwise `build_tracer` returns None and the request path pays one `is None`
test. Spans follow the OpenTelemetry GenAI semantic conventions: the request span is named
`chat {model}` with `gen_ai.operation.name`, `gen_ai.system` / `gen_ai.provider.name` = `anthropic`,
`gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.response.id`,
`gen_ai.response.finish_reasons` and `gen_ai.usage.*`; the child span is the HTTP call upstream
(`http.request.method`, `server.address`, `http.response.status_code`, attempts). A `traceparent`
sent by the client makes the request span its child, so a caller's own trace continues through the
gateway; nothing is added to the request that goes upstream. Prompts and replies are never put in a
span (they are stored, and a trace backend is not the place for them); neither are credentials.
Spans are exported in batches from the SDK's own thread, never on the request path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from nexus import __version__

log = logging.getLogger("nexus.tracing")


@dataclass(slots=True)
class RequestFacts:
    """What the request span reports once the response ended."""

    status: int
    model: str | None = None
    response_model: str | None = None
    response_id: str | None = None
    finish_reason: str | None = None
    tokens: tuple[int, int, int, int] | None = None  # input, output, cache_read, cache_creation
    streaming: bool = False
    outcome: str | None = None
    error: str | None = None
    attempts: int | None = None
    project: str | None = None


class Tracer:
    """The worker's tracer provider and the two spans a request makes."""

    def __init__(self, endpoint: str, service_name: str, upstream_base_url: str, exporter: Any = None) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
        resource = Resource.create({"service.name": service_name, "service.version": __version__})
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("nexus", __version__)
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        self._kind = trace.SpanKind
        self._status = trace.Status
        self._error = trace.StatusCode.ERROR
        parts = urlsplit(upstream_base_url)
        self._server = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)

    def start_request(self, method: str, path: str, headers: Any, start_ns: int, request_id: str) -> Any:
        """The request span, a child of the client's `traceparent` when it sent one."""
        carrier = {}
        traceparent = headers.get("traceparent")
        if traceparent:
            carrier["traceparent"] = traceparent
            state = headers.get("tracestate")
            if state:
                carrier["tracestate"] = state
        parent = self._propagator.extract(carrier) if carrier else None
        span = self.tracer.start_span(f"{method} {path}", context=parent, kind=self._kind.SERVER, start_time=start_ns)
        span.set_attribute("http.request.method", method)
        span.set_attribute("url.path", path)
        span.set_attribute("nexus.request_id", request_id)
        if path == "/v1/messages":
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.system", "anthropic")
            span.set_attribute("gen_ai.provider.name", "anthropic")
        return span

    def set_model(self, span: Any, path: str, model: str | None) -> None:
        if model:
            span.set_attribute("gen_ai.request.model", model)
            if path == "/v1/messages":
                span.update_name(f"chat {model}")

    def start_upstream(self, parent: Any, method: str, start_ns: int) -> Any:
        """The upstream HTTP call, a child of the request span."""
        span = self.tracer.start_span(
            method, context=self._trace.set_span_in_context(parent), kind=self._kind.CLIENT, start_time=start_ns
        )
        span.set_attribute("http.request.method", method)
        span.set_attribute("server.address", self._server)
        span.set_attribute("server.port", self._port)
        return span

    def end_upstream(self, span: Any, status: int | None, attempts: int | None, error: str | None) -> None:
        if status:
            span.set_attribute("http.response.status_code", status)
        if attempts:
            span.set_attribute("nexus.upstream.attempts", attempts)
        if error or (status is not None and status >= 500):
            span.set_status(self._status(self._error, error or f"HTTP {status}"))
            span.set_attribute("error.type", (error or str(status)).split(":", 1)[0])
        span.end()

    def end_request(self, span: Any, facts: RequestFacts, end_ns: int | None = None) -> None:
        span.set_attribute("http.response.status_code", facts.status)
        if facts.project:
            span.set_attribute("nexus.project", facts.project)
        if facts.outcome:
            span.set_attribute("nexus.outcome", facts.outcome)
        if facts.streaming:
            span.set_attribute("gen_ai.request.stream", True)
        if facts.response_model:
            span.set_attribute("gen_ai.response.model", facts.response_model)
        if facts.response_id:
            span.set_attribute("gen_ai.response.id", facts.response_id)
        if facts.finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [facts.finish_reason])
        if facts.tokens is not None:
            inp, out, cache_read, cache_creation = facts.tokens
            span.set_attribute("gen_ai.usage.input_tokens", inp)
            span.set_attribute("gen_ai.usage.output_tokens", out)
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", cache_read)
            span.set_attribute("gen_ai.usage.cache_creation.input_tokens", cache_creation)
        if facts.status >= 500 or facts.error:
            span.set_status(self._status(self._error, facts.error or f"HTTP {facts.status}"))
            span.set_attribute("error.type", (facts.error or str(facts.status)).split(":", 1)[0][:100])
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        """Export what is still queued (a worker's exit)."""
        try:
            self.provider.shutdown()
        except Exception as exc:
            log.warning("tracing: spans not exported at shutdown (%s)", exc.__class__.__name__)


def build_tracer(endpoint: str | None, service_name: str, upstream_base_url: str) -> Tracer | None:
    """The worker's tracer, or None when tracing is off (no endpoint) or the SDK is not installed."""
    if not endpoint:
        return None
    try:
        return Tracer(endpoint, service_name, upstream_base_url)
    except ImportError:
        log.error(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed "
            "(pip install 'nexus-gateway[otel]'); no traces"
        )
        return None
