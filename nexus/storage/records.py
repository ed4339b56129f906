"""What the proxy hands to storage for one exchange, and how it becomes an `api_requests` row.

The request path only fills an `ExchangeRecord` with references to bytes it already holds: no parsing,
no hashing, no copying. The writer thread turns records into rows (splitting the body into
content-addressed parts, reading usage) off the event loop.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from nexus._core import RequestAnalysis, split_body

if TYPE_CHECKING:
    from nexus.conversations.linker import Link

#: Request headers kept with a stored request. An allow-list, so no credential can ever be stored.
STORED_REQUEST_HEADERS = frozenset(
    {
        "user-agent",
        "content-type",
        "accept",
        "anthropic-version",
        "anthropic-beta",
        "x-app",
        "x-claude-code-session-id",
        "x-claude-code-agent-id",
        "x-forwarded-for",
        "x-real-ip",
        "train-id",
        "msl-project-id",
        "x-train-account",
        "msl-account",
    }
)

#: `api_requests` columns written by the proxy, in COPY order, with their PostgreSQL types.
REQUEST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("request_id", "uuid"),
    ("timestamp", "timestamptz"),
    ("project_id", "text"),
    ("account_id", "text"),
    ("method", "text"),
    ("path", "text"),
    ("model", "text"),
    ("request_type", "text"),
    ("request_headers", "jsonb"),
    ("envelope", "jsonb"),
    ("system_key", "bytea"),
    ("tools_key", "bytea"),
    ("message_keys", "bytea[]"),
    ("message_count", "int4"),
    ("response_status", "int4"),
    ("response_headers", "jsonb"),
    ("response_body", "jsonb"),
    ("response_streaming", "bool"),
    ("input_tokens", "int8"),
    ("output_tokens", "int8"),
    ("cache_creation_input_tokens", "int8"),
    ("cache_read_input_tokens", "int8"),
    ("usage", "jsonb"),
    ("duration_ms", "int4"),
    ("first_byte_ms", "int4"),
    ("tool_call_count", "int4"),
    ("outcome", "text"),
    ("error", "text"),
    ("conversation_id", "uuid"),
    ("branch_id", "text"),
    ("parent_request_id", "uuid"),
    ("is_subtask", "bool"),
    ("parent_task_request_id", "uuid"),
    ("current_message_hash", "bytea"),
    ("parent_message_hash", "bytea"),
    ("system_hash", "bytea"),
    ("session_id", "text"),
    ("agent_id", "text"),
    ("task_prompt_keys", "bytea[]"),
    ("attempts", "int4"),
)
REQUEST_TYPES = [t for _, t in REQUEST_COLUMNS]
REQUEST_NAMES = [n for n, _ in REQUEST_COLUMNS]
#: The column lists of earlier releases by their length (a COPY tuple carries its field count), so a
#: batch spooled before an upgrade is replayed with the columns it was encoded with.
REQUEST_NAMES_BY_COUNT: dict[int, list[str]] = {n: REQUEST_NAMES[:n] for n in (28, 39, len(REQUEST_NAMES))}
BLOB_COLUMNS: tuple[tuple[str, str], ...] = (("key", "bytea"), ("kind", "int2"), ("body", "jsonb"))
BLOB_TYPES = [t for _, t in BLOB_COLUMNS]
BLOB_NAMES = [n for n, _ in BLOB_COLUMNS]


@dataclass(slots=True)
class ExchangeRecord:
    request_id: str
    started_at_us: int
    project_id: str
    account_id: str | None
    method: str
    path: str
    request_headers: list[tuple[str, str]]
    request_body: bytes | None
    response_status: int | None = None
    response_headers: list[tuple[str, str]] | None = None
    response_body: bytes | None = None  # JSON body, or the message rebuilt from a stream
    streamed: bool = False
    usage_json: bytes | None = None  # from the stream observer; JSON bodies carry their own
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    tool_call_count: int | None = None
    duration_ms: int | None = None
    first_byte_ms: int | None = None
    outcome: str = "completed"
    error: str | None = None
    analysis: RequestAnalysis | None = None  # computed once on the request path (split + linking facts)
    link: Link | None = None
    request_type: str | None = None
    task_prompt_keys: list[bytes] | None = None  # sub-agents the reply spawned
    attempts: int | None = None  # upstream attempts (retries and an OAuth replay included)


def _json_or_none(data: bytes | None) -> Any:
    if not data:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def to_row(rec: ExchangeRecord, blobs: dict[bytes, tuple[int, bytes]], known: Container[bytes] = ()) -> list[object]:
    """The `api_requests` row for `rec`; its body parts not in `known` are added to `blobs`."""
    headers = {k: v for k, v in rec.request_headers if k in STORED_REQUEST_HEADERS}
    envelope: bytes | None = None
    system_key = tools_key = None
    message_keys: list[bytes] | None = None
    model: str | None = None
    analysis, body = rec.analysis, rec.request_body
    if analysis is not None and body is not None:
        envelope, system_key, tools_key = analysis.envelope, analysis.system_key, analysis.tools_key
        message_keys, model = analysis.message_keys, analysis.model
        for key, kind, start, end in analysis.part_spans:
            if key not in known and key not in blobs:
                blobs[key] = (kind, body[start:end])  # only parts the database may not have are copied
    elif body:
        try:
            split = split_body(body)
        except ValueError:
            envelope = orjson.dumps({"unparsed_body": body.decode("utf-8", "replace")})
        else:
            envelope, system_key, tools_key = split.envelope, split.system_key, split.tools_key
            message_keys = split.message_keys
            for key, kind, part in split.parts:
                if key not in known:
                    blobs.setdefault(key, (kind, part))
            parsed_envelope = orjson.loads(envelope)
            model = parsed_envelope.get("model") if isinstance(parsed_envelope, dict) else None
    usage_bytes = rec.usage_json
    input_tokens, output_tokens = rec.input_tokens, rec.output_tokens
    cache_creation, cache_read = rec.cache_creation_input_tokens, rec.cache_read_input_tokens
    tool_calls = rec.tool_call_count
    parsed = _json_or_none(rec.response_body)  # once: it checks the body and gives the usage
    response_body = rec.response_body if parsed is not None else None
    if not rec.streamed and response_body is not None:
        if isinstance(parsed, dict) and isinstance(parsed.get("usage"), dict):
            usage = parsed["usage"]
            usage_bytes = orjson.dumps(usage)
            input_tokens = usage.get("input_tokens")
            output_tokens = usage.get("output_tokens")
            cache_creation = usage.get("cache_creation_input_tokens")
            cache_read = usage.get("cache_read_input_tokens")
            content = parsed.get("content")
            if isinstance(content, list):
                tool_calls = sum(
                    1 for b in content if isinstance(b, dict) and str(b.get("type", "")).endswith("tool_use")
                )
    return [
        rec.request_id,
        rec.started_at_us,
        rec.project_id,
        rec.account_id,
        rec.method,
        rec.path,
        model,
        rec.request_type,
        orjson.dumps(headers),
        envelope,
        system_key,
        tools_key,
        message_keys,
        len(message_keys) if message_keys is not None else None,
        rec.response_status,
        orjson.dumps(dict(rec.response_headers)) if rec.response_headers is not None else None,
        response_body,
        rec.streamed,
        input_tokens,
        output_tokens,
        cache_creation,
        cache_read,
        usage_bytes,
        rec.duration_ms,
        rec.first_byte_ms,
        tool_calls,
        rec.outcome,
        rec.error,
        *link_cells(rec.link),
        analysis.system_hash if analysis is not None else None,
        headers.get("x-claude-code-session-id"),
        headers.get("x-claude-code-agent-id"),
        rec.task_prompt_keys or None,
        rec.attempts,
    ]


def link_cells(link: Link | None) -> list[object]:
    """conversation_id .. parent_message_hash, as the linker decided them."""
    if link is None:
        return [None, None, None, False, None, None, None]
    return [
        link.conversation_id,
        link.branch_id,
        link.parent_request_id,
        link.is_subtask,
        link.parent_task_request_id,
        link.current_hash,
        link.parent_hash,
    ]
