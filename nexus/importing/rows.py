"""One reference `api_requests` row turned into the `ExchangeRecord` the proxy would have handed storage.

The reference row is read with every column as text (`source.py`), so no column type of an old or
altered schema can stop the read; here each value is checked and converted. A row that cannot stand
for a request at all (no usable id, time or project) raises `BadRow` with the reason, which the
importer counts as failed and reports; anything else odd (headers that are not an object, a body that
is not JSON, counts that are not numbers) is imported the way the proxy would store it, repaired and
flagged by the same row builder (`nexus.storage.records.build_batch`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta

import orjson

from nexus._core import SseObserver
from nexus.conversations.replay import analyze
from nexus.storage.records import ExchangeRecord

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INT4_MAX = 2**31 - 1
#: Response headers never kept, whatever a reference row holds (the proxy's stored responses never
#: carry them; a crafted row might).
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "cookie", "set-cookie"})
MAX_PROJECT = 255


class BadRow(ValueError):
    """A reference row that cannot be imported; the message says why."""


@dataclass(slots=True)
class ReferenceRow:
    """One `api_requests` row of the reference, every column as the text PostgreSQL gives for it
    (JSON columns as their JSON text), None where the column is NULL or the schema lacks it."""

    request_id: str | None
    timestamp: datetime | None
    project_id: str | None
    account_id: str | None = None
    method: str | None = None
    path: str | None = None
    headers: str | None = None
    body: str | None = None
    request_type: str | None = None
    response_status: str | None = None
    response_headers: str | None = None
    response_body: str | None = None
    input_tokens: str | None = None
    output_tokens: str | None = None
    cache_creation_input_tokens: str | None = None
    cache_read_input_tokens: str | None = None
    usage_data: str | None = None
    first_token_ms: str | None = None
    duration_ms: str | None = None
    error: str | None = None
    tool_call_count: str | None = None
    conversation_id: str | None = None


#: The columns read, in `ReferenceRow` order (the project column may be called `domain` in OLD schemas).
FIELDS = tuple(f.name for f in fields(ReferenceRow))


def request_id_of(value: str | None) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, TypeError):
        raise BadRow(f"request_id {_show(value)} is not a UUID") from None


def micros(at: datetime) -> int:
    """Microseconds since the epoch, exactly (a float would lose the last digits)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (at - EPOCH) // timedelta(microseconds=1)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json(text: str | None) -> object:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def _json_bytes(text: str | None) -> bytes | None:
    """The JSON text as bytes, or None for SQL NULL and JSON null."""
    if text is None or text.strip() == "null":
        return None
    return text.encode("utf-8", "surrogatepass")


def _int(text: str | None, *, low: int = 0, high: int = INT4_MAX) -> int | None:
    """A whole number within [low, high], or None (absent, not a number, out of range)."""
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            return None
        if number != number or number in (float("inf"), float("-inf")) or not number.is_integer():
            return None
        value = int(number)
    return value if low <= value <= high else None


def _header_pairs(text: str | None, *, drop: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """A JSON object of headers as (lower-case name, value) pairs; anything else gives none."""
    parsed = _json(text)
    if not isinstance(parsed, dict):
        return []
    pairs = []
    for name, value in parsed.items():
        key = str(name).lower()
        if key in drop:
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        elif not isinstance(value, str):
            value = orjson.dumps(value).decode() if value is not None else ""
        pairs.append((key, value))
    return pairs


def _project(value: str | None) -> str:
    project = (value or "").strip()
    if not project:
        raise BadRow("project_id is empty")
    if len(project) > MAX_PROJECT:
        raise BadRow(f"project_id is longer than {MAX_PROJECT} characters: {_show(project)}")
    if not project.isprintable():
        raise BadRow(f"project_id {_show(project)} holds control characters")
    return project


def rebuild_from_chunks(chunks: list[str]) -> tuple[bytes | None, SseObserver]:
    """The message rebuilt from stored SSE chunks (`streaming_chunks.data`, in chunk order)."""
    observer = SseObserver()
    for chunk in chunks:
        observer.feed(chunk.encode("utf-8", "surrogatepass"))
    observer.feed(b"\n\n")  # a last event without its blank line still counts
    return observer.message_json(), observer


def to_record(row: ReferenceRow, chunks: list[str] | None = None) -> ExchangeRecord:
    """The record storage writes for `row`; `BadRow` when the row cannot be a request."""
    request_id = request_id_of(row.request_id)
    if row.timestamp is None:
        raise BadRow("timestamp is missing")
    project = _project(row.project_id)
    path = (row.path or "/v1/messages").strip() or "/v1/messages"
    method = (row.method or "POST").strip().upper()[:16] or "POST"
    body = _json_bytes(row.body)
    status = _int(row.response_status, low=100, high=999)
    response_body = _json_bytes(row.response_body)
    usage = _json(row.usage_data)
    record = ExchangeRecord(
        request_id,
        micros(row.timestamp),
        project,
        (row.account_id or "").strip() or None,
        method,
        path,
        _header_pairs(row.headers),
        body,
        response_status=status,
        response_headers=_header_pairs(row.response_headers, drop=SECRET_HEADERS) if row.response_headers else None,
        response_body=response_body,
        usage_json=orjson.dumps(usage) if isinstance(usage, dict) else None,
        input_tokens=_int(row.input_tokens),
        output_tokens=_int(row.output_tokens),
        cache_creation_input_tokens=_int(row.cache_creation_input_tokens),
        cache_read_input_tokens=_int(row.cache_read_input_tokens),
        tool_call_count=_int(row.tool_call_count),
        duration_ms=_int(row.duration_ms),
        first_byte_ms=_int(row.first_token_ms),
        request_type=(row.request_type or None),
    )
    if response_body is None and chunks:
        # OLD versions may hold the stream's chunks where the final message is missing: rebuild it as
        # the proxy does for a stream it relays (usage and tool calls come from the same observer)
        rebuilt, observer = rebuild_from_chunks(chunks)
        if rebuilt is not None:
            record.response_body, record.streamed = rebuilt, True
            record.take_stream_usage(observer)
            record.repairs = list(observer.repairs) or None
    if status is None:
        record.outcome = "upstream_error"
        record.error = "imported without a response: the reference system stored none for this request"
    elif status >= 400:
        record.outcome = "upstream_error"
        record.error = (row.error or f"upstream answered {status}")[:2000]
    elif row.error:
        record.error = row.error[:2000]
    record.analysis = analyze(path, body)
    return record


def conversation_of(row: ReferenceRow) -> str | None:
    """The reference's conversation id, kept so that `nexus relink` keeps it where its rules start the
    conversation at the same request (analyses and bookmarks keyed by it stay valid)."""
    if row.conversation_id is None:
        return None
    try:
        return str(uuid.UUID(row.conversation_id))
    except ValueError:
        return None
