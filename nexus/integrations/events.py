"""One finished request as the integrations see it, and what they read from its bodies.

`FinishedRequest.of` runs on the request path: it copies references and numbers the proxy already
holds (no parsing, no copying of bodies). `Reading.of` runs later, in a worker thread: it parses the
bodies once and pulls out what a message or a metric needs (the last user prompt, the reply text,
tool calls, usage). Its texts are NOT masked yet: whoever sends a part of them on masks that part
(`nexus.security.masking`), so a 100 KB prompt costs the masking of its excerpt only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from nexus.conversations.classify import classify
from nexus.storage.records import ExchangeRecord, _parse
from nexus.usage.counts import stored_count


@dataclass(slots=True)
class FinishedRequest:
    """What the proxy knew when a request finished (bodies by reference)."""

    request_id: str
    timestamp_ms: int
    project_id: str
    account_id: str | None
    method: str
    path: str
    model: str | None
    request_type: str | None
    status: int | None
    outcome: str
    error: str | None
    streamed: bool
    duration_ms: int | None
    first_byte_ms: int | None
    tokens: tuple[int | None, int | None, int | None, int | None]  # input, output, cache read, cache creation
    tool_call_count: int | None
    request_headers: list[tuple[str, str]]
    response_headers: list[tuple[str, str]] | None
    request_body: bytes | None
    response_body: bytes | None

    @classmethod
    def of(cls, record: ExchangeRecord) -> FinishedRequest:
        analysis = record.analysis
        request_type = record.request_type
        if request_type is None and analysis is not None:  # no conversation service (storage off)
            request_type = classify(record.path, analysis)
        return cls(
            request_id=record.request_id,
            timestamp_ms=record.started_at_us // 1000,
            project_id=record.project_id,
            account_id=record.account_id,
            method=record.method,
            path=record.path,
            model=analysis.model if analysis is not None else None,
            request_type=request_type,
            status=record.response_status,
            outcome=record.outcome,
            error=record.error,
            streamed=record.streamed,
            duration_ms=record.duration_ms,
            first_byte_ms=record.first_byte_ms,
            tokens=(
                record.input_tokens,
                record.output_tokens,
                record.cache_read_input_tokens,
                record.cache_creation_input_tokens,
            ),
            tool_call_count=record.tool_call_count,
            request_headers=record.request_headers,
            response_headers=record.response_headers,
            request_body=record.request_body,
            response_body=record.response_body,
        )

    @property
    def route(self) -> str:
        """The path without its query string (Claude Code posts to `/v1/messages?beta=true`)."""
        return self.path.partition("?")[0]

    @property
    def body_bytes(self) -> int:
        """Bytes of bodies this event keeps alive while it waits (queues are bounded by it)."""
        return len(self.request_body or b"") + len(self.response_body or b"")

    @property
    def failed(self) -> bool:
        return self.outcome != "completed" or (self.status or 0) >= 400


@dataclass(slots=True)
class ToolCall:
    name: str
    input: Any


@dataclass(slots=True)
class Reading:
    """The parsed, masked content of a finished request (built off the event loop)."""

    model: str | None = None
    #: Text of the last user message (its own text blocks, not tool results); None when it has none.
    prompt: str | None = None
    reply: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_creation_tokens: int | None = None
    tool_call_count: int | None = None

    @classmethod
    def of(cls, event: FinishedRequest) -> Reading:
        reading = cls(model=event.model)
        request = _parse(event.request_body)
        if isinstance(request, dict):
            if reading.model is None and isinstance(request.get("model"), str):
                reading.model = request["model"]
            messages = request.get("messages")
            if isinstance(messages, list):
                reading.prompt = _last_user_text(messages)
        i, o, cr, cc = event.tokens
        reading.input_tokens, reading.output_tokens = i, o
        reading.cache_read_tokens, reading.cache_creation_tokens = cr, cc
        reading.tool_call_count = event.tool_call_count
        response = _parse(event.response_body)
        if isinstance(response, dict):
            if isinstance(response.get("model"), str):
                reading.model = response["model"]
            content = response.get("content")
            if isinstance(content, list):
                texts = []
                for block in content:
                    if not isinstance(block, dict):
                        continue
                    if block.get("type") == "text" and isinstance(block.get("text"), str):
                        texts.append(block["text"])
                    elif str(block.get("type", "")).endswith("tool_use") and isinstance(block.get("name"), str):
                        reading.tool_calls.append(ToolCall(block["name"], block.get("input")))
                reading.reply = "\n".join(texts)
                if reading.tool_call_count is None:
                    reading.tool_call_count = len(reading.tool_calls)
            usage = response.get("usage")
            if isinstance(usage, dict) and reading.input_tokens is None:
                reading.input_tokens = stored_count(usage.get("input_tokens"))
                reading.output_tokens = stored_count(usage.get("output_tokens"))
                reading.cache_read_tokens = stored_count(usage.get("cache_read_input_tokens"))
                reading.cache_creation_tokens = stored_count(usage.get("cache_creation_input_tokens"))
        return reading


def _last_user_text(messages: list[Any]) -> str | None:
    """The text a person typed last: the last user message's text blocks. Claude Code wraps the real
    prompt between reminder blocks, so with more than two text blocks the first and last are dropped
    (as the reference does); `<system-reminder>` blocks are skipped."""
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content.strip() or None
        if not isinstance(content, list):
            return None
        texts = [
            b["text"]
            for b in content
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        ]
        if len(texts) > 2:
            texts = texts[1:-1]
        texts = [t for t in texts if not t.lstrip().startswith("<system-reminder>")]
        text = "\n".join(t.strip() for t in texts).strip()
        return text or None
    return None


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
