"""Wire-level behaviour of the proxy: bytes, headers, retries, failures, disconnects, bad input."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import orjson
import pytest

from tests.conftest import FAST_RETRIES
from tests.harness.control import FakeControl
from tests.harness.servers import run_proxy
from tests.stub_upstream import Script, StubUpstream, stub_upstream

BODY = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]})
STREAM_BODY = orjson.dumps(
    {"model": "claude-sonnet-4-6", "max_tokens": 32, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
)
HEADERS = {
    "content-type": "application/json",
    "x-api-key": "sk-ant-api03-caller-key",
    "anthropic-version": "2023-06-01",
}


def conn(url: str, timeout: float = 10) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def post(url: str, body: bytes = BODY, headers: dict[str, str] | None = None, path: str = "/v1/messages"):
    c = conn(url)
    c.request("POST", path, body=body, headers=headers if headers is not None else HEADERS)
    resp = c.getresponse()
    data = resp.read()
    c.close()
    return resp, data


def sse_events(raw: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields["event"], orjson.loads(fields["data"])))
    return out


# --- byte fidelity and streaming -----------------------------------------------------------------

REAL_STREAM = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_01","type":"message",'
    b'"role":"assistant","model":"claude-sonnet-4-6","content":[],"stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}\n\n'
    b'event: ping\ndata: {"type": "ping"}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Gr\xc3\xbc\xc3\x9f '
    b'dich \xe2\x9c\x93"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
    b'"usage":{"output_tokens":7}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


@pytest.fixture(scope="module")
def stub() -> Iterator[StubUpstream]:
    with stub_upstream() as s:
        yield s


@pytest.fixture(scope="module")
def stub_proxy_url(stub: StubUpstream) -> Iterator[str]:
    with run_proxy({"CLAUDE_API_BASE_URL": f"http://127.0.0.1:{stub.port}", "UPSTREAM_MAX_ATTEMPTS": "1"}) as url:
        yield url


def test_sse_bytes_reach_the_client_unchanged(stub: StubUpstream, stub_proxy_url: str) -> None:
    # cut the stream at awkward places: inside "event:", inside a multi-byte character, between \n\n
    cuts = [7, 60, 61, 250, REAL_STREAM.index(b"\xc3\xbc") + 1, REAL_STREAM.index(b"\xe2\x9c") + 2, 700]
    cuts = sorted({c for c in cuts if 0 < c < len(REAL_STREAM)})
    pieces = [REAL_STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(REAL_STREAM)], strict=True)]
    stub.script = Script(
        headers=[
            ("content-type", "text/event-stream; charset=utf-8"),
            ("request-id", "req_stub1"),
            ("anthropic-ratelimit-requests-remaining", "99"),
        ],
        chunks=pieces,
        pause_s=0.01,
    )
    resp, data = post(stub_proxy_url, STREAM_BODY)
    assert resp.status == 200
    assert data == REAL_STREAM
    assert resp.getheader("request-id") == "req_stub1"
    assert resp.getheader("anthropic-ratelimit-requests-remaining") == "99"
    assert resp.getheader("x-request-id")
    assert resp.getheader("content-type") == "text/event-stream; charset=utf-8"


def test_first_event_arrives_before_the_stream_ends(stub: StubUpstream, stub_proxy_url: str) -> None:
    gate = threading.Event()
    first, rest = REAL_STREAM[:100], REAL_STREAM[100:]
    stub.script = Script(headers=[("content-type", "text/event-stream")], chunks=[first, rest], gate=gate)
    c = conn(stub_proxy_url)
    c.request("POST", "/v1/messages", body=STREAM_BODY, headers=HEADERS)
    resp = c.getresponse()
    got = resp.read1(4096)  # the upstream is holding back the rest until the gate opens
    assert got == first
    gate.set()
    assert got + resp.read() == REAL_STREAM
    c.close()


def test_request_body_and_headers_are_forwarded_exactly(stub: StubUpstream, stub_proxy_url: str) -> None:
    stub.script = Script(headers=[("content-type", "application/json")], chunks=[b'{"ok":true}'])
    stub.requests.clear()
    odd_body = b'{"model":"m","messages":[],  "unknown_field": {"keep": [1, 2.50]}, "thinking":{"type":"adaptive"}}'
    headers = {
        **HEADERS,
        "anthropic-beta": "oauth-2025-04-20,interleaved-thinking-2025-05-14",
        "x-stainless-lang": "python",
        "train-id": "project-a",
        "msl-project-id": "project-a",
        "connection": "keep-alive",
    }
    resp, data = post(stub_proxy_url + "", odd_body, headers, path="/v1/messages?beta=true")
    assert resp.status == 200 and data == b'{"ok":true}'
    raw = stub.requests[-1]
    head, body = raw.split(b"\r\n\r\n", 1)
    assert body == odd_body  # not re-serialised
    request_line, *header_lines = head.decode().split("\r\n")
    assert request_line == "POST /v1/messages?beta=true HTTP/1.1"
    got = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    assert got["anthropic-beta"] == "oauth-2025-04-20,interleaved-thinking-2025-05-14"
    assert got["anthropic-version"] == "2023-06-01"
    assert got["x-api-key"] == "sk-ant-api03-caller-key"
    assert got["x-stainless-lang"] == "python"
    for dropped in ("train-id", "msl-project-id", "accept-encoding"):  # account headers: tests/test_auth_proxy.py
        assert dropped not in got


def test_upstream_mid_stream_break_ends_with_error_event(upstream_url: str, proxy_url: str, fake: FakeControl) -> None:
    resp, data = post(proxy_url, STREAM_BODY, {**HEADERS, "x-fake-scenario": "drop-after:3"})
    assert resp.status == 200
    events = sse_events(data)
    assert [e for e, _ in events[:3]] == ["message_start", "ping", "content_block_start"]
    name, payload = events[-1]
    assert name == "error" and payload["error"]["type"] == "api_error"
    assert len(fake.requests()) == 1  # never replayed after bytes went out


def test_upstream_error_event_passes_through(proxy_url: str, fake: FakeControl) -> None:
    resp, data = post(proxy_url, STREAM_BODY, {**HEADERS, "x-fake-scenario": "error-event-after:4"})
    events = sse_events(data)
    assert resp.status == 200
    assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "overloaded_error"
    assert len(events) == 5


# --- retries -------------------------------------------------------------------------------------


def test_overloaded_then_ok_is_retried_transparently(proxy_url: str, fake: FakeControl) -> None:
    fake.queue("error:529", "error:500", "ok")
    resp, data = post(proxy_url)
    assert resp.status == 200
    assert orjson.loads(data)["type"] == "message"
    assert len(fake.requests()) == 3


def test_rate_limit_is_returned_with_its_headers_not_retried(proxy_url: str, fake: FakeControl) -> None:
    fake.queue("error:429:retry-after=7")
    resp, data = post(proxy_url)
    assert resp.status == 429
    assert resp.getheader("retry-after") == "7"
    assert resp.getheader("request-id").startswith("req_")
    assert orjson.loads(data)["error"]["type"] == "rate_limit_error"
    assert len(fake.requests()) == 1


def test_unreachable_upstream_gives_502_after_bounded_retries() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    env = {"CLAUDE_API_BASE_URL": f"http://127.0.0.1:{dead_port}", "UPSTREAM_RETRY_BASE_DELAY_MS": "10"}
    with run_proxy(env) as url:
        resp, data = post(url)
    assert resp.status == 502
    err = orjson.loads(data)
    assert err["type"] == "error" and err["error"]["type"] == "api_error"
    assert "3 attempt" in err["error"]["message"]
    assert err["request_id"] == resp.getheader("x-request-id")


# --- timeouts and disconnects --------------------------------------------------------------------


def test_silent_upstream_before_headers_gives_504(tight_proxy_url: str, fake: FakeControl) -> None:
    resp, data = post(tight_proxy_url, headers={**HEADERS, "x-fake-scenario": "hang"})
    assert resp.status == 504
    assert orjson.loads(data)["error"]["type"] == "timeout_error"


def test_silent_stream_ends_with_timeout_error_event(tight_proxy_url: str, fake: FakeControl) -> None:
    resp, data = post(tight_proxy_url, STREAM_BODY, {**HEADERS, "x-fake-scenario": "hang-after:2"})
    assert resp.status == 200
    events = sse_events(data)
    assert [e for e, _ in events] == ["message_start", "ping", "error"]
    assert events[-1][1]["error"]["type"] == "timeout_error"
    fake.wait_for_event("client_disconnected")  # and the proxy let go of the upstream


@pytest.mark.parametrize("scenario", ["hang-after:0", "hang-after:2", "event-delay:200"])
def test_client_disconnect_cancels_upstream(proxy_url: str, fake: FakeControl, scenario: str) -> None:
    c = conn(proxy_url)
    c.request("POST", "/v1/messages", body=STREAM_BODY, headers={**HEADERS, "x-fake-scenario": scenario})
    resp = c.getresponse()  # the head has arrived; with hang-after:0 not one event has
    if scenario != "hang-after:0":
        assert resp.read1(100)
    time.sleep(0.2)
    assert not [e for e in fake.events() if e["outcome"] == "client_disconnected"]
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    gone_at = time.monotonic()
    fake.wait_for_event("client_disconnected", timeout_s=3)
    assert time.monotonic() - gone_at < 3


# --- bad input never reaches the upstream --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers", "status", "fragment"),
    [
        (b"{nope", HEADERS, 400, "not valid JSON"),
        (b'{"messages": []}', HEADERS, 400, "model"),
        (b'{"model": "m"}', HEADERS, 400, "messages"),
        (BODY, {**HEADERS, "content-type": "text/plain"}, 415, "Content-Type"),
    ],
)
def test_bad_input_is_refused_locally(
    proxy_url: str, fake: FakeControl, body: bytes, headers: dict[str, str], status: int, fragment: str
) -> None:
    resp, data = post(proxy_url, body, headers)
    assert resp.status == status
    err = orjson.loads(data)
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert fragment in err["error"]["message"]
    assert err["request_id"] == resp.getheader("x-request-id")
    assert fake.requests() == []


def test_oversized_body_is_refused_while_streaming_in(tight_proxy_url: str, fake: FakeControl) -> None:
    big = b'{"model":"m","messages":[],"pad":"' + b"x" * (2 * 1024 * 1024) + b'"}'
    c = conn(tight_proxy_url)
    c.putrequest("POST", "/v1/messages")
    for k, v in HEADERS.items():
        c.putheader(k, v)
    c.putheader("transfer-encoding", "chunked")  # no Content-Length: the limit must bite while reading
    c.endheaders()
    try:
        for i in range(0, len(big), 65536):
            part = big[i : i + 65536]
            c.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        c.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the proxy may stop reading once it has refused the body
    resp = c.getresponse()
    assert resp.status == 413
    assert orjson.loads(resp.read())["error"]["type"] == "request_too_large"
    c.close()
    # with Content-Length: refused before the body is read, so the client may see its send fail
    status, body = raw_post_refused(tight_proxy_url, big)
    assert status == 413 and orjson.loads(body)["error"]["type"] == "request_too_large"
    assert fake.requests() == []


def raw_post_refused(url: str, body: bytes) -> tuple[int, bytes]:
    """POST `body` on a raw socket, tolerating a server that answers and closes before reading it all."""
    parts = urlsplit(url)
    head = f"POST /v1/messages HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items()) + "\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        try:
            sock.sendall(head.encode() + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the answer is already in our receive buffer
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < content_length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status_line, rest = data.split(b"\r\n", 1)
    return int(status_line.split()[1]), rest.split(b"\r\n\r\n", 1)[1]


def content_length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_unknown_route_and_service_endpoints(proxy_url: str) -> None:
    c = conn(proxy_url)
    for path, status in (("/nope", 404), ("/health", 200), ("/", 200)):
        c.request("GET", path)
        resp = c.getresponse()
        payload = orjson.loads(resp.read())
        assert resp.status == status, path
        assert resp.getheader("x-request-id")
        if status == 404:
            assert payload["error"]["type"] == "not_found_error"
    c.request("GET", "/v1/messages")
    resp = c.getresponse()
    assert resp.status == 405 and orjson.loads(resp.read())["type"] == "error"
    c.close()


def test_head_root_is_answered_not_refused(proxy_url: str) -> None:
    """Claude Code 2.1 sends `HEAD /` to its base URL before each session: it must get GET's status
    without a body, and not count (or be stored) as a refused request, one "error" per `claude -p`."""

    def refused() -> int:
        c = conn(proxy_url)
        c.request("GET", "/health")
        count = orjson.loads(c.getresponse().read())["stats"]["refused"]
        c.close()
        return count

    before = refused()
    c = conn(proxy_url)
    c.request("HEAD", "/")
    resp = c.getresponse()
    assert resp.status == 200
    assert resp.read() == b""
    assert resp.getheader("x-request-id")
    assert resp.getheader("content-type") == "application/json"
    c.close()
    assert refused() == before


# --- line endings and framing the SSE spec allows (the relay must not normalise them) ------------

ODD_STREAMS = {
    "crlf": REAL_STREAM.replace(b"\n", b"\r\n"),
    "cr": REAL_STREAM.replace(b"\n", b"\r"),
    "comments and multi-line data": (
        b"\xef\xbb\xbf: a comment first, after a BOM\n"
        b"event: message_start\r\n"
        b'data: {"type":"message_start","message":{"id":"msg_2","type":"message","role":"assistant",\n'
        b'data: "model":"m","content":[],"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
        b": keep-alive\r\n\r\n"
        b'event: message_stop\rdata: {"type":"message_stop"}\r\r'
    ),
}


@pytest.mark.parametrize("name", sorted(ODD_STREAMS))
def test_sse_line_endings_comments_and_a_bom_pass_unchanged(stub: StubUpstream, stub_proxy_url: str, name: str) -> None:
    stream = ODD_STREAMS[name]
    cuts = sorted({1, 3, len(stream) // 3, len(stream) // 2 + 1, len(stream) - 2})
    stub.script = Script(
        headers=[("content-type", "text/event-stream")],
        chunks=[stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)],
    )
    resp, data = post(stub_proxy_url, STREAM_BODY)
    assert resp.status == 200 and data == stream


def test_x_should_retry_false_is_obeyed() -> None:
    """A 529 with `x-should-retry: false` is the upstream saying "do not retry": one attempt only."""
    with stub_upstream() as upstream:
        env = {"CLAUDE_API_BASE_URL": f"http://127.0.0.1:{upstream.port}", **FAST_RETRIES}
        with run_proxy(env) as url:
            for should_retry, attempts in (("false", 1), ("true", 3), (None, 3)):
                upstream.requests.clear()
                headers = [("content-type", "application/json")]
                if should_retry is not None:
                    headers.append(("x-should-retry", should_retry))
                overloaded = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
                upstream.script = Script(status=529, headers=headers, chunks=[overloaded])
                resp, data = post(url)
                assert resp.status == 529 and data == overloaded
                assert len(upstream.requests) == attempts, should_retry
