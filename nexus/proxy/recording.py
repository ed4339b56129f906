"""Turning what happened to one proxied request into the record storage keeps."""

from __future__ import annotations

import time

from nexus.proxy.relay import Outcome
from nexus.storage.records import ExchangeRecord

SHUTDOWN_ERROR = "ended by the shutdown deadline (SHUTDOWN_TIMEOUT_MS)"


def complete_record(record: ExchangeRecord, outcome: Outcome, started: float) -> None:
    """Fill the response side of `record` from the relay's outcome (one crossing into Rust per field)."""
    record.response_status = outcome.status or record.response_status
    record.response_headers = outcome.headers
    record.streamed = outcome.streamed
    record.duration_ms = int((time.monotonic() - started) * 1000)
    if outcome.first_byte_at is not None:
        record.first_byte_ms = int((outcome.first_byte_at - started) * 1000)
    if outcome.error == "shutdown":  # ended by the shutdown deadline (drain.py), not by the upstream
        record.outcome, record.error = "shutdown", SHUTDOWN_ERROR
    elif outcome.error:
        record.outcome, record.error = "upstream_error", outcome.error
    elif record.response_status is not None and record.response_status >= 400 and record.outcome == "completed":
        attempts = f" after {record.attempts} attempts" if record.attempts and record.attempts > 1 else ""
        record.outcome, record.error = "upstream_error", f"upstream answered {record.response_status}{attempts}"
    observer = outcome.observer
    record.reply = outcome.reply()
    if observer is not None:
        record.response_body = observer.message_json()
        record.take_stream_usage(observer)
        repairs = list(observer.repairs)
        if observer.overflowed:  # an event over the line limit was dropped from the rebuilt message
            repairs.append("stream_event_too_large")
        if observer.malformed_events and "not_json" not in repairs:  # events that are not JSON objects
            repairs.append("stream_events_malformed")
        record.repairs = repairs or None
        if observer.error is not None and not outcome.error:
            record.outcome, record.error = "stream_error", f"{observer.error[0]}: {observer.error[1]}"
    else:
        record.response_body = outcome.response_body
