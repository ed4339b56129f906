"""SQL of the analysis queue (`conversation_analyses`, migration 0011): the API's and the workers'.

One row per (conversation, branch) is the job and its result. A claim is one `UPDATE` of the oldest
pending row picked `FOR UPDATE SKIP LOCKED`, so workers on any number of machines never take the same
row; it stores the sha256 of a fresh token, and every later write of that worker names the token, so a
worker whose job was taken from it (the watchdog, a regenerate) writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

#: Longest error history kept with a job, characters (the newest lines are kept).
MAX_ERROR_CHARS = 4000
#: Grace past the job timeout before the watchdog takes a job back: its worker gives up first.
WATCHDOG_GRACE_S = 60.0

BRANCH_EXISTS_SQL = """
SELECT project_id FROM api_requests WHERE conversation_id = %s AND branch_id = %s LIMIT 1
"""
RESET = """status = 'pending', retry_count = 0, attempts = 0, not_before = now(), claimed_by = NULL,
    claim_token_hash = NULL, claimed_at = NULL, analysis_content = NULL, analysis_data = NULL, raw_response = NULL,
    error_message = NULL, completed_at = NULL, generated_at = NULL, processing_duration_ms = NULL,
    prompt_tokens = NULL, completion_tokens = NULL, request_id = NULL, updated_at = now()"""
REGENERATE_SQL = (
    "INSERT INTO conversation_analyses (conversation_id, branch_id, project_id, custom_prompt) "
    "VALUES (%s, %s, %s, %s) ON CONFLICT (conversation_id, branch_id) DO UPDATE SET "
    + RESET
    + ", custom_prompt = EXCLUDED.custom_prompt, project_id = EXCLUDED.project_id"
)
CLAIM_SQL = """
UPDATE conversation_analyses SET status = 'processing', attempts = attempts + 1, claimed_by = %(worker)s,
    claim_token_hash = %(token)s, claimed_at = now(), updated_at = now()
WHERE id = (
    SELECT id FROM conversation_analyses WHERE status = 'pending' AND not_before <= now()
    ORDER BY not_before, id LIMIT 1 FOR UPDATE SKIP LOCKED
)
RETURNING id, conversation_id::text, branch_id, project_id, custom_prompt, retry_count, attempts
"""
COMPLETE_SQL = """
UPDATE conversation_analyses SET status = 'completed', analysis_data = %(data)s, analysis_content = %(content)s,
    raw_response = NULL, provider = %(provider)s, model_used = %(model)s, prompt_tokens = %(prompt_tokens)s,
    completion_tokens = %(completion_tokens)s, processing_duration_ms = %(duration_ms)s, request_id = %(request_id)s,
    generated_at = now(), completed_at = now(), claim_token_hash = NULL, updated_at = now()
WHERE id = %(id)s AND status = 'processing' AND claim_token_hash = %(token)s
"""
FAIL_SQL = """
UPDATE conversation_analyses SET
    status = CASE WHEN retry_count + 1 > %(max_retries)s THEN 'failed' ELSE 'pending' END::conversation_analysis_status,
    retry_count = retry_count + 1,
    not_before = now() + make_interval(secs => %(delay_s)s),
    error_message = right(coalesce(error_message || E'\\n', '') || %(error)s, %(max_chars)s),
    raw_response = coalesce(%(raw)s, raw_response), provider = %(provider)s, model_used = %(model)s,
    request_id = coalesce(%(request_id)s, request_id),
    completed_at = CASE WHEN retry_count + 1 > %(max_retries)s THEN now() END,
    claim_token_hash = NULL, updated_at = now()
WHERE id = %(id)s AND status = 'processing' AND claim_token_hash = %(token)s
RETURNING status::text
"""
RELEASE_SQL = """
UPDATE conversation_analyses SET status = 'pending', attempts = greatest(attempts - 1, 0), claim_token_hash = NULL,
    claimed_by = NULL, claimed_at = NULL, updated_at = now()
