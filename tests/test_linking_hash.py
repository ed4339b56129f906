"""Linking facts: the Rust analysis and the Python reference agree on any body, and normalisation
ignores exactly what Claude Code changes between turns."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus._core import NexusCoreError, analyze_request, normalize_text, prompt_key
from tests.oracles import linking as ref

FACTS = [
    "model",
    "stream",
    "message_count",
    "system_message_count",
    "prefix_hashes",
    "kept_roles",
    "system_hash",
    "system_block_count",
    "system_head",
    "is_subagent",
    "has_tools",
    "first_user_key",
    "first_user_head",
    "last_user_head",
    "continuation_text",
    "trimmed_hash",
]

words = st.sampled_from(
    ["hi", " ", "\r\n", "\n", "\t", "café ✓", "<system-reminder>", "</system-reminder>", "<SYSTEM-REMINDER>",
     "ctx", "x-anthropic-billing-header: cc_version=2.1.1.abc;", " cc_is_subagent=true;", "<", "İ", "Summary:",
     ref.CONTINUATION_MARKER, "é" * 300]
)  # fmt: skip
texts = st.lists(words, max_size=8).map("".join) | st.text(max_size=30)
json_leaf = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | texts
json_value = st.recursive(
    json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3), max_leaves=8
)
EPHEMERAL = {"type": "ephemeral"}
cache = st.sampled_from([{}, {"cache_control": EPHEMERAL}])
ids = st.sampled_from(["t1", "t2", "t3", ""])


def block(top: bool) -> st.SearchStrategy[Any]:
    simple = [
        st.builds(lambda t, c: {"type": "text", "text": t, **c}, texts, cache),
        st.builds(lambda t: {"type": "thinking", "thinking": t, "signature": "s"}, texts),
        st.builds(
            lambda m, d: {"type": "image", "source": {"type": "base64", "media_type": m, "data": d}},
            st.sampled_from(["image/png", 5]),
            texts,
        ),
        st.builds(lambda t: {"type": t}, st.sampled_from(["document", "search_result", "weird", 3])),
        json_leaf,
    ]
    if top:
        tool_result_content = st.none() | texts | st.lists(block(False), max_size=3) | st.just({"x": 1})
        simple += [
            st.builds(
                lambda i, n, inp, c: {"type": "tool_use", "id": i, "name": n, "input": inp, **c},
                ids,
                st.sampled_from(["Bash", "Agent"]),
                json_value,
                cache,
            ),
            st.builds(
                lambda i, c, e: {"type": "tool_result", "tool_use_id": i, "content": c, "is_error": e},
                ids,
                tool_result_content,
                st.sampled_from([True, False, None, "yes"]),
            ),
        ]
    return st.one_of(simple)


message = st.builds(
    lambda role, content: {"role": role, "content": content},
    st.sampled_from(["user", "assistant", "system", "tool", 7]),
    texts | st.lists(block(True), max_size=4) | st.none() | st.integers(-5, 5),
) | st.just(3)
text_blocks = st.builds(lambda t, c: {"type": "text", "text": t, **c}, texts, cache)
system = st.none() | texts | st.lists(text_blocks, max_size=3)


def rust_facts(body: bytes) -> dict[str, Any]:
    a = analyze_request(body, strict=False)
    return {name: getattr(a, name) for name in FACTS}


@settings(max_examples=400, deadline=None)
@given(st.lists(message, max_size=8), system, st.sampled_from([None, True, "x"]), st.booleans())
def test_rust_and_reference_agree(messages: list[Any], system_value: Any, stream: Any, tools: bool) -> None:
    body: dict[str, Any] = {"model": "claude-sonnet-4-6", "messages": messages}
    if system_value is not None:
        body["system"] = system_value
    if stream is not None:
        body["stream"] = stream
    if tools:
        body["tools"] = [{"name": "Bash"}]
    raw = orjson.dumps(body)
    assert rust_facts(raw) == {name: ref.analyze_request(raw)[name] for name in FACTS}


@settings(max_examples=200, deadline=None)
@given(st.lists(message, max_size=4), st.lists(message, max_size=4), system, system)
def test_a_field_given_twice_is_read_as_its_last_copy(first: Any, last: Any, sys_first: Any, sys_last: Any) -> None:
    """As orjson (the oracle) and the stored body read it; found by the `analyze_request` fuzz target."""
    fields = [b'"model":"m"', b'"messages":' + orjson.dumps(first), b'"messages":' + orjson.dumps(last)]
    if sys_first is not None and sys_last is not None:
        fields[1:1] = [b'"system":' + orjson.dumps(sys_first), b'"system":' + orjson.dumps(sys_last)]
    raw = b"{" + b",".join(fields) + b"}"
    assert rust_facts(raw) == {name: ref.analyze_request(raw)[name] for name in FACTS}
    assert rust_facts(raw) == rust_facts(orjson.dumps(orjson.loads(raw)))


@settings(max_examples=200, deadline=None)
@given(texts)
def test_text_normalisation_agrees(text: str) -> None:
    assert normalize_text(text) == ref.normalize_text(text)
    assert prompt_key(text) == ref.prompt_key(text)


def hashes(a: Any) -> list[bytes]:
    raw = a.prefix_hashes
    return [raw[i : i + 16] for i in range(0, len(raw), 16)]


def analyze(messages: list[Any], **extra: Any) -> Any:
    return analyze_request(orjson.dumps({"model": "m", "messages": messages, **extra}))


def test_a_turn_continues_its_parent_whatever_the_client_reshaped() -> None:
    first = analyze(
        [
            {"role": "user", "content": [{"type": "text", "text": "<system-reminder>a</system-reminder>\nfix it"}]},
            {"role": "system", "content": "nudge"},
        ]
    )
    second = analyze(
        [
            {"role": "user", "content": "<system-reminder>b</system-reminder>\r\nfix it"},
            {"role": "assistant", "content": [{"type": "text", "text": "done", "cache_control": EPHEMERAL}]},
            {"role": "user", "content": [{"type": "text", "text": "thanks"}]},
        ]
    )
    assert hashes(second)[0] == hashes(first)[-1]
    assert len(hashes(second)) == 3 and second.kept_roles == b"uau"


def test_strict_analysis_refuses_what_the_proxy_cannot_forward() -> None:
    with pytest.raises(NexusCoreError, match="model: Field required"):
        analyze_request(b'{"messages": []}')
    with pytest.raises(NexusCoreError, match="not valid JSON"):
        analyze_request(b"{nope")
    assert analyze_request(b'{"messages": 1}', strict=False).message_count == 0


def test_parts_are_spans_of_the_body() -> None:
    body = orjson.dumps({"model": "m", "system": "s", "messages": [{"role": "user", "content": "a"}]})
    a = analyze_request(body)
    spans = {key: body[start:end] for key, _, start, end in a.part_spans}
    assert spans[a.system_key] == b'"s"'
    assert spans[a.message_keys[0]] == b'{"role":"user","content":"a"}'
