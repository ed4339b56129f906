"""The fake's scripted replies: the SSE encoder, the FIFO replay queue, script rules and recording.

The encoder is checked by parsing its output back with two independent parsers (the project's Rust
observer and the official SDK); the queue, the rules and the recorder are checked through a real fake
process, because that is how the end-to-end tests and the fixture recordings use them.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anthropic
import httpx2 as httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus._core import SseObserver
from nexus.fake_upstream.scripted import REDACTED_API_KEY, REDACTED_BEARER, complete_message, encode_sse, sse_events
from tests.harness.control import FakeControl
from tests.oracles.sse import ReferenceSseObserver

#: These test the tooling (the fake upstream, the benchmark's generators), not Nexus itself.
pytestmark = pytest.mark.tooling

USAGE = {
    "input_tokens": 7,
    "cache_creation_input_tokens": 1200,
    "cache_read_input_tokens": 34000,
    "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 1000},
    "output_tokens": 91,
    "service_tier": "standard",
}


def message(content: list[dict[str, Any]], stop_reason: str = "end_turn", **extra: Any) -> dict[str, Any]:
    return {
        "id": "msg_01TestTestTestTestTestTest",
        "type": "message",
        "role": "assistant",
        "model": "claude-opus-5-5",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": dict(USAGE),
        **extra,
    }


RICH = message(
    [
        {"type": "thinking", "thinking": "Let me think about it: two steps.", "signature": "EqQBCkYIBxgCKkCsig=="},
        {"type": "text", "text": "I'll check the directory, then the date — naïve café ✓."},
        {
            "type": "tool_use",
            "id": "toolu_01AAAAAAAAAAAAAAAAAAAAAA",
            "name": "Bash",
            "input": {"command": "ls -la", "description": "List files", "nested": {"a": [1, 2.5, None, True]}},
        },
        {"type": "tool_use", "id": "toolu_01BBBBBBBBBBBBBBBBBBBBBB", "name": "ListAgents", "input": {}},
    ],
    "tool_use",
)
MESSAGES = {
    "rich": RICH,
    "text": message([{"type": "text", "text": "Hello!\n\nTwo  spaces and\ttabs."}]),
    "empty_text": message([{"type": "text", "text": ""}]),
    "redacted": message(
        [{"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}, {"type": "text", "text": "ok"}], "max_tokens"
    ),
    "citations": message(
        [
            {
                "type": "text",
                "text": "The grass is green.",
                "citations": [
                    {
                        "type": "char_location",
                        "cited_text": "The grass is green.",
                        "document_index": 0,
                        "document_title": "Doc",
                        "start_char_index": 0,
                        "end_char_index": 19,
                    }
                ],
            }
        ]
    ),
    "stop_sequence": message([{"type": "text", "text": "one two"}], "stop_sequence", stop_sequence="END"),
}


def events(stream: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in stream.decode().split("\n\n"):
        if block:
            name, data = block.split("\n")
            out.append((name.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))))
    return out


def rebuilt_by_observers(stream: bytes, cut: int) -> tuple[dict[str, Any], dict[str, Any]]:
    rust, ref = SseObserver(), ReferenceSseObserver()
    for obs in (rust, ref):
        obs.feed(stream[:cut])
        obs.feed(stream[cut:])
        assert obs.saw_message_stop and obs.malformed_events == 0
    return orjson.loads(rust.message_json()), orjson.loads(ref.message_json())


# ------------------------------------------------------------------------------- encoder


def test_event_sequence_follows_the_api() -> None:
    got = events(encode_sse(RICH))
    names = [n for n, _ in got]
    assert all(n == p["type"] for n, p in got)
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    start = got[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["cache_creation"] == USAGE["cache_creation"]
    assert start["usage"]["input_tokens"] == 7 and start["usage"]["output_tokens"] <= 1
    final = got[-2][1]
    assert final["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert final["usage"]["output_tokens"] == 91 and final["usage"]["cache_read_input_tokens"] == 34000
    by_index: dict[int, list[str]] = {}
    for name, payload in got[2:-2]:
        kind = payload.get("delta", payload.get("content_block", {})).get("type", "")
        by_index.setdefault(payload["index"], []).append(f"{name}:{kind}")
    thinking, text, tool, empty_tool = (by_index[i] for i in range(4))
    assert thinking[0] == "content_block_start:thinking" and thinking[-2:] == [
        "content_block_delta:signature_delta",
        "content_block_stop:",
    ]
    assert "content_block_delta:thinking_delta" in thinking
    assert text.count("content_block_delta:text_delta") >= 2
    assert tool.count("content_block_delta:input_json_delta") >= 3  # the input is split in pieces
    assert empty_tool == ["content_block_start:tool_use", "content_block_delta:input_json_delta", "content_block_stop:"]
    opening = next(p["content_block"] for n, p in got if n == "content_block_start" and p["index"] == 2)
    assert opening == {"type": "tool_use", "id": "toolu_01AAAAAAAAAAAAAAAAAAAAAA", "name": "Bash", "input": {}}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_rust_and_reference_observers_rebuild_the_message(name: str) -> None:
    original = MESSAGES[name]
    stream = encode_sse(original)
    for cut in (0, 1, len(stream) // 3, len(stream) - 1):
        rust, ref = rebuilt_by_observers(stream, cut)
        assert rust == original
        assert ref == original


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
blocks = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, st.text(max_size=80)),
    st.builds(
        lambda i, inp: {"type": "tool_use", "id": f"toolu_{i:024d}", "name": "Tool", "input": inp},
        st.integers(0, 10**6),
        st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    ),
    st.builds(
        lambda t, s: {"type": "thinking", "thinking": t, "signature": s}, st.text(max_size=60), st.text(max_size=20)
    ),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(blocks, max_size=5), st.integers(0, 10**6))
def test_any_message_round_trips_through_the_rust_observer(content: list[dict[str, Any]], cut: int) -> None:
    original = message(content)
    stream = encode_sse(original)
    rust, _ = rebuilt_by_observers(stream, cut % (len(stream) + 1))
    assert rust == original


def sdk_client(body: bytes, content_type: str) -> anthropic.Anthropic:
    """The official SDK over an in-memory transport that answers every request with `body`."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": content_type}, content=body)

    return anthropic.Anthropic(
        api_key="sk-ant-test", max_retries=0, http_client=httpx.Client(transport=httpx.MockTransport(handler))
    )


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_official_sdk_parses_the_stream_into_the_same_message(name: str) -> None:
    original = MESSAGES[name]
    client = sdk_client(encode_sse(original), "text/event-stream")
    kwargs: dict[str, Any] = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    with client.messages.stream(**kwargs) as stream:
        final = stream.get_final_message()
    assert final.model_dump(mode="json", exclude_none=True) == drop_none(original)


def drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_none(v) for v in value]
    return value


def test_complete_message_fills_defaults() -> None:
    partial = {"content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}]}
    full = complete_message(partial, {"model": "claude-haiku-5-5"}, input_tokens=42)
    assert full["model"] == "claude-haiku-5-5" and full["stop_reason"] == "tool_use" and full["role"] == "assistant"
    assert full["id"].startswith("msg_01") and full["type"] == "message" and full["stop_sequence"] is None
    assert full["usage"]["input_tokens"] == 42 and full["usage"]["cache_creation"]["ephemeral_1h_input_tokens"] == 0
    given_usage = complete_message({"content": [], "usage": {"cache_creation_input_tokens": 50}}, None)
    assert given_usage["usage"]["cache_creation"] == {"ephemeral_5m_input_tokens": 50, "ephemeral_1h_input_tokens": 0}
    assert given_usage["stop_reason"] == "end_turn"
    assert len(sse_events(full)) == 10  # start, ping, block start, 4 input pieces, block stop, delta, stop


# ------------------------------------------------------------------------------- through a fake process


def post(url: str, body: Any, path: str = "/v1/messages", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    sent = {"content-type": "application/json", "x-api-key": "sk-ant-api03-secret-value", "anthropic-version": "1"}
    conn.request("POST", path, body=orjson.dumps(body), headers={**sent, **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def user(text: str | list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": "claude-opus-5-5", "max_tokens": 100, "messages": [{"role": "user", "content": text}], **extra}


def reply_text(data: bytes) -> str:
    if data.startswith(b"event:"):
        obs = SseObserver()
        obs.feed(data)
        data = obs.message_json() or b"{}"
    return "".join(b.get("text", "") for b in orjson.loads(data)["content"])


def test_fifo_replays_in_order_streamed_or_not(upstream_url: str, fake: FakeControl) -> None:
    recorded_error = {"status": 529, "body": {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}}
    queued = fake.replies(
        RICH, {"error": 529}, recorded_error, {"status": 200, "body": MESSAGES["text"]}, {"content": []}
    )
    assert queued == 5
    client = anthropic.Anthropic(base_url=upstream_url, api_key="sk-ant-test", max_retries=0)
    with client.messages.stream(model="m", max_tokens=5, messages=[{"role": "user", "content": "a"}]) as stream:
        assert stream.get_final_message().model_dump(mode="json", exclude_none=True) == drop_none(RICH)
    # count_tokens never consumes the queue
    assert client.messages.count_tokens(model="m", messages=[{"role": "user", "content": "a"}]).input_tokens > 0
    with pytest.raises(anthropic.APIStatusError) as err:
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "b"}])
    assert err.value.status_code == 529 and err.value.body["error"]["type"] == "overloaded_error"
    status, data = post(upstream_url, user("c"))
    assert status == 529 and orjson.loads(data) == recorded_error["body"]
    got = client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "d"}])
    assert got.model_dump(mode="json", exclude_none=True) == drop_none(MESSAGES["text"])
    status, data = post(upstream_url, user("e", stream=True))
    assert status == 200 and data.startswith(b"event: message_start")  # a partial message, completed
    assert fake.replies_left() == 0
    assert "deterministic reply" in reply_text(post(upstream_url, user("f"))[1])  # queue empty: the fake's own


