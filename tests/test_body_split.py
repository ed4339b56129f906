"""Content-addressed bodies: each part is the exact bytes of its value (orjson is the oracle), and a body is
always rebuilt exactly."""

from __future__ import annotations

import orjson
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus._core import NexusCoreError, join_body, split_body


def claude_code_body(turns: int) -> bytes:
    messages: list[dict[str, object]] = [
        {"role": "user", "content": [{"type": "text", "text": "<system-reminder>ctx</system-reminder>"}]}
    ]
    for t in range(turns):
        messages.append(
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": f"step {t} — café ✓"},
                    {"type": "tool_use", "id": f"toolu_{t}", "name": "Bash", "input": {"command": 'ls "a b"\n'}},
                ],
            }
        )
        messages.append(
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": f"toolu_{t}",
                        "content": "ok",
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
            }
        )
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 32000,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.330.abc;"},
            {"type": "text", "text": "You are Claude Code."},
        ],
        "tools": [{"name": f"t{i}", "input_schema": {"type": "object"}} for i in range(20)],
        "messages": messages,
        "metadata": {"user_id": '{"device_id":"d"}'},
        "stream": True,
        "thinking": {"type": "adaptive"},
    }
    return orjson.dumps(body)


def rebuild(body: bytes) -> bytes:
    s = split_body(body)
    parts = {k: raw for k, _, raw in s.parts}
    messages = [parts[k] for k in s.message_keys] if s.message_keys is not None else None
    system = parts[s.system_key] if s.system_key else None
    tools = parts[s.tools_key] if s.tools_key else None
    return join_body(s.envelope, system, tools, messages)


SYSTEM, TOOLS, MESSAGE = 1, 2, 0  # the kinds of part


def assert_split_as_orjson_reads_it(body: bytes) -> None:
    """Each part is an exact slice of the body whose value orjson reads as the body's, keyed by its
    xxh3-128; what is not a part stays in the envelope."""
    split, doc = split_body(body), orjson.loads(body)
    kinds: dict[bytes, int] = {}
    for key, kind, raw in split.parts:
        assert key == xxhash.xxh3_128_digest(raw)
        assert raw in body and raw == raw.strip(b" \t\r\n")  # the exact bytes, nothing re-serialised
        kinds[key] = kind
    assert len(kinds) == len(split.parts)  # each content once
    parts = {k: raw for k, _, raw in split.parts}
    envelope = dict(doc)
    if "system" in doc:
        assert orjson.loads(parts[split.system_key]) == envelope.pop("system")
    else:
        assert split.system_key is None
    if "tools" in doc:
        assert orjson.loads(parts[split.tools_key]) == envelope.pop("tools")
    else:
        assert split.tools_key is None
    if isinstance(doc.get("messages"), list):
        assert [orjson.loads(parts[k]) for k in split.message_keys] == envelope.pop("messages")
    else:
        assert split.message_keys is None
    assert orjson.loads(split.envelope) == envelope
    # Each part once, with the kind of its first use in the body (a message equal to the system is one part).
    first_use: dict[bytes, int] = {}
    for name in doc:
        if name == "system":
            first_use.setdefault(split.system_key, SYSTEM)
        elif name == "tools":
            first_use.setdefault(split.tools_key, TOOLS)
        elif name == "messages" and split.message_keys is not None:
            for key in split.message_keys:
                first_use.setdefault(key, MESSAGE)
    assert kinds == first_use


@pytest.mark.parametrize("turns", [0, 1, 15])
def test_claude_code_bodies(turns: int) -> None:
    body = claude_code_body(turns)
    assert_split_as_orjson_reads_it(body)
    assert orjson.loads(rebuild(body)) == orjson.loads(body)


def test_growing_conversation_shares_parts() -> None:
    a, b = split_body(claude_code_body(3)), split_body(claude_code_body(4))
    assert b.message_keys[: len(a.message_keys)] == a.message_keys  # the history is stored once
    assert a.system_key == b.system_key and a.tools_key == b.tools_key
    changed = split_body(claude_code_body(3).replace(b"step 2", b"step 9"))
    assert changed.message_keys != a.message_keys and changed.message_keys[0] == a.message_keys[0]


def test_pretty_printed_and_escaped_input() -> None:
    body = (
        b'{ "model" : "m",\n "messages" : [ {"role":"user","content":"a\\"b\\\\"} , '
        b'{"x":[1,{"y":"]"}]} ],\n "s\\u00e9":1 }'
    )
    assert_split_as_orjson_reads_it(body)
    assert orjson.loads(rebuild(body)) == orjson.loads(body)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["model", "system", "tools", "messages", "x", "é"]), json_values, max_size=5),
    st.lists(json_values, max_size=6),
    st.booleans(),
)
def test_generated_bodies(fields: dict[str, object], messages: list[object], indent: bool) -> None:
    fields["messages"] = messages
    body = orjson.dumps(fields, option=orjson.OPT_INDENT_2 if indent else 0)
    assert_split_as_orjson_reads_it(body)
    assert orjson.loads(rebuild(body)) == orjson.loads(body)


@pytest.mark.parametrize("bad", [b"", b"[1]", b"{", b'{"a":1', b"\xff", b'"x"'])
def test_invalid_bodies_raise(bad: bytes) -> None:
    with pytest.raises(NexusCoreError):
        split_body(bad)
