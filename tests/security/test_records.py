"""Second attack pass, storage: what a hostile reply leaves is never lost without a note, and never
pulls usage sums down."""

from __future__ import annotations

import time

from nexus._core import SseObserver
from nexus.proxy.recording import complete_record
from nexus.proxy.relay import Outcome
from nexus.storage.records import ExchangeRecord
from tests.stored_rows import stored_cells


def record(response: bytes | None = None) -> ExchangeRecord:
    return ExchangeRecord(
        "01a20ff9-a7fd-799f-8b74-7e2b1304e5de",
        int(time.time() * 1e6),
        "p",
        None,
        "POST",
        "/v1/messages",
        [],
        b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}',
        response_status=200,
        response_body=response,
    )


def cells(rec: ExchangeRecord) -> dict[str, object]:
    return stored_cells(rec)


def test_negative_and_unreadable_counts_are_not_counts() -> None:
    row = cells(record(b'{"type":"message","content":[],"usage":{"input_tokens":-5000,"output_tokens":1e999}}'))
    assert row["input_tokens"] is None and row["output_tokens"] is None
    assert row["storage_repairs"] == ["usage_not_integer", "number_as_text"]  # the stored body repaired too
    assert b'"1e999"' in row["usage"]  # type: ignore[operator]  # kept as its text, not null


def test_a_stream_that_lost_events_says_so() -> None:
    observer = SseObserver(max_line_bytes=64)
    stream = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message","role":'
        b'"assistant","model":"m","content":[],"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
        b"event: content_block_delta\ndata: 42\n\n"
        b"event: content_block_delta\ndata: " + b'"' + b"x" * 200 + b'"\n\n'
    )
    outcome = Outcome(status=200, streamed=True, observer=observer)
    observer.feed(stream)
    rec = record()
    complete_record(rec, outcome, time.monotonic())
    assert rec.repairs is not None
    assert "stream_event_too_large" in rec.repairs and "stream_events_malformed" in rec.repairs
    assert set(rec.repairs) <= set(cells(rec)["storage_repairs"])  # type: ignore[arg-type]
