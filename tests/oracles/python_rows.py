"""The Python row builder the writer used before the Rust one (`nexus.storage.records.build_batch`),
kept as its oracle: `tests/test_storage_rows.py` checks both give the same COPY payloads byte for byte,
and `bench.storage` and `bench/micro` measure it as the "before". Frozen as it was (its own copy of the
column layout too, checked equal to the one declared in Rust); not used by Nexus itself.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Container
from typing import TYPE_CHECKING, Any

import orjson

from nexus._core import read_reply, safe_json, split_body
from nexus.auth.client_keys import redact_client_keys
from nexus.conversations.session import session_of

if TYPE_CHECKING:
    from nexus.conversations.linker import Link
    from nexus.storage.records import ExchangeRecord

log = logging.getLogger("nexus.storage")

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

#: `api_requests` columns of the first releases, in their COPY order (spooled batches of those
#: releases are replayed with them).
_BASE_COLUMNS: tuple[tuple[str, str], ...] = (
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
#: The columns written now. `raw` (bytea) holds the original bytes of the JSON column just before it
#: when the encoder had to repair that value (NUL, lone surrogates, numbers or nesting PostgreSQL cannot
#: hold); `storage_repairs` (text[], last) names what was repaired in the row. See nexus/_core.pyi.
REQUEST_COLUMNS: tuple[tuple[str, str], ...] = (
    *_BASE_COLUMNS[:10],
    ("envelope_raw", "raw"),
    *_BASE_COLUMNS[10:17],
    ("response_raw", "raw"),
    *_BASE_COLUMNS[17:],
    ("search_text", "text"),
    ("conversation_title", "text"),
    ("storage_repairs", "repairs"),
)
REQUEST_TYPES = [t for _, t in REQUEST_COLUMNS]
REQUEST_NAMES = [n for n, _ in REQUEST_COLUMNS]
_LAYOUTS = (
    _BASE_COLUMNS[:28],
    _BASE_COLUMNS[:39],
    _BASE_COLUMNS,
    tuple(c for c in REQUEST_COLUMNS if c[0] not in ("search_text", "conversation_title")),
    tuple(c for c in REQUEST_COLUMNS if c[0] != "conversation_title"),
    REQUEST_COLUMNS,
)
#: Every column layout by its length (a COPY tuple carries its field count), so a batch spooled by an
#: earlier release is replayed with the columns it was encoded with.
REQUEST_NAMES_BY_COUNT: dict[int, list[str]] = {len(cols): [n for n, _ in cols] for cols in _LAYOUTS}
REQUEST_TYPES_BY_COUNT: dict[int, list[str]] = {len(cols): [t for _, t in cols] for cols in _LAYOUTS}
BLOB_COLUMNS: tuple[tuple[str, str], ...] = (("key", "bytea"), ("kind", "int2"), ("body", "jsonb"), ("raw", "raw"))
BLOB_TYPES = [t for _, t in BLOB_COLUMNS]
BLOB_NAMES = [n for n, _ in BLOB_COLUMNS]
BLOB_NAMES_BY_COUNT: dict[int, list[str]] = {3: BLOB_NAMES[:3], 4: BLOB_NAMES}
BLOB_TYPES_BY_COUNT: dict[int, list[str]] = {3: BLOB_TYPES[:3], 4: BLOB_TYPES}


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


def to_row(
    rec: ExchangeRecord,
    blobs: dict[bytes, tuple[int, bytes]],
    known: Container[bytes] = (),
    conversation: str | None = None,
) -> list[object]:
    """The `api_requests` row for `rec` in `REQUEST_NAMES` order; its body parts not in `known` are
    added to `blobs`; `conversation` fills an empty link's conversation (an import). Never raises: a
    record that cannot be turned into a full row becomes a minimal one that says why, so the request
    is still found by its id."""
    try:
        cells = _cells(rec, blobs, known, conversation)
    except Exception as exc:
        log.exception("request %s: the row is stored without its bodies", rec.request_id)
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


def _cells(
    rec: ExchangeRecord, blobs: dict[bytes, tuple[int, bytes]], known: Container[bytes], conversation: str | None
) -> dict[str, Any]:
    # an allow-list, and no client key even in an allowed header's value (a client may put one anywhere)
    headers = {k: redact_client_keys(v) for k, v in rec.request_headers if k in STORED_REQUEST_HEADERS}
    flags: list[str] = list(rec.repairs or ())
    envelope: bytes | None = None
    envelope_raw: bytes | None = None
    system_key = tools_key = None
    message_keys: list[bytes] | None = None
    model: str | None = None
    analysis, body = rec.analysis, rec.request_body
    parts: dict[bytes, bytes] = {}
    if analysis is not None and body is not None:
        envelope, system_key, tools_key = analysis.envelope, analysis.system_key, analysis.tools_key
        message_keys, model = analysis.message_keys, analysis.model
        parts = {}
        for key, kind, start, end in analysis.part_spans:
            parts.setdefault(key, body[start:end])
            if key not in known and key not in blobs:
                blobs[key] = (kind, body[start:end])  # only parts the database may not have are copied
    elif body:
        try:
            split = split_body(body)
        except ValueError:  # not JSON: shown as text, and kept exactly as it came
            envelope = _dumps({"unparsed_body": body.decode("utf-8", "replace")})
            envelope_raw = body
            flags.append("request_not_json")
        else:
            envelope, system_key, tools_key = split.envelope, split.system_key, split.tools_key
            message_keys = split.message_keys
            for key, kind, part in split.parts:
                parts.setdefault(key, part)
                if key not in known:
                    blobs.setdefault(key, (kind, part))
            parsed_envelope = _parse(envelope)
            found = parsed_envelope.get("model") if isinstance(parsed_envelope, dict) else None
            model = found if isinstance(found, str) else None
    usage_bytes = rec.usage_json
    input_tokens, output_tokens = rec.input_tokens, rec.output_tokens
    cache_creation, cache_read = rec.cache_creation_input_tokens, rec.cache_read_input_tokens
    tool_calls = rec.tool_call_count
    response_body = rec.response_body
    if not rec.streamed and response_body:
        # read once, in Rust, on the request path (a record built elsewhere, e.g. a replay, reads it here)
        reply = rec.reply if rec.reply is not None else read_reply(response_body)
        if reply.usage_json is not None:  # counts as `nexus.usage.counts.stored_count`; others NULL, flagged
            usage_bytes, tool_calls = reply.usage_json, reply.tool_call_count
            input_tokens, output_tokens = reply.input_tokens, reply.output_tokens
            cache_creation, cache_read = reply.cache_creation_input_tokens, reply.cache_read_input_tokens
            if reply.usage_not_integer and "usage_not_integer" not in flags:
                flags.append("usage_not_integer")
    cells = {
        "request_id": rec.request_id,
        "timestamp": rec.started_at_us,
        "project_id": rec.project_id,
        "account_id": rec.account_id,
        "method": rec.method,
        "path": redact_client_keys(rec.path),
        "model": model,
        "request_type": rec.request_type,
        "request_headers": _dumps(headers),
        "envelope": envelope,
        "envelope_raw": envelope_raw,
        "system_key": system_key,
        "tools_key": tools_key,
        "message_keys": message_keys,
        "message_count": len(message_keys) if message_keys is not None else None,
        "response_status": rec.response_status,
        "response_headers": _dumps(dict(rec.response_headers)) if rec.response_headers is not None else None,
        "response_body": response_body or None,
        "response_streaming": rec.streamed,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": cache_creation,
        "cache_read_input_tokens": cache_read,
        "usage": usage_bytes,
        "duration_ms": rec.duration_ms,
        "first_byte_ms": rec.first_byte_ms,
        "tool_call_count": tool_calls,
        "outcome": rec.outcome,
        "error": redact_client_keys(rec.error) if rec.error else None,  # may quote a path or a header
        "system_hash": analysis.system_hash if analysis is not None else None,
        "session_id": session_of(headers, analysis.envelope if analysis is not None else None),
        "agent_id": headers.get("x-claude-code-agent-id"),
        "task_prompt_keys": rec.task_prompt_keys or None,
        "attempts": rec.attempts,
        "storage_repairs": flags or None,
        "is_subtask": False,
        "search_text": search_text(
            [parts[k] for k in reversed((message_keys or [])[-4:]) if k in parts], rec.request_type, response_body
        ),
    }
    cells.update(link_cells(rec.link))
    if cells.get("conversation_id") is None and conversation is not None:
        cells["conversation_id"] = conversation
    opens = cells.get("conversation_id") is not None and cells.get("parent_request_id") is None
    cells["conversation_title"] = title([parts[k] for k in (message_keys or [])[:12] if k in parts]) if opens else None
    return cells


#: The largest message or reply the search text is read from (`search.rs`, `MAX_READ_BYTES`).
SEARCH_MAX_READ = 256 * 1024
#: Migration 0012's injected blocks, in its order.
SEARCH_TAGS = (
    "system-reminder",
    "command-name",
    "command-message",
    "command-args",
    "local-command-stdout",
    "local-command-stderr",
    "local-command-caveat",
    "task-notification",
    "bash-input",
    "bash-stdout",
    "bash-stderr",
    "user-prompt-submit-hook",
)


def visible_text(content: Any) -> str | None:
    """Migration 0012's `nexus_visible_text`, written again from its SQL (the Rust one's oracle); None
    where the Rust one leaves the text to PostgreSQL (a NUL)."""
    if isinstance(content, str):
        txt = content[:50_000]
    elif isinstance(content, list):
        texts = [
            b["text"][:20_000]
            for b in content[:100]
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        ]
        if not texts:
            return ""
        txt = "\n".join(texts)[:50_000]
    else:
        return ""
    if "\x00" in txt:
        return None
    for tag in SEARCH_TAGS:
        if f"<{tag}>" in txt:
            txt = re.sub(f"<{tag}>.*?</{tag}>", " ", txt, flags=re.S)
            txt = re.sub(f"<{tag}>.*\\Z", " ", txt, count=1, flags=re.S)
    return txt.strip(" \t\r\n")


def search_text(messages: list[bytes], request_type: str | None, reply: bytes | None) -> str | None:
    """The staged search text: the newest user message of the last four (`messages`, newest first)
    unless a compaction or auxiliary request, a newline, the reply's text; cut to 100,000 characters."""
    if any(len(part) > SEARCH_MAX_READ for part in messages[:4]) or len(reply or b"") > SEARCH_MAX_READ:
        return None  # the Rust builder leaves a part this big to PostgreSQL (memory)
    try:
        user = ""
        if request_type not in ("compaction", "auxiliary"):
            for part in messages:
                message = orjson.loads(part)
                if isinstance(message, dict) and message.get("role") == "user":
                    found = visible_text(message.get("content"))
                    if found is None:
                        return None
                    user = found
                    break
        reply_text = ""
        if reply:
            parsed = orjson.loads(reply)
            found = visible_text(parsed.get("content") if isinstance(parsed, dict) else None)
            if found is None:
                return None
            reply_text = found
    except orjson.JSONDecodeError:
        return None
    return (user + "\n" + reply_text)[:100_000]


#: Characters whose class (space or not) PostgreSQL's regular expressions take from the locale or the
#: collation provider: a title holding one is left to PostgreSQL.
_LOCALE_SPACES = re.compile(
    r"[\x00-\x08\x0e-\x1f\x7f-\x9f\u00a0\u1680\u180e\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff]"
)


def title(messages: list[bytes]) -> str | None:
    """Migration 0012's `nexus_title` over the first twelve message parts, written again from its SQL:
    the first user message with text (not a continued session's summary), whitespace runs as one
    space, cut to 120 characters with an ellipsis; "" for none, None where PostgreSQL decides."""
    for part in messages[:12]:
        if len(part) > SEARCH_MAX_READ:
            return None
        try:
            message = orjson.loads(part)
        except orjson.JSONDecodeError:
            return None
        if not (isinstance(message, dict) and message.get("role") == "user"):
            continue
        text = visible_text(message.get("content"))
        if text is None or _LOCALE_SPACES.search(text):
            return None
        text = re.sub(r"[ \t\n\v\f\r]+", " ", text).strip(" ")
        if not text or text.startswith("This session is being continued from a previous conversation"):
            continue
        return text if len(text) <= 120 else text[:119] + "…"
    return ""


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
