"""Stored rows for the API contract tests: conversations with every kind of branch, three projects, two
accounts, a rate-limit warning; written as the storage writer and the linker leave them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg

from nexus.ids import new_request_id


@dataclass
class Seeded:
    """What was stored, for the assertions."""

    now: datetime
    ids: dict[str, str] = field(default_factory=dict)
    conversations: dict[str, str] = field(default_factory=dict)


def _row(
    conn: psycopg.Connection[Any],
    at: datetime,
    *,
    project: str,
    account: str | None,
    conversation: str | None,
    branch: str | None = "main",
    parent: str | None = None,
    request_type: str = "main",
    is_subtask: bool = False,
    parent_task: str | None = None,
    model: str = "claude-sonnet-4-6",
    tokens: tuple[int, int, int, int] = (100, 20, 0, 0),
    status: int = 200,
    warning: bool = False,
) -> str:
    rid = new_request_id(int(at.timestamp() * 1000))
    names = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    usage = dict(zip(names, tokens, strict=True))
    headers = {"content-type": "application/json"}
    if account == "acc_a":  # a subscription (OAuth) account: Anthropic's unified rate-limit headers
        reset = int(at.timestamp()) + 3600
        headers |= {
            "anthropic-ratelimit-unified-status": "allowed_warning" if warning else "allowed",
            "anthropic-ratelimit-unified-5h-utilization": "0.5" if warning else "0.25",
            "anthropic-ratelimit-unified-5h-reset": str(reset),
            "anthropic-ratelimit-unified-7d-utilization": "0.125",
            "anthropic-ratelimit-unified-7d-reset": "not-a-time",
            "anthropic-ratelimit-unified-7d_opus-utilization": "nan",
        }
    conn.execute(
        "INSERT INTO api_requests (request_id, timestamp, project_id, account_id, method, path, model, request_type, "
        "envelope, response_status, response_headers, response_body, input_tokens, output_tokens, "
        "cache_creation_input_tokens, cache_read_input_tokens, usage, duration_ms, outcome, request_headers, "
        "conversation_id, branch_id, parent_request_id, is_subtask, parent_task_request_id, message_count) "
        "VALUES (%s, %s, %s, %s, 'POST', '/v1/messages', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 42, "
        "'completed', %s, %s, %s, %s, %s, %s, 1)",
        (
            rid,
            at,
            project,
            account,
            model,
            request_type,
            orjson.dumps({"model": model, "max_tokens": 100, "messages": []}).decode(),
            status,
            orjson.dumps(headers).decode(),
            orjson.dumps({"type": "message", "content": [], "usage": usage}).decode(),
            *tokens,
            orjson.dumps(usage).decode(),
            '{"user-agent": "claude-cli/2.1.0"}',
            conversation,
            branch if conversation else None,
            parent,
            is_subtask,
            parent_task,
        ),
    )
    return rid


def seed(dsn: str) -> Seeded:
    now = datetime.now(UTC).replace(microsecond=0)
    s = Seeded(now)
    c1, c2 = str(uuid.uuid4()), str(uuid.uuid4())
    s.conversations = {"alpha": c1, "beta": c2}
    with psycopg.connect(dsn, autocommit=True) as conn:
        m = lambda minutes: now - timedelta(minutes=minutes)  # noqa: E731
        a = {"project": "alpha", "account": "acc_a", "conversation": c1}
        s.ids["r1"] = r1 = _row(conn, m(60), **a)
        s.ids["r2"] = r2 = _row(conn, m(50), parent=r1, **a)
        s.ids["r3"] = _row(conn, m(45), parent=r1, branch="branch_20260101", **a)
        s.ids["r4"] = _row(
            conn, m(40), parent=r2, branch="subtask_1", is_subtask=True, parent_task=r2, request_type="subagent", **a
        )
        s.ids["r5"] = r5 = _row(conn, m(30), parent=r2, request_type="compaction", model="claude-opus-4-6", **a)
        s.ids["r6"] = _row(conn, m(20), parent=r5, branch="compact_203000", tokens=(5, 7, 11, 13), warning=True, **a)
        b = {"project": "beta", "account": "acc_b", "conversation": c2}
        s.ids["b1"] = b1 = _row(conn, m(10), **b)
        s.ids["b2"] = _row(conn, m(5), parent=b1, status=529, tokens=(0, 0, 0, 0), **b)
        # a sub-agent whose launcher was not found: a conversation of sub-agent requests only
        orphan = s.conversations["orphan"] = str(uuid.uuid4())
        s.ids["o1"] = _row(
            conn, m(15), project="beta", account="acc_b", conversation=orphan, branch="subtask_1",
            is_subtask=True, request_type="subagent",
        )  # fmt: skip
        s.ids["g1"] = _row(
            conn, now - timedelta(days=3), project="gamma", account=None, conversation=None, request_type="auxiliary"
        )
        conn.execute(
            "INSERT INTO conversations SELECT conversation_id, min(project_id), min(timestamp), max(timestamp), "
            "count(*), sum(input_tokens), sum(output_tokens), sum(cache_creation_input_tokens), "
            "sum(cache_read_input_tokens), (array_agg(request_id ORDER BY timestamp DESC))[1] "
            "FROM api_requests WHERE conversation_id IS NOT NULL GROUP BY conversation_id"
        )
    return s
