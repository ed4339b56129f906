"""Rust (`nexus._core`) vs its Python oracle (`tests.oracles`), same inputs, same results.

The body split and the COPY encoder have no Python twin any more (orjson and PostgreSQL are their
oracles in the tests): the split is set against what parsing the body with orjson and writing each part
back costs, the encoder is timed alone."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from bench.micro.inputs import (
    BODY,
    RECORDED_BODY,
    REPLY_COMPACTION,
    REPLY_LAUNCH,
    REPLY_LONG,
    STREAM,
    storage_records,
    storage_rows,
)
from nexus import _core
from nexus.storage.records import BLOB_TYPES, REQUEST_TYPES, build_batch
from tests.oracles import linking as ref_linking
from tests.oracles import python_rows as ref_rows
from tests.oracles import reply as ref_reply
from tests.oracles import safe as ref_safe
from tests.oracles.sse import ReferenceSseObserver

ROWS, BLOBS = storage_rows()
RECORDS = storage_records()


def _encode(encoder: Any) -> tuple[bytes, bytes]:
    """One writer flush: the api_requests payload and the content_blobs payload."""
    return encoder(REQUEST_TYPES, ROWS), encoder(BLOB_TYPES, BLOBS)


def _observe(observer_type: Any) -> bytes | None:
    observer = observer_type()
    for chunk in STREAM:
        observer.feed(chunk)
    return observer.message_json()


@pytest.mark.benchmark(group=f"SSE: {len(STREAM)} events, {sum(map(len, STREAM)) // 1024} KiB")
def test_sse_rust(benchmark: Any) -> None:
    message = benchmark(_observe, _core.SseObserver)
    assert message == _observe(ReferenceSseObserver)


@pytest.mark.benchmark(group=f"SSE: {len(STREAM)} events, {sum(map(len, STREAM)) // 1024} KiB")
def test_sse_python(benchmark: Any) -> None:
    assert benchmark(_observe, ReferenceSseObserver) is not None


def _orjson_split(body: bytes) -> list[bytes]:
    """The Python alternative to the split: parse the body, write each message back (not byte-exact)."""
    return [orjson.dumps(m) for m in orjson.loads(body)["messages"]]


@pytest.mark.benchmark(group=f"split body: {len(BODY) // 1024} KiB Claude Code body")
def test_split_rust(benchmark: Any) -> None:
    split = benchmark(_core.split_body, BODY)
    assert len(split.message_keys) == len(_orjson_split(BODY))


@pytest.mark.benchmark(group=f"split body: {len(BODY) // 1024} KiB Claude Code body")
def test_split_orjson_reference(benchmark: Any) -> None:
    benchmark(_orjson_split, BODY)


@pytest.mark.benchmark(group=f"COPY encode: {len(ROWS)} rows + {len(BLOBS)} blobs")
def test_copy_rust(benchmark: Any) -> None:
    requests, blobs = benchmark(_encode, _core.encode_copy_binary)
    assert requests.startswith(b"PGCOPY\n\xff\r\n\x00") and blobs.endswith(b"\xff\xff")


def _python_batch() -> tuple[bytes, bytes]:
    """The writer's batch before: rows built in Python (the oracle), then encoded by the Rust core."""
    blobs: dict[bytes, tuple[int, bytes]] = {}
    rows = [ref_rows.to_row(rec, blobs) for rec in RECORDS]
    return _core.encode_copy_binary(REQUEST_TYPES, rows), _core.encode_copy_binary(
        BLOB_TYPES, [[k, *v, None] for k, v in blobs.items()]
    )


# The writer's whole batch: rows built and encoded. Rust: one call, the encoding with the GIL released.
@pytest.mark.benchmark(group=f"storage batch built + encoded: {len(RECORDS)} records")
def test_batch_rust(benchmark: Any) -> None:
    built = benchmark(build_batch, RECORDS)
    assert (built.requests, built.blobs) == _python_batch()


@pytest.mark.benchmark(group=f"storage batch built + encoded: {len(RECORDS)} records")
def test_batch_python(benchmark: Any) -> None:
    benchmark(_python_batch)


