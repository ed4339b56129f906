"""The Rust SSE observer (nexus._core) against its pure-Python reference (tests.oracles.sse)."""

from __future__ import annotations

import importlib.metadata
import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus import _core
from nexus._core import NexusCoreError, SseObserver
from tests.oracles.sse import ReferenceSseObserver

DATA = Path(__file__).resolve().parent.parent / "nexus_core" / "tests" / "data"
REALISTIC = (DATA / "realistic_stream.sse").read_bytes()
THINKING_ERROR = (DATA / "thinking_error_stream.sse").read_bytes()

SCALARS = (
    "message_id",
    "model",
    "role",
    "stop_reason",
    "stop_sequence",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "event_count",
    "malformed_events",
    "content_blocks",
    "saw_message_stop",
    "tool_uses",
    "error",
    "overflowed",
    "repairs",
)


def loads_or_none(raw: bytes | None) -> Any:
    return None if raw is None else orjson.loads(raw)


def snapshot(obs: SseObserver | ReferenceSseObserver) -> dict[str, Any]:
    out = {name: getattr(obs, name) for name in SCALARS}
    out["usage"] = loads_or_none(obs.usage_json())
    out["message"] = loads_or_none(obs.message_json())
    return out


def feed_split(obs: SseObserver | ReferenceSseObserver, stream: bytes, cuts: list[int]) -> int:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    start = total = 0
    for cut in [*points, len(stream)]:
        total += obs.feed(stream[start:cut])
        start = cut
    return total


def both(stream: bytes, cuts: list[int], **kw: int) -> tuple[dict[str, Any], dict[str, Any]]:
    rust, ref = SseObserver(**kw), ReferenceSseObserver(**kw)
    assert feed_split(rust, stream, cuts) == rust.event_count
    ref.feed(stream)
    return snapshot(rust), snapshot(ref)


# ---------------------------------------------------------------- fixed streams


def test_version_matches_package() -> None:
    assert _core.__version__ == importlib.metadata.version("nexus-gateway")


def test_realistic_stream_summary() -> None:
    obs = SseObserver()
    assert obs.feed(REALISTIC) == 15
    assert obs.message_id == "msg_01XFDUDYJgAACzvnptvVoYEL"
    assert obs.model == "claude-sonnet-4-6"
    assert (obs.input_tokens, obs.cache_creation_input_tokens, obs.cache_read_input_tokens) == (12, 2048, 10240)
    assert obs.output_tokens == 89  # cumulative: the last message_delta wins
    assert obs.stop_reason == "tool_use"
    assert obs.stop_sequence is None
    assert obs.tool_uses == [("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather")]
    assert obs.saw_message_stop and obs.error is None and not obs.overflowed
    usage = orjson.loads(obs.usage_json())
    assert usage["cache_creation"] == {"ephemeral_5m_input_tokens": 2048, "ephemeral_1h_input_tokens": 0}
    assert usage["server_tool_use"] == {"web_search_requests": 0}
    msg = orjson.loads(obs.message_json())
    assert msg["content"][0]["text"] == "Okay, let me check the weather in São Paulo — 東京 too 🌦️."
    assert msg["content"][1]["input"] == {"location": "São Paulo", "unit": "celsius"}


def test_error_after_content() -> None:
    obs = SseObserver()
    obs.feed(THINKING_ERROR)
    assert obs.error == ("overloaded_error", "Overloaded")
    assert not obs.saw_message_stop
    assert orjson.loads(obs.message_json())["content"][0]["thinking"] == "Let me think step by step."


@pytest.mark.parametrize("stream", [REALISTIC, THINKING_ERROR], ids=["realistic", "thinking_error"])
@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_rust_matches_reference_byte_by_byte(stream: bytes, eol: bytes) -> None:
    stream = stream.replace(b"\n", eol)
    rust, ref = both(stream, list(range(len(stream))))
    assert rust == ref
    assert rust["event_count"] in (11, 15)