def test_script_rules_match_request_features(upstream_url: str, fake: FakeControl) -> None:
    def say(text: str) -> dict[str, Any]:
        return {"message": {"content": [{"type": "text", "text": text}]}}

    fake.script(
        {"name": "busy", "match": {"last_user_text_contains": "retry"}, "times": 1, "reply": {"error": 529}},
        {"name": "retried", "match": {"last_user_text_contains": "retry"}, "reply": say("second try")},
        {"name": "sub", "match": {"subagent": True, "first_user_text_contains": "TASK"}, "reply": say("sub")},
        {"name": "result", "match": {"tool_result_for": ["toolu_A", "toolu_B"]}, "reply": say("both results")},
        {"name": "haiku", "match": {"model_contains": "haiku", "has_tools": False}, "reply": say("title")},
        {"name": "count", "match": {"path": "/v1/messages/count_tokens"}, "reply": {"status": 200, "body": {"n": 1}}},
    )
    assert post(upstream_url, user("please retry"))[0] == 529
    assert reply_text(post(upstream_url, user("please retry"))[1]) == "second try"
    billing = "x-anthropic-billing-header: cc_version=2.1.332.140; cc_entrypoint=sdk-cli; cc_is_subagent=true;"
    subagent = user("TASK: look", system=[{"type": "text", "text": billing}])
    assert reply_text(post(upstream_url, subagent)[1]) == "sub"
    assert "deterministic" in reply_text(post(upstream_url, user("TASK: look"))[1])  # not a sub-agent
    results = [{"type": "tool_result", "tool_use_id": i, "content": "ok"} for i in ("toolu_B", "toolu_A")]
    assert reply_text(post(upstream_url, user(results))[1]) == "both results"
    assert "deterministic" in reply_text(post(upstream_url, user(results[:1]))[1])  # one of two is not enough
    haiku = {**user("name it"), "model": "claude-haiku-5-5"}
    assert reply_text(post(upstream_url, {**haiku, "stream": True})[1]) == "title"
    status, data = post(upstream_url, user("x"), path="/v1/messages/count_tokens")
    assert status == 200 and orjson.loads(data) == {"n": 1}
    hits = {r["name"]: r["hits"] for r in fake.script_state()}
    assert hits == {"busy": 1, "retried": 1, "sub": 1, "result": 1, "haiku": 1, "count": 1}
    bad = post(upstream_url, {"rules": [{"match": {"no_such_key": 1}, "reply": {"error": 500}}]}, "/_fake/script")
    assert bad[0] == 400 and b"no_such_key" in bad[1]


def test_recording_writes_one_redacted_file_per_request(upstream_url: str, fake: FakeControl, tmp_path: Path) -> None:
    where = tmp_path / "rec"
    fake.record(str(where))
    try:
        fake.replies(RICH, {"error": 529})
        post(upstream_url, user("a", stream=True), "/v1/messages?beta=true")
        post(upstream_url, user("b"), headers={"authorization": "Bearer sk-ant-api03-secret", "x-api-key": ""})
        post(upstream_url, user("c"), "/v1/messages/count_tokens")
        post(upstream_url, user("d", stream=True))  # the fake's own streamed answer, rebuilt from the stream
        post(upstream_url, user("e"), headers={"x-api-key": ""})  # 401: recorded too
        assert fake.record(None)["dir"] is None
    finally:
        fake.record(None)
    files = sorted(p.name for p in where.iterdir())
    assert files == [
        "0001-messages.json",
        "0002-messages.json",
        "0003-count_tokens.json",
        "0004-messages.json",
        "0005-messages.json",
    ]
    records = [json.loads((where / f).read_text()) for f in files]
    for rec in records:
        assert set(rec) == {"timestamp", "method", "path", "headers", "body", "response"}
        assert set(rec["response"]) == {"status", "body"}
        assert rec["timestamp"].endswith("Z") and rec["method"] == "POST"
        assert "secret" not in json.dumps(rec)
    assert [r["timestamp"] for r in records] == sorted(r["timestamp"] for r in records)
    first, second, count, own, unauth = records
    assert first["path"] == "/v1/messages?beta=true" and first["headers"]["x-api-key"] == REDACTED_API_KEY
    assert first["body"] == user("a", stream=True) and first["response"] == {"status": 200, "body": RICH}
    assert second["headers"]["authorization"] == REDACTED_BEARER
    assert second["response"]["status"] == 529 and second["response"]["body"]["error"]["type"] == "overloaded_error"
    assert count["response"]["status"] == 200 and count["response"]["body"]["input_tokens"] > 0
    assert own["response"]["body"]["content"][0]["text"].startswith("Hello!")
    assert own["response"]["body"]["usage"]["cache_creation"] == {
        "ephemeral_5m_input_tokens": 0,
        "ephemeral_1h_input_tokens": 0,
    }
    assert unauth["response"]["status"] == 401