# The check every jsonb cell goes through before COPY: normal JSON is validated once and copied as is.
@pytest.mark.benchmark(group=f"safe_json validate: {len(RECORDED_BODY) // 1024} KiB recorded Claude Code body")
def test_safe_json_rust(benchmark: Any) -> None:
    assert benchmark(_core.safe_json, RECORDED_BODY) == (RECORDED_BODY, [])
    per_byte = benchmark.stats.stats.min / len(RECORDED_BODY) * 1e9
    benchmark.extra_info["ns_per_byte"] = round(per_byte, 3)


@pytest.mark.benchmark(group=f"safe_json validate: {len(RECORDED_BODY) // 1024} KiB recorded Claude Code body")
def test_safe_json_python(benchmark: Any) -> None:
    assert benchmark(ref_safe.safe_json, RECORDED_BODY) == (RECORDED_BODY, [])


# The request path's one-pass analysis (storage split, strict checks, normalised message prefix hashes
# for linking, system hash) against its Python reference.
@pytest.mark.benchmark(group=f"request analysis + linking hashes: {len(BODY) // 1024} KiB")
def test_analyze_rust(benchmark: Any) -> None:
    analysis = benchmark(_core.analyze_request, BODY)
    assert analysis.prefix_hashes == ref_linking.analyze_request(BODY)["prefix_hashes"]


@pytest.mark.benchmark(group=f"request analysis + linking hashes: {len(BODY) // 1024} KiB")
def test_analyze_python(benchmark: Any) -> None:
    benchmark(ref_linking.analyze_request, BODY)


# --- one JSON reply: every consumer's facts -----------------------------------------------------------

REPLIES = {"launch": (REPLY_LAUNCH, False), "compaction": (REPLY_COMPACTION, True), "long": (REPLY_LONG, False)}


def _reply_rust(body: bytes, compaction: bool) -> tuple[Any, ...]:
    """One call into Rust, then what each consumer reads of the result."""
    r = _core.read_reply(body)
    storage = (r.usage_json, r.input_tokens, r.output_tokens, r.cache_creation_input_tokens)
    storage += (r.cache_read_input_tokens, r.usage_not_integer, r.tool_call_count)
    return storage, (r.model, r.message_id, r.stop_reason), r.launches, r.text if compaction else ""


def _reply_python(body: bytes, compaction: bool) -> tuple[Any, ...]:
    """What ran in Python per JSON reply before: storage's parse (usage, counts, tool calls), the
    counters' own parse, tracing's own parse, and linking's (after its byte pre-check) with the
    prompt keys and, for a compaction, the text."""
    parsed = ref_reply.parse(body)  # records._cells
    usage = parsed["usage"]
    counts = [ref_reply.stored_count(usage.get(k)) for k in ref_reply._COUNTS]
    tools = sum(1 for b in parsed["content"] if isinstance(b, dict) and str(b.get("type", "")).endswith("tool_use"))
    flagged = any(c is None and usage.get(k) is not None for c, k in zip(counts, ref_reply._COUNTS, strict=True))
    storage = (ref_reply._dumps(usage), *counts, flagged, tools)
    again = orjson.loads(body)  # counters._usage_from_body
    _ = [again["usage"].get(k) for k in ref_reply._COUNTS], [b for b in again["content"] if isinstance(b, dict)]
    traced = orjson.loads(body)  # app._reply_facts
    trace = (traced.get("model"), traced.get("id"), traced.get("stop_reason"))
    launches: list[tuple[str, bytes]] = []
    text = ""
    if compaction or any(f'"{n}"'.encode() in body for n in ref_reply.SUBAGENT_TOOLS):  # may_spawn_subagent
        message = orjson.loads(body)  # service.complete / shared._message
        launches = [(i, _core.prompt_key(p)) for i, p in ref_reply.spawned_prompts(message)]
        text = ref_reply.reply_text(message) if compaction else ""
    return storage, trace, launches, text


@pytest.mark.parametrize("name", list(REPLIES))
def test_reply_rust(benchmark: Any, name: str) -> None:
    body, compaction = REPLIES[name]
    benchmark.group = f"reply facts: {name}, {len(body):,} B JSON"
    got = benchmark(_reply_rust, body, compaction)
    assert got == _reply_python(body, compaction)


@pytest.mark.parametrize("name", list(REPLIES))
def test_reply_python(benchmark: Any, name: str) -> None:
    body, compaction = REPLIES[name]
    benchmark.group = f"reply facts: {name}, {len(body):,} B JSON"
    benchmark(_reply_python, body, compaction)
