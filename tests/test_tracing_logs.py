"""OpenTelemetry traces exported over OTLP/HTTP to a receiver in this process, and JSON logs that carry
the request id, from a real proxy process."""

from __future__ import annotations

import http.client
import http.server
import logging
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from nexus.observability.logs import JsonFormatter, redact, request_id
from tests.conftest import FAST_RETRIES
from tests.harness.servers import run_proxy
from tests.helpers import wait_for
from tests.test_metrics import HAIKU, SONNET, message, post

SERVER, CLIENT = 2, 3  # span kinds in OTLP


class _Receiver(http.server.BaseHTTPRequestHandler):
    spans: list[Any]
    raw: list[bytes]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).raw.append(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}.get("service.name")
            for scope in resource.scope_spans:
                type(self).spans.extend((service, span) for span in scope.spans)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        return


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"spans": [], "raw": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def attributes(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in span.attributes:
        v = a.value
        kind = v.WhichOneof("value")
        out[a.key] = [x.string_value for x in v.array_value.values] if kind == "array_value" else getattr(v, kind)
    return out


def test_one_span_per_request_with_the_upstream_call_as_its_child(upstream_url: str, tmp_path: Path) -> None:
    api_key = "sk-ant-api03-" + secrets.token_urlsafe(24)
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    with otlp_receiver() as (endpoint, receiver):
        env = {
            "CLAUDE_API_BASE_URL": upstream_url,
            "STORAGE_ENABLED": "false",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_SERVICE_NAME": "nexus-under-test",
        }
        with run_proxy(env) as url:
            headers = {"x-api-key": api_key, "traceparent": f"00-{trace_id}-{parent_id}-01"}
            status, body = post(url, message(SONNET, "traced"), headers)
            assert status == 200
            reply = orjson.loads(body)
            assert post(url, message(HAIKU, "traced stream", stream=True), {"x-api-key": api_key})[0] == 200
            wait_for(lambda: len(receiver.spans) >= 4, timeout_s=15, what="four spans exported")
    spans = [span for _, span in receiver.spans]
    assert {service for service, _ in receiver.spans} == {"nexus-under-test"}
    requests = [s for s in spans if s.kind == SERVER]
    calls = [s for s in spans if s.kind == CLIENT]
    assert len(requests) == 2 and len(calls) == 2

    chat = next(s for s in requests if attributes(s)["gen_ai.request.model"] == SONNET)
    attrs = attributes(chat)
    assert chat.name == f"chat {SONNET}"
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.system"] == "anthropic"
    assert attrs["gen_ai.response.model"] == reply["model"] and attrs["gen_ai.response.id"] == reply["id"]
    assert attrs["gen_ai.response.finish_reasons"] == [reply["stop_reason"]]
    assert attrs["gen_ai.usage.input_tokens"] == reply["usage"]["input_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == reply["usage"]["output_tokens"]
    assert attrs["http.response.status_code"] == 200
    assert chat.trace_id.hex() == trace_id and chat.parent_span_id.hex() == parent_id  # the caller's trace
    child = next(s for s in calls if s.parent_span_id == chat.span_id)
    assert child.trace_id == chat.trace_id
    assert attributes(child)["http.response.status_code"] == 200 and attributes(child)["server.address"] == "127.0.0.1"
    assert (
        chat.start_time_unix_nano <= child.start_time_unix_nano <= child.end_time_unix_nano <= chat.end_time_unix_nano
    )

    stream = next(s for s in requests if s is not chat)
    sattrs = attributes(stream)
    assert stream.name == f"chat {HAIKU}" and sattrs["gen_ai.request.stream"] is True
    assert sattrs["gen_ai.usage.output_tokens"] > 0 and sattrs["gen_ai.response.finish_reasons"] == ["end_turn"]
    assert any(s.parent_span_id == stream.span_id for s in calls)
    assert all(api_key.encode() not in raw for raw in receiver.raw)  # no credential in any span


def test_json_logs_carry_the_request_id(upstream_url: str, tmp_path: Path) -> None:
    log = tmp_path / "proxy.log"
    env = {"CLAUDE_API_BASE_URL": upstream_url, "STORAGE_ENABLED": "false", "LOG_FORMAT": "json", **FAST_RETRIES}
    secret = "sk-ant-api03-" + secrets.token_urlsafe(24)
    with run_proxy(env, workers=2, output=log) as url:
        ids = []
        for _ in range(3):  # each retried twice: two warnings logged while serving it
            port = int(url.rsplit(":", 1)[1])
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request(
                "POST",
                "/v1/messages",
                body=message(SONNET, "busy"),
                headers={
                    "content-type": "application/json",
                    "anthropic-version": "2023-06-01",
                    "x-api-key": secret,
                    "x-fake-scenario": "error:529",
                },
            )
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 529
            ids.append(resp.getheader("x-request-id"))
            conn.close()
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    entries = [orjson.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message", "service", "pid"} <= set(e) for e in entries)
    retries = [e for e in entries if "retrying" in e["message"]]
    assert len(retries) == 6
    assert sorted(e["request_id"] for e in retries) == sorted(ids * 2)
    assert all(e["service"] == "nexus-proxy" and e["level"] == "warning" for e in retries)
    assert secret not in log.read_text()


def test_the_formatter_tags_the_request_and_masks_secrets() -> None:
    token = request_id.set("req-123")
    try:
        record = logging.LogRecord(
            "nexus.x", logging.WARNING, __file__, 1, "key %s", ("sk-ant-oat01-abcdefghijk",), None
        )
        entry = orjson.loads(JsonFormatter(service="svc").format(record))
    finally:
        request_id.reset(token)
    assert entry["request_id"] == "req-123" and entry["service"] == "svc" and entry["level"] == "warning"
    assert entry["message"] == "key sk-ant-oat01-[redacted]"
    assert redact("Authorization: Bearer abc.def-ghi_jkl") == "Authorization: Bearer [redacted]"
    assert redact("client key cnp_live_0123456789abcdef") == "client key cnp_live_[redacted]"
    assert redact("nothing secret here") == "nothing secret here"