def test_bad_argument_raises_nexus_core_error() -> None:
    with pytest.raises(NexusCoreError, match="max_line_bytes"):
        SseObserver(max_line_bytes=0)
    assert issubclass(NexusCoreError, ValueError)
    with pytest.raises(ValueError, match="max_line_bytes"):
        ReferenceSseObserver(max_line_bytes=0)


def test_feed_accepts_buffers_and_never_mutates_them() -> None:
    counts = []
    for make in (bytes, bytearray, lambda b: memoryview(bytearray(b)), memoryview):
        chunk = make(REALISTIC)
        before = bytes(chunk)
        obs = SseObserver()
        counts.append(obs.feed(chunk))
        assert bytes(chunk) == before
        assert obs.message_id == "msg_01XFDUDYJgAACzvnptvVoYEL"
    assert counts == [15, 15, 15, 15]
    with pytest.raises(TypeError):
        SseObserver().feed("data: text is not bytes\n\n")  # type: ignore[arg-type]


def test_overflow_is_bounded_and_reported() -> None:
    for cls in (SseObserver, ReferenceSseObserver):
        obs = cls(max_line_bytes=64)
        obs.feed(b"data: " + b"x" * 10_000)
        obs.feed(b'\n\ndata: {"type":"message_stop"}\n\n')
        assert obs.overflowed
        assert obs.saw_message_stop
        assert obs.event_count == 1


# ---------------------------------------------------------------- hostile data

START = (
    b'data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
    b'"model":"claude-x","content":[],"stop_reason":null,"usage":{"input_tokens":7,"output_tokens":1}}}\n\n'
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
)
END = (
    b'data: {"type":"content_block_stop","index":0}\n\n'
    b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5}}\n\n'
    b'data: {"type":"message_stop"}\n\n'
)


def text_delta(text_json: bytes, extra: bytes = b"") -> bytes:
    head = b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":'
    return head + text_json + extra + b"}}\n\n"


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


@pytest.mark.parametrize(
    ("hostile", "text", "repairs"),
    [
        (text_delta(rb'"b\ud800c"'), "ab\\ud800cz", ["surrogate_escaped"]),
        (text_delta(b'"b\xffc"'), "ab\\xFFcz", ["invalid_utf8"]),
        (text_delta(b'"b"', b',"pad":' + deep(100_000)), "abz", ["depth_limited"]),
        (b"data: {not json\n\n", "az", ["not_json"]),
        (text_delta(b'"b"'), "abz", []),
    ],
    ids=["lone_surrogate", "invalid_utf8", "deep_nesting", "garbage", "valid"],
)
def test_hostile_text_delta_is_kept_and_named(hostile: bytes, text: str, repairs: list[str]) -> None:
    for cls in (SseObserver, ReferenceSseObserver):
        obs = cls()
        obs.feed(START + text_delta(b'"a"') + hostile + text_delta(b'"z"') + END)
        message = orjson.loads(obs.message_json())
        assert message["content"][0]["text"] == text
        assert (message["id"], message["stop_reason"]) == ("msg_1", "end_turn")
        assert orjson.loads(obs.usage_json()) == {"input_tokens": 7, "output_tokens": 5}
        assert (obs.input_tokens, obs.output_tokens) == (7, 5)
        assert obs.saw_message_stop
        assert obs.malformed_events == (1 if repairs == ["not_json"] else 0)
        assert obs.repairs == repairs


def test_huge_usage_numbers_are_kept_and_named() -> None:
    big = b"123456789012345678901234567890"
    stream = START.replace(b'"input_tokens":7', b'"input_tokens":1e999999') + END.replace(
        b'"output_tokens":5', b'"output_tokens":' + big
    )
    for cls in (SseObserver, ReferenceSseObserver):
        obs = cls()
        obs.feed(stream)
        assert obs.message_id == "msg_1"
        usage = orjson.loads(obs.usage_json())
        assert usage == {"input_tokens": "1e999999", "output_tokens": big.decode()}, "exact text, not a float"
        assert orjson.loads(obs.message_json())["usage"] == usage
        assert obs.input_tokens == 0  # a string is not a count
        assert obs.output_tokens == 2**64 - 1  # saturated; the storage encoder clamps it to int8
        assert obs.repairs == ["number_as_text", "int_clamped"]