WHERE id = %s AND status = 'processing' AND claim_token_hash = %s
"""
WATCHDOG_SQL = """
UPDATE conversation_analyses SET
    status = CASE WHEN retry_count + 1 > %(max_retries)s THEN 'failed' ELSE 'pending' END::conversation_analysis_status,
    retry_count = retry_count + 1, not_before = now(), claim_token_hash = NULL,
    error_message = right(coalesce(error_message || E'\\n', '') || 'attempt ' || attempts
        || ': returned to the queue by the watchdog (processing since ' || claimed_at::text || ', worker '
        || coalesce(claimed_by, '?') || ')', %(max_chars)s),
    completed_at = CASE WHEN retry_count + 1 > %(max_retries)s THEN now() END,
    updated_at = now()
WHERE id IN (
    SELECT id FROM conversation_analyses WHERE status = 'processing'
      AND claimed_at < now() - make_interval(secs => %(older_than_s)s)
    FOR UPDATE SKIP LOCKED
)
RETURNING id, status::text
"""
GET_SQL = """
SELECT id, conversation_id::text, branch_id, project_id, status::text, provider, model_used, analysis_content,
    analysis_data, raw_response, error_message, retry_count, attempts, request_id::text, custom_prompt,
    created_at, updated_at, completed_at, not_before, prompt_tokens, completion_tokens, processing_duration_ms
FROM conversation_analyses
"""


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    conversation_id: str
    branch_id: str
    project_id: str | None
    custom_prompt: str | None
    retry_count: int
    attempts: int


async def branch_project(conn: AsyncConnection[Any], conversation_id: str, branch_id: str) -> str | None:
    """The project of a stored conversation branch, or None when no request of it is stored."""
    cur = await conn.execute(BRANCH_EXISTS_SQL, (conversation_id, branch_id))
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def enqueue(
    conn: AsyncConnection[Any], conversation_id: str, branch_id: str, project_id: str, custom_prompt: str | None
) -> tuple[str, dict[str, Any]]:
    """Queue an analysis unless one exists; a failed one is queued again. ("created" | "requeued" |
    "exists", row); call it inside a transaction."""
    cur = await conn.execute(
        "INSERT INTO conversation_analyses (conversation_id, branch_id, project_id, custom_prompt) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (conversation_id, branch_id) DO NOTHING RETURNING id",
        (conversation_id, branch_id, project_id, custom_prompt),
    )
    outcome = "created" if await cur.fetchone() is not None else "exists"
    if outcome == "exists":
        cur = await conn.execute(
            f"UPDATE conversation_analyses SET {RESET}, custom_prompt = %s "  # noqa: S608 (constant SQL)
            "WHERE conversation_id = %s AND branch_id = %s AND status = 'failed'",
            (custom_prompt, conversation_id, branch_id),
        )
        outcome = "requeued" if cur.rowcount == 1 else outcome
    row = await get(conn, conversation_id, branch_id)
    assert row is not None
    return outcome, row


async def regenerate(
    conn: AsyncConnection[Any], conversation_id: str, branch_id: str, project_id: str, custom_prompt: str | None
) -> dict[str, Any]:
    """Queue the analysis again from scratch (a worker holding it can no longer write its result); call
    it inside a transaction."""
    await conn.execute(REGENERATE_SQL, (conversation_id, branch_id, project_id, custom_prompt))
    row = await get(conn, conversation_id, branch_id)
    assert row is not None
    return row


async def get(conn: AsyncConnection[Any], conversation_id: str, branch_id: str) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(GET_SQL + "WHERE conversation_id = %s AND branch_id = %s", (conversation_id, branch_id))  # type: ignore[operator]
        return await cur.fetchone()


async def for_conversation(conn: AsyncConnection[Any], conversation_id: str) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(GET_SQL + "WHERE conversation_id = %s ORDER BY branch_id", (conversation_id,))  # type: ignore[operator]
        return await cur.fetchall()


async def claim(conn: AsyncConnection[Any], worker: str, token_hash: bytes) -> Job | None:
    cur = await conn.execute(CLAIM_SQL, {"worker": worker, "token": token_hash})
    row = await cur.fetchone()
    return None if row is None else Job(*row)


async def complete(
    conn: AsyncConnection[Any],
    job: Job,
    token_hash: bytes,
    *,
    data: dict[str, Any],
    content: str,
    provider: str,
    model: str,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    duration_ms: int,
    request_id: str | None,
) -> bool:
    cur = await conn.execute(
        COMPLETE_SQL,
        {
            "id": job.id,
            "token": token_hash,
            "data": Jsonb(data),
            "content": content,
            "provider": provider,
            "model": model,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "duration_ms": duration_ms,
            "request_id": request_id,
        },
    )
    return cur.rowcount == 1


async def fail_attempt(
    conn: AsyncConnection[Any],
    job: Job,
    token_hash: bytes,
    *,
    error: str,
    raw: str | None,
    max_retries: int,
    delay_s: float,
    provider: str,
    model: str,
    request_id: str | None,
) -> str | None:
    """Count a failed attempt: back to `pending` after `delay_s`, or `failed` once retries are used up.
    Returns the new status, or None when the job is no longer this claim's."""
    cur = await conn.execute(
        FAIL_SQL,
        {
            "id": job.id,
            "token": token_hash,
            "max_retries": max_retries,
            "delay_s": delay_s,
            "error": f"attempt {job.attempts}: {error}"[:MAX_ERROR_CHARS],
            "max_chars": MAX_ERROR_CHARS,
            "raw": raw,
            "provider": provider,
            "model": model,
            "request_id": request_id,
        },
    )
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def release(conn: AsyncConnection[Any], job: Job, token_hash: bytes) -> None:
    """Give a job back untouched (the worker stops): it is not counted as an attempt."""
    await conn.execute(RELEASE_SQL, (job.id, token_hash))


