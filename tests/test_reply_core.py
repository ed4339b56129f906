"""The Rust reply reader (`nexus._core.read_reply`, `SseObserver.reply`) against the Python code it
replaced (`tests.oracles.reply`): generated replies, hostile bytes and the recorded fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus._core import Reply, SseObserver, prompt_key, read_reply
from tests.oracles import reply as oracle

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "claude_code"
SSE_DATA = Path(__file__).resolve().parent.parent / "nexus_core" / "tests" / "data"
FIELDS = (
    "message_id",
    "model",
    "stop_reason",
    "usage_json",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "usage_not_integer",
    "tool_call_count",
    "launches",
    "text",
)
#: Letters given a lower case after Unicode 14.0 (Python 3.11's tables); the reader keeps them as
#: Python does (`test_every_code_point_is_lower_cased_as_python_does`).
NEWER_CASED = {0x1C89, 0xA7CB, 0xA7CC, 0xA7CE, 0xA7D2, 0xA7D4, 0xA7DA, 0xA7DC, *range(0x10D50, 0x10D66)}
NEWER_CASED |= set(range(0x16EA0, 0x16EB9))


def facts(reply: Reply) -> dict[str, Any]:
    return {name: getattr(reply, name) for name in FIELDS}


class Raw:
    """A token written into the body as is: what a JSON encoder would not write."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text!r})"


HOSTILE = [
    '"\\ud800"',  # a lone surrogate escape
    '"a\\udfffb"',
    "1e400",  # past a double
    "-1e400",
    "123456789012345678901234567890",  # past 64 bits, a double for orjson
    "18446744073709551616",
    "18446744073709551615",
    "-9223372036854775809",
    "-0",
    "-0.0",
    "1E2",
    "1.5e-7",
    "0.00001",
    '"\\u0000"',
    "[" * 140 + "]" * 140,  # deeper than serde_json reads as is
]


def dump(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(k) + ":" + dump(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


text = st.text(st.characters(exclude_categories=("Cs",)).filter(lambda c: ord(c) not in NEWER_CASED), max_size=30)
scalar = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
    | st.sampled_from(HOSTILE).map(Raw)
)
# ids that are containers hold ASCII only (see the oracle's known differences)
ascii_scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
ascii_scalar |= st.text(st.characters(max_codepoint=0x7E), max_size=8)
ascii_key = st.text(st.characters(max_codepoint=0x7E), max_size=3)
ascii_value = st.recursive(
    ascii_scalar, lambda c: st.lists(c, max_size=3) | st.dictionaries(ascii_key, c, max_size=3), max_leaves=6
)
value = st.recursive(scalar, lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3), max_leaves=8)
count = st.integers(min_value=-5, max_value=2**64 + 5) | value
usage = st.dictionaries(
    st.sampled_from([*oracle._COUNTS, "service_tier", "cache_creation", "server_tool_use"]) | text, count, max_size=6
)
block = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["text", "tool_use", "server_tool_use", "mcp_tool_use", "thinking"]) | value,
        "text": text | value,
        "id": text | ascii_value,
        "name": st.sampled_from(["Agent", "Task", "Bash"]) | value,
        "input": st.fixed_dictionaries({}, optional={"prompt": text | value, "description": text}) | value,
    },
)
launch = st.fixed_dictionaries(
    {
        "type": st.just("tool_use"),
        "name": st.sampled_from(["Agent", "Task"]),
        "input": st.fixed_dictionaries({"prompt": text}, optional={"subagent_type": text}),
    },
    optional={"id": st.just("toolu_01") | text | ascii_value},
)
reply = st.fixed_dictionaries(
    {},
    optional={
        "id": text | value,
        "type": st.just("message"),
        "model": text | value,
        "stop_reason": st.sampled_from(["end_turn", "tool_use", "max_tokens"]) | value,
        "content": st.lists(block | launch, max_size=5) | value,
        "usage": usage | value,
    },
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply)
def test_generated_replies_read_as_python_read_them(message: dict[str, Any]) -> None:
    body = dump(message).encode("utf-8", "surrogatepass")
    assert facts(read_reply(body)) == oracle.read_reply(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | value.map(lambda v: dump(v).encode("utf-8", "surrogatepass")))
def test_any_bytes_read_as_python_read_them(body: bytes) -> None:
    assert facts(read_reply(body)) == oracle.read_reply(body)


