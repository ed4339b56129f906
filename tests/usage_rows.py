"""Inserting `api_requests` rows directly, for usage and dashboard tests with exact known numbers."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import orjson
import psycopg

from nexus.ids import new_request_id


def insert_row(
    conn: psycopg.Connection[Any],
    at: datetime,
    *,
    project: str = "p1",
    account: str | None = "acc1",
    model: str = "claude-sonnet-4-6",
    input_tokens: int = 10,
    output_tokens: int = 5,
    cache_creation: int = 0,
    cache_read: int = 0,
    cache_5m: int | None = None,
    cache_1h: int | None = None,
    status: int = 200,
    request_body: dict[str, Any] | None = None,
    usage_json: str | None = None,
    conversation: str | None = None,
) -> str:
    """One stored request at `at` whose id encodes that time (as the proxy's UUIDv7 ids do).

    `usage_json`, when given, is stored as the `usage` column verbatim (any JSON text, or "null"):
    the hostile shapes an upstream reply can leave there, which orjson could not even write."""
    rid = new_request_id(int(at.timestamp() * 1000))
    usage: dict[str, Any] = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": cache_creation,
        "cache_read_input_tokens": cache_read,
    }
    if cache_5m is not None or cache_1h is not None:
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": cache_5m or 0,
            "ephemeral_1h_input_tokens": cache_1h or 0,
        }
    envelope = request_body or {"model": model, "max_tokens": 100, "messages": []}
    conn.execute(
        "INSERT INTO api_requests (request_id, timestamp, project_id, account_id, method, path, model, "
        "envelope, response_status, input_tokens, output_tokens, cache_creation_input_tokens, "
        "cache_read_input_tokens, usage, duration_ms, outcome, request_headers, conversation_id) "
        "VALUES (%s, %s, %s, %s, 'POST', '/v1/messages', %s, %s, %s, %s, %s, %s, %s, %s, 42, 'completed', "
        "%s, %s)",
        (
            rid,
            at,
            project,
            account,
            model,
            orjson.dumps(envelope).decode(),
            status,
            input_tokens,
            output_tokens,
            cache_creation,
            cache_read,
            orjson.dumps(usage).decode() if usage_json is None else usage_json,
            '{"user-agent": "claude-cli/2.1.0"}',
            conversation or str(uuid.uuid4()),
        ),
    )
    return rid