async def return_stuck(conn: AsyncConnection[Any], job_timeout_s: float, max_retries: int) -> list[tuple[int, str]]:
    """The watchdog: jobs `processing` for longer than the timeout plus a grace go back to the queue
    (counted as a failed attempt; `failed` when that was the last). Returns (id, new status) of each."""
    cur = await conn.execute(
        WATCHDOG_SQL,
        {"max_retries": max_retries, "older_than_s": job_timeout_s + WATCHDOG_GRACE_S, "max_chars": MAX_ERROR_CHARS},
    )
    return [(int(r[0]), str(r[1])) for r in await cur.fetchall()]


def api_view(row: dict[str, Any]) -> dict[str, Any]:
    """The API's shape (the reference system's field names, plus what this worker adds)."""
    prompt, completion = row.get("prompt_tokens"), row.get("completion_tokens")
    total = (prompt or 0) + (completion or 0) if prompt is not None or completion is not None else None
    return {
        "id": row["id"],
        "conversationId": row["conversation_id"],
        "branchId": row["branch_id"],
        "projectId": row["project_id"],
        "status": row["status"],
        "content": row["analysis_content"],
        "data": row["analysis_data"],
        "error": row["error_message"],
        "rawResponse": row["raw_response"],
        "provider": row["provider"],
        "model": row["model_used"],
        "retryCount": row["retry_count"],
        "attempts": row["attempts"],
        "requestId": row["request_id"],
        "customPrompt": row["custom_prompt"],
        "createdAt": _iso(row["created_at"]),
        "updatedAt": _iso(row["updated_at"]),
        "completedAt": _iso(row["completed_at"]),
        "processingDurationMs": row["processing_duration_ms"],
        "tokenUsage": {"prompt": prompt, "completion": completion, "total": total},
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