def test_hostile_bodies_never_raise() -> None:
    deep = b'{"usage":{"input_tokens":3},"content":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for body in (b"", b"null", b"\xff\xfe", b'{"usage":', deep, b'{"content":5,"usage":{}}'):
        facts(read_reply(body))
    reply = read_reply(b'{"content":7,"usage":{"input_tokens":true}}')
    assert reply.launches == [] and reply.usage_not_integer and reply.tool_call_count == 0


def test_a_count_past_64_bits_is_exact() -> None:
    reply = read_reply(b'{"usage":{"output_tokens":123456789012345678901234567890}}')
    assert reply.output_tokens == int(123456789012345678901234567890.0)
    assert reply.usage_json == b'{"output_tokens":1.2345678901234568e+29}'


def test_every_code_point_is_lower_cased_as_python_does() -> None:
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    body = orjson.dumps({"content": [{"type": "text", "text": "a" + " a".join(chars)}]})
    assert read_reply(body).text == oracle.read_reply(body)["text"]


def fixture_replies() -> list[tuple[str, bytes]]:
    out = []
    for path in sorted(FIXTURES.glob("*/*.json")):
        data = orjson.loads(path.read_bytes())
        body = (data.get("response") or {}).get("body") if isinstance(data, dict) else None
        if isinstance(body, dict):
            out.append((str(path.relative_to(FIXTURES)), orjson.dumps(body)))
    return out


def test_recorded_replies_read_as_python_read_them() -> None:
    replies = fixture_replies()
    assert len(replies) >= 20
    launched = 0
    for name, body in replies:
        expected = oracle.read_reply(body)
        assert facts(read_reply(body)) == expected, name
        launched += len(expected["launches"])
    assert launched >= 2  # the sub-agent scenarios launch some


def test_a_stream_gives_the_reply_of_its_rebuilt_message() -> None:
    for path in sorted(SSE_DATA.glob("*.sse")):
        observer = SseObserver()
        observer.feed(path.read_bytes())
        reply = observer.reply()
        rebuilt = oracle.read_reply(observer.message_json())
        assert (reply.launches, reply.text) == (rebuilt["launches"], rebuilt["text"]), path.name
        assert (reply.message_id, reply.model, reply.stop_reason) == (
            observer.message_id,
            observer.model,
            observer.stop_reason,
        )
        assert reply.usage_json == observer.usage_json()
        assert reply.input_tokens == observer.input_tokens
        assert reply.output_tokens == observer.output_tokens
        assert reply.cache_read_input_tokens == observer.cache_read_input_tokens
        assert reply.cache_creation_input_tokens == observer.cache_creation_input_tokens
        assert reply.tool_call_count == len(observer.tool_uses)


@settings(max_examples=100, deadline=None)
@given(st.lists(block, max_size=4))
def test_a_streamed_reply_launches_what_the_json_one_does(blocks: list[dict[str, Any]]) -> None:
    """Blocks streamed (text deltas, tool input as partial JSON) give the launches and text the
    rebuilt message gives when read as JSON."""
    events = [{"type": "message_start", "message": {"id": "msg_1", "model": "m", "content": [], "usage": {}}}]
    for i, b in enumerate(blocks):
        kind = b.get("type") if b.get("type") in ("text", "tool_use") else "text"
        if kind == "text":
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": b["text"]}] if isinstance(b.get("text"), str) else []
        else:
            start = {"type": "tool_use", "id": b.get("id", ""), "name": b.get("name", ""), "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": dump(b.get("input", {}))}]
        events.append({"type": "content_block_start", "index": i, "content_block": start})
        events += [{"type": "content_block_delta", "index": i, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": i})
    events.append({"type": "message_stop"})
    stream = b"".join(b"data: " + dump(e).encode("utf-8", "surrogatepass") + b"\n\n" for e in events)
    observer = SseObserver()
    observer.feed(stream)
    reply = observer.reply()
    rebuilt = oracle.read_reply(observer.message_json())
    assert (reply.launches, reply.text) == (rebuilt["launches"], rebuilt["text"])


def test_a_launch_written_with_escapes_is_found() -> None:
    """Linking used to parse a reply only when its bytes held `"Agent"` or `"Task"`: a name written
    with a JSON escape was never read, so the sub-agent it launched found no parent."""
    body = rb'{"content":[{"type":"tool_use","id":"t1","name":"\u0041gent","input":{"prompt":"Go"}}]}'
    assert b'"Agent"' not in body
    assert read_reply(body).launches == [("t1", prompt_key("Go"))] == oracle.read_reply(body)["launches"]
