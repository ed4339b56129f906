"""What the proxy hands to storage for one exchange, and how it becomes an `api_requests` row.

The request path only fills an `ExchangeRecord` with references to bytes it already holds: no parsing,
no hashing, no copying (the reply was read once, in Rust: `ExchangeRecord.reply`). The writer thread
turns a whole batch of records into its COPY payloads in one call to the Rust core (`build_batch`):
the column layout is declared there once, the record's attributes are read once, and the encoding
runs with the GIL released, so the event loop serving requests is not held up by it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from nexus._core import STORED_REQUEST_HEADERS as _STORED_REQUEST_HEADERS
from nexus._core import (
    KnownKeys,
    Reply,
    RequestAnalysis,
    SseObserver,
    blob_columns,
    build_request_batch,
    read_reply,
    request_columns,
    safe_json,
)
from nexus.auth.client_keys import redact_client_keys
from nexus.conversations.session import session_of

if TYPE_CHECKING:
    from nexus.conversations.linker import Link

log = logging.getLogger("nexus.storage")

#: Request headers kept with a stored request. An allow-list, so no credential can ever be stored
#: (declared with the row builder, in Rust).
STORED_REQUEST_HEADERS: frozenset[str] = _STORED_REQUEST_HEADERS

#: The `api_requests` columns written now, (name, type) in their COPY order: the one table the Rust
#: row builder declares (`nexus_core/src/rows.rs`, with how each cell is obtained). `raw` (bytea)
#: holds the original bytes of the JSON column just before it when the encoder had to repair that
#: value; `storage_repairs` (text[], last) names what was repaired in the row. See nexus/_core.pyi.
REQUEST_COLUMNS: tuple[tuple[str, str], ...] = tuple(request_columns())
#: The staged search text (`nexus_core/src/search.rs`): not a column of `api_requests`, PostgreSQL
#: builds the row's `search_vector` from it (nexus/storage/payload.py).
SEARCH_TEXT = "search_text"
#: The staged title (`search.rs`: `nexus_title`'s text, empty for none, NULL for PostgreSQL to decide):
#: not a column of `api_requests`, the conversation summary takes it while it has no title.
CONVERSATION_TITLE = "conversation_title"
#: What only the staging table holds.
STAGED_ONLY = (SEARCH_TEXT, CONVERSATION_TITLE)
#: The columns of the first releases: the same without the encoder's pseudo columns and the staged
#: texts (spooled batches of those releases are replayed with them).
_BASE_COLUMNS = tuple(c for c in REQUEST_COLUMNS if c[1] not in ("raw", "repairs") and c[0] not in STAGED_ONLY)
REQUEST_TYPES = [t for _, t in REQUEST_COLUMNS]
REQUEST_NAMES = [n for n, _ in REQUEST_COLUMNS]
_LAYOUTS = (
    _BASE_COLUMNS[:28],
    _BASE_COLUMNS[:39],
    _BASE_COLUMNS,
    tuple(c for c in REQUEST_COLUMNS if c[0] not in STAGED_ONLY),  # before the search text was staged
    tuple(c for c in REQUEST_COLUMNS if c[0] != CONVERSATION_TITLE),  # before the title was staged
    REQUEST_COLUMNS,
)
#: Every column layout by its length (a COPY tuple carries its field count), so a batch spooled by an
#: earlier release is replayed with the columns it was encoded with.
REQUEST_NAMES_BY_COUNT: dict[int, list[str]] = {len(cols): [n for n, _ in cols] for cols in _LAYOUTS}
REQUEST_TYPES_BY_COUNT: dict[int, list[str]] = {len(cols): [t for _, t in cols] for cols in _LAYOUTS}
BLOB_COLUMNS: tuple[tuple[str, str], ...] = tuple(blob_columns())
BLOB_TYPES = [t for _, t in BLOB_COLUMNS]
BLOB_NAMES = [n for n, _ in BLOB_COLUMNS]
BLOB_NAMES_BY_COUNT: dict[int, list[str]] = {3: BLOB_NAMES[:3], 4: BLOB_NAMES}
BLOB_TYPES_BY_COUNT: dict[int, list[str]] = {3: BLOB_TYPES[:3], 4: BLOB_TYPES}


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
    repairs: list[str] | None = None  # what the stream observer had to repair to read the reply
    reply: Reply | None = None  # the reply read once on the request path (`Outcome.reply`)

    def take_stream_usage(self, observer: SseObserver) -> None:
        """What the stream observer read of the reply's usage and tool calls (a live stream's, or one
        rebuilt from a reference system's stored chunks)."""
        self.usage_json = observer.usage_json()
        self.input_tokens = observer.input_tokens
        self.output_tokens = observer.output_tokens
        self.cache_creation_input_tokens = observer.cache_creation_input_tokens
        self.cache_read_input_tokens = observer.cache_read_input_tokens
        self.tool_call_count = len(observer.tool_uses)


