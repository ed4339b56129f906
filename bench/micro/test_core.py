"""Rust (`nexus._core`) vs the Python reference (`nexus.reference`), same inputs, same results."""

from __future__ import annotations

from typing import Any

import pytest

from bench.micro.inputs import BODY, RECORDED_BODY, STREAM, storage_rows
from nexus import _core
from nexus.reference import body as ref_body
from nexus.reference import copy as ref_copy
from nexus.reference import linking as ref_linking
from nexus.reference import safe as ref_safe
from nexus.reference.sse import ReferenceSseObserver
from nexus.storage.records import BLOB_TYPES, REQUEST_TYPES

ROWS, BLOBS = storage_rows()


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


@pytest.mark.benchmark(group=f"split body: {len(BODY) // 1024} KiB Claude Code body")
def test_split_rust(benchmark: Any) -> None:
    split = benchmark(_core.split_body, BODY)
    assert split.message_keys == ref_body.split_body(BODY)["message_keys"]


@pytest.mark.benchmark(group=f"split body: {len(BODY) // 1024} KiB Claude Code body")
def test_split_python(benchmark: Any) -> None:
    benchmark(ref_body.split_body, BODY)


@pytest.mark.benchmark(group=f"COPY encode: {len(ROWS)} rows + {len(BLOBS)} blobs")
def test_copy_rust(benchmark: Any) -> None:
    assert benchmark(_encode, _core.encode_copy_binary) == _encode(ref_copy.encode_copy_binary)


@pytest.mark.benchmark(group=f"COPY encode: {len(ROWS)} rows + {len(BLOBS)} blobs")
def test_copy_python(benchmark: Any) -> None:
    benchmark(_encode, ref_copy.encode_copy_binary)


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