def test_tool_input_too_deep_is_cut_and_named() -> None:
    partial = orjson.dumps(deep(100_000).decode())
    stream = (
        START.replace(b'"type":"text","text":""', b'"type":"tool_use","id":"t","name":"n","input":{}')
        + b'data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":'
        + partial
        + b"}}\n\n"
        + END
    )
    for cls in (SseObserver, ReferenceSseObserver):
        obs = cls()
        obs.feed(stream)
        tool_input = orjson.loads(obs.message_json())["content"][0]["input"]
        depth = 0
        while isinstance(tool_input, list):
            depth, tool_input = depth + 1, tool_input[0]
        assert depth == _core.MAX_JSON_DEPTH and isinstance(tool_input, str)
        assert obs.repairs == ["depth_limited"]


# ------------------------------------------------------------ generated streams

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
count = st.integers(min_value=0, max_value=10**9)


def pieces(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(text)), max_size=5))))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def anthropic_stream(draw: st.DrawFn) -> bytes:
    events: list[tuple[str, dict[str, Any]]] = []
    usage: dict[str, Any] = {
        "input_tokens": draw(count),
        "cache_creation_input_tokens": draw(count),
        "cache_read_input_tokens": draw(count),
        "cache_creation": {"ephemeral_5m_input_tokens": draw(count), "ephemeral_1h_input_tokens": draw(count)},
        "output_tokens": draw(count),
    }
    if draw(st.booleans()):
        usage["service_tier"] = draw(st.sampled_from(["standard", "priority"]))
    message = {
        "id": "msg_" + draw(st.text("abcXYZ019", min_size=1, max_size=24)),
        "type": "message",
        "role": "assistant",
        "model": draw(st.sampled_from(["claude-sonnet-4-6", "claude-opus-4-6", "claude-haiku-4-5"])),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    events.append(("message_start", {"type": "message_start", "message": message}))
    for index in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            events.append(("ping", {"type": "ping"}))
        kind = draw(st.sampled_from(["text", "tool_use", "server_tool_use", "thinking", "mystery"]))
        delta_events: list[dict[str, Any]] = []
        if kind == "text":
            block: dict[str, Any] = {"type": "text", "text": ""}
            for p in pieces(draw, draw(st.text(max_size=40))):
                delta_events.append({"type": "text_delta", "text": p})
        elif kind.endswith("tool_use"):
            block = {"type": kind, "id": f"toolu_{index}", "name": draw(st.text(max_size=10)), "input": {}}
            raw = orjson.dumps(draw(json_value)).decode() if draw(st.integers(0, 5)) else '{"trunc'
            for p in pieces(draw, raw):
                delta_events.append({"type": "input_json_delta", "partial_json": p})
        elif kind == "thinking":
            block = {"type": "thinking", "thinking": "", "signature": ""}
            for p in pieces(draw, draw(st.text(max_size=30))):
                delta_events.append({"type": "thinking_delta", "thinking": p})
            delta_events.append({"type": "signature_delta", "signature": draw(st.text("abc=+/", max_size=20))})
        else:
            block = {"type": "mystery_block", "payload": draw(json_value)}
            delta_events.append({"type": "mystery_delta", "x": 1})
        events.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": block}))
        for d in delta_events:
            events.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    for _ in range(draw(st.integers(0, 3))):
        delta_usage: dict[str, Any] = {"output_tokens": draw(count)}
        if draw(st.booleans()):
            delta_usage["input_tokens"] = draw(st.none() | count)
            delta_usage["server_tool_use"] = {"web_search_requests": draw(st.integers(0, 5))}
        delta = {
            "stop_reason": draw(st.sampled_from(["end_turn", "tool_use", "max_tokens", "stop_sequence", None])),
            "stop_sequence": draw(st.none() | st.text(max_size=5)),
        }
        events.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": delta_usage}))
    if draw(st.booleans()):
        error_type = draw(st.sampled_from(["overloaded_error", "api_error"]))
        error = {"type": error_type, "message": draw(st.text(max_size=20))}
        events.append(("error", {"type": "error", "error": error}))
    if draw(st.booleans()):
        events.append(("message_stop", {"type": "message_stop"}))
    if draw(st.booleans()):
        events.append(("brand_new_event", {"type": "brand_new_event", "data": [1, 2]}))

    eol = draw(st.sampled_from(["\n", "\r\n", "\r"])).encode()
    out = bytearray()
    for name, data in events:
        if draw(st.integers(0, 9)) == 0:
            out += b": keep-alive" + eol
        out += b"event: " + name.encode() + eol
        if draw(st.integers(0, 4)) == 0:  # multi-line data, joined back with \n by the parser
            for line in orjson.dumps(data, option=orjson.OPT_INDENT_2).split(b"\n"):
                out += b"data: " + line + eol
        else:
            out += b"data:" + (b" " if draw(st.booleans()) else b"") + orjson.dumps(data) + eol
        out += eol
    return bytes(out)


cut_points = st.lists(st.integers(min_value=0, max_value=10**6), max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=anthropic_stream(), cuts=cut_points)
def test_generated_streams_rust_matches_reference_at_any_split(stream: bytes, cuts: list[int]) -> None:
    rust, ref = both(stream, cuts)
    assert rust == ref
    assert rust["malformed_events"] == 0
    whole = SseObserver()
    whole.feed(stream)
    assert snapshot(whole) == rust


# Edits that make an event's data hostile: each JSON parser refuses it, or a usage number is past 64 bits.
HOSTILE_EDITS = [
    (b'"text":"', rb'"text":"\ud800'),
    (b'"text":"', b'"text":"\xff\xed\xa0\x80\x01'),
    (b'"partial_json":"', rb'"partial_json":"\udc00'),
    (b'"thinking":"', b'"thinking":"\x00'),
    (b'"type":"content_block_delta"', b'"pad":' + deep(130) + b',"type":"content_block_delta"'),
    (b'"type":"message_start"', b'"pad":' + deep(100_000) + b',"type":"message_start"'),
    (b'"output_tokens":', b'"output_tokens":1234567890123456789012345'),
    (b'"input_tokens":', b'"input_tokens":1e99999'),
    (b'"cache_read_input_tokens":', b'"cache_read_input_tokens":-'),
    (b'"type":"ping"}', b'"type":"ping",}'),
]


@st.composite
def hostile_stream(draw: st.DrawFn) -> bytes:
    stream = draw(anthropic_stream())
    for old, new in draw(st.lists(st.sampled_from(HOSTILE_EDITS), max_size=4)):
        stream = stream.replace(old, new, draw(st.integers(1, 3)))
    return stream


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=hostile_stream(), cuts=cut_points)
def test_hostile_streams_rust_matches_reference_at_any_split(stream: bytes, cuts: list[int]) -> None:
    rust, ref = both(stream, cuts)
    assert rust == ref


sse_noise = st.lists(
    st.sampled_from(
        [
            b"\n",
            b"\r",
            b"\r\n",
            b":",
            b" ",
            b"data",
            b"event",
            b"data: ",
            b"{",
            b"}",
            b'"type"',
            b'"message_start"',
            b"\xef\xbb\xbf",
            "é東🌦".encode(),
            b"\xff",
            b'{"type":"message_stop"}',
            b'{"type":"error"}',
            b'"\\ud800"',
            b"1e999",
            b"[" * 130,
            b"]" * 130,
        ]
    )
    | st.binary(max_size=20),
    max_size=60,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(stream=sse_noise, cuts=cut_points, cap=st.sampled_from([16 * 1024 * 1024, 1, 7, 40]))
def test_garbage_never_raises_and_matches_reference(stream: bytes, cuts: list[int], cap: int) -> None:
    rust, ref = both(stream, cuts, max_line_bytes=cap)
    assert rust == ref