def _parse(data: bytes | None) -> Any:
    """Parsed JSON, or None. orjson refuses what upstream may still send (lone surrogates, numbers
    beyond a double, 1,000+ levels): then it reads the value the Rust core repairs it into (the same
    form the encoder stores: numbers no reader holds as their text), so usage is still found."""
    if not data:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    repaired, _ = safe_json(data)
    try:
        return orjson.loads(repaired)
    except orjson.JSONDecodeError:
        return None


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, ensure_ascii=True, default=str).encode()


class BuiltBatch(NamedTuple):
    """A batch's two COPY payloads, the content keys it stores for the first time, and the records
    left out (request id, why): only a value no column can take, a bug, never content."""

    requests: bytes
    blobs: bytes
    new_keys: list[bytes]
    lost: list[tuple[str, str]]


def build_batch(
    records: Sequence[ExchangeRecord],
    known: Container[bytes] = (),
    conversations: Sequence[str | None] | None = None,
    pending: KnownKeys | None = None,
) -> BuiltBatch:
    """The `api_requests` rows of `records` and their content parts not in `known`, built and encoded
    by the Rust core in one call (`build_request_batch`; the encoding runs with the GIL released).
    Never raises for a record: one that cannot be turned into a full row becomes a minimal one that
    says why (`minimal_row`), so the request is still found by its id. `conversations` gives, per
    record, a conversation id to store when the record's link has none (imported history); `pending`
    holds parts batches still in memory carry, left out too (the writer's early encoding)."""
    requests, blobs, keys, lost = build_request_batch(
        records,
        known,
        reply=reply_facts,
        redact=redact_client_keys,
        headers=stored_headers,
        json=headers_json,
        minimal=minimal_row,
        conversations=conversations,
        pending=pending,
    )
    return BuiltBatch(requests, blobs, keys, [(_request_id(records[i]), why) for i, why in lost])


def _request_id(rec: ExchangeRecord) -> str:
    return str(getattr(rec, "request_id", "?"))[:100]


def minimal_row(rec: ExchangeRecord, exc: BaseException) -> list[object]:
    """The row of a record whose full row could not be built, in `REQUEST_NAMES` order: what
    identifies it, and why its bodies are missing."""
    log.error("request %s: the row is stored without its bodies", _request_id(rec), exc_info=exc)
    cells = {
        "request_id": rec.request_id,
        "timestamp": rec.started_at_us,
        "project_id": rec.project_id,
        "method": rec.method,
        "path": redact_client_keys(rec.path),
        "response_status": rec.response_status,
        "outcome": rec.outcome,
        "error": f"stored without bodies: {exc.__class__.__name__}: {exc}"[:500],
        "is_subtask": False,
        "response_streaming": rec.streamed,
        "storage_repairs": ["row_not_built"],
    }
    return [cells.get(name) for name in REQUEST_NAMES]


def stored_headers(pairs: list[tuple[str, str]]) -> tuple[bytes, str | None, str | None]:
    """The request headers as stored (the allow-list, and no client key even in an allowed header's
    value: a client may put one anywhere) as JSON, the session header (cut as `session_of` cuts it)
    and the agent id. The Rust builder does the common case itself and calls this for the rest."""
    headers = {k: redact_client_keys(v) for k, v in pairs if k in STORED_REQUEST_HEADERS}
    session = session_of(headers, None)
    return _dumps(headers), session, headers.get("x-claude-code-agent-id")


def headers_json(pairs: list[tuple[str, str]]) -> bytes:
    """Response headers as stored, for pairs the Rust builder does not take as they are."""
    return _dumps(dict(pairs))


#: What `reply_facts` reads: usage as JSON, the four token counts, the tool calls, and the repairs.
ReplyFacts = tuple[bytes | None, int | None, int | None, int | None, int | None, int | None, list[str]]


def reply_facts(rec: ExchangeRecord) -> ReplyFacts | None:
    """The usage and tool calls of a JSON (not streamed) reply; None when it carries no usage (the
    record's own fields are then stored). One separate step of the row builder, called by it only for
    a non-streamed record with a body: the reply read once, in Rust, on the request path (a record
    built elsewhere, e.g. a replay, reads it here). Counts as `nexus.usage.counts.stored_count`;
    others NULL, flagged."""
    reply = rec.reply if rec.reply is not None else read_reply(rec.response_body or b"")
    if reply.usage_json is None:
        return None
    return (
        reply.usage_json,
        reply.input_tokens,
        reply.output_tokens,
        reply.cache_creation_input_tokens,
        reply.cache_read_input_tokens,
        reply.tool_call_count,
        ["usage_not_integer"] if reply.usage_not_integer else [],
    )


LINK_COLUMNS = (
    "conversation_id",
    "branch_id",
    "parent_request_id",
    "is_subtask",
    "parent_task_request_id",
    "current_message_hash",
    "parent_message_hash",
)


def link_cells(link: Link | None) -> dict[str, object]:
    """The link columns, as the linker decided them."""
    if link is None:
        return {"is_subtask": False}
    return dict(
        zip(
            LINK_COLUMNS,
            (
                link.conversation_id,
                link.branch_id,
                link.parent_request_id,
                link.is_subtask,
                link.parent_task_request_id,
                link.current_hash,
                link.parent_hash,
            ),
            strict=True,
        )
    )
