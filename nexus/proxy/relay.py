"""Sending the upstream response to the client: SSE streamed as it arrives, JSON in one piece.

Streams are relayed chunk by chunk with the bytes untouched; the Rust observer reads the same chunks
(one boundary crossing per chunk) to learn ids, usage and errors without re-framing anything. If the
upstream breaks or goes silent after the stream has started, the status line is already sent, so the
failure is reported the way the API itself does it: an SSE `error` event, then the end of the stream.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from granian.rsgi import ProtocolClosed

from nexus._core import Reply, SseObserver, read_reply
from nexus.errors import ProxyError, sse_error_event
from nexus.proxy.deadline import Deadline
from nexus.proxy.drain import is_shutdown
from nexus.proxy.forward import OpenResponse
from nexus.proxy.headers import client_response_headers
from nexus.proxy.upstream import NetworkError, RequestError

#: Non-stream bodies up to this size are sent in one piece; larger or unsized ones are streamed through.
BUFFER_LIMIT = 16 * 1024 * 1024


@dataclass(slots=True)
class Outcome:
    """What happened on the way back, for accounting and storage."""

    status: int = 0
    headers: list[tuple[str, str]] | None = None
    streamed: bool = False
    first_byte_at: float | None = None
    response_body: bytes | None = None
    observer: SseObserver | None = None
    error: str | None = None
    _reply: Reply | None = None

    def reply(self) -> Reply | None:
        """What the reply says (ids, usage, tool calls, sub-agent launches, text), read once in Rust
        for the counters, tracing, linking and storage: from the stream observer, or from the JSON
        body (one crossing into Rust); None when there is neither."""
        if self._reply is None:
            if self.observer is not None:
                self._reply = self.observer.reply()
            elif self.response_body:
                self._reply = read_reply(self.response_body)
        return self._reply


async def relay_stream(
    proto: object,
    opened: OpenResponse,
    request_id: str,
    idle_timeout_s: float,
    outcome: Outcome,
    extra: list[tuple[str, str]],
) -> None:
    response = opened.response
    outcome.status = response.status
    outcome.streamed = True
    observer = outcome.observer = SseObserver()
    headers = outcome.headers = client_response_headers(response.headers.items(), request_id)
    transport = proto.response_stream(response.status, headers + extra if extra else headers)  # type: ignore[attr-defined]
    reader = response.body_reader
    try:
        with Deadline(idle_timeout_s) as idle:
            chunk = await reader.read_chunk()
            if chunk is not None:
                outcome.first_byte_at = time.monotonic()
            while chunk is not None:
                data = bytes(chunk)
                observer.feed(data)
                await transport.send_bytes(data)
                idle.touch()  # the silence counted is the upstream's, from the moment we are ready to read
                chunk = await reader.read_chunk()
    except TimeoutError:
        outcome.error = "stream_idle_timeout"
        message = f"Upstream sent nothing for {idle_timeout_s:g} s; stream ended by the proxy."
        await _send_last(transport, sse_error_event("timeout_error", message, request_id))
    except (NetworkError, RequestError) as exc:
        outcome.error = "upstream_disconnected"
        message = f"Upstream connection lost mid-stream ({exc.__class__.__name__})."
        await _send_last(transport, sse_error_event("api_error", message, request_id))
    except ProtocolClosed:
        await _client_gone(outcome)
    except asyncio.CancelledError as exc:
        if not is_shutdown(exc):
            raise
        # the shutdown deadline (drain.py): the client learns why its stream ends, then the request
        # is recorded as ended by the shutdown
        outcome.error = "shutdown"
        message = "The gateway is shutting down; the stream was ended before it completed."
        await _send_last(transport, sse_error_event("api_error", message, request_id))
        raise


async def _send_last(transport: object, event: bytes) -> None:
    try:
        await transport.send_bytes(event)  # type: ignore[attr-defined]
    except ProtocolClosed:
        pass  # the client left as well: nobody to tell


async def _client_gone(outcome: Outcome) -> None:
    """The client closed the connection while we were writing to it. The disconnect watcher (app.py)
    normally cancels the request the moment that happens, which records it as `client_disconnected`;
    give it a moment to do so, and record the disconnect here only if it does not."""
    await asyncio.sleep(0.05)
    outcome.error = "client_disconnected"


async def relay_buffered(
    proto: object,
    opened: OpenResponse,
    request_id: str,
    timeout_s: float,
    outcome: Outcome,
    extra: list[tuple[str, str]],
) -> None:
    response = opened.response
    try:
        with Deadline(timeout_s):
            body = bytes(await response.bytes())
    except TimeoutError:
        raise ProxyError(504, f"Upstream response body not complete within {timeout_s:g} s.", "timeout_error") from None
    except (NetworkError, RequestError) as exc:
        raise ProxyError(
            502, f"Upstream connection lost while reading the response ({exc.__class__.__name__})."
        ) from None
    outcome.status = response.status
    outcome.first_byte_at = time.monotonic()
    outcome.response_body = body
    headers = outcome.headers = client_response_headers(response.headers.items(), request_id)
    proto.response_bytes(response.status, headers + extra if extra else headers, body)  # type: ignore[attr-defined]


async def relay_passthrough(
    proto: object, opened: OpenResponse, request_id: str, outcome: Outcome, extra: list[tuple[str, str]]
) -> None:
    """A large or unsized non-SSE body (e.g. a file download) streamed through without observing it."""
    response = opened.response
    outcome.status = response.status
    headers = outcome.headers = client_response_headers(response.headers.items(), request_id)
    transport = proto.response_stream(response.status, headers + extra if extra else headers)  # type: ignore[attr-defined]
    reader = response.body_reader
    try:
        while (chunk := await reader.read_chunk()) is not None:
            if outcome.first_byte_at is None:
                outcome.first_byte_at = time.monotonic()
            await transport.send_bytes(bytes(chunk))
    except (NetworkError, RequestError) as exc:
        outcome.error = f"upstream_disconnected: {exc.__class__.__name__}"
    except ProtocolClosed:
        await _client_gone(outcome)


async def relay(
    proto: object,
    opened: OpenResponse,
    request_id: str,
    *,
    idle_timeout_s: float,
    body_timeout_s: float,
    outcome: Outcome,
    extra_headers: list[tuple[str, str]] | None = None,
) -> None:
    """Relay the upstream answer; `extra_headers` go to the client only (never stored), e.g. CORS grants."""
    extra = extra_headers or []
    content_type = opened.response.get_header("content-type") or ""
    if content_type.startswith("text/event-stream"):
        await relay_stream(proto, opened, request_id, idle_timeout_s, outcome, extra)
        return
    length = opened.response.get_header("content-length")
    if (length is not None and length.isdigit() and int(length) <= BUFFER_LIMIT) or content_type.startswith(
        "application/json"
    ):
        await relay_buffered(proto, opened, request_id, body_timeout_s, outcome, extra)
    else:
        await relay_passthrough(proto, opened, request_id, outcome, extra)
