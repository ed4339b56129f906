"""`/api/analyses`: queue, read and regenerate the AI analysis of a conversation branch.

- `POST /api/analyses` `{"conversationId", "branchId", "customPrompt"?}`: 201 with the queued job, or
  200 when one is already in progress or completed (a failed one is queued again).
- `GET /api/analyses/{conversationId}/{branchId}`: status (`pending`, `processing`, `completed`,
  `failed`) and result; 404 when none was requested.
- `POST /api/analyses/{conversationId}/{branchId}/regenerate` (`{"customPrompt"?}`): queue it again.

Same access rule as the rest of `/api/*` (the proxy checks it before routing), and a POST from a web
page of another origin is refused by the proxy before it gets here. Every value is checked before it
reaches SQL; a branch that has no stored request is a 404, so nobody queues paid work for nothing.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from psycopg_pool import AsyncConnectionPool

from nexus.analysis import queue
from nexus.api.params import Query
from nexus.errors import ProxyError

if TYPE_CHECKING:
    from nexus.api.table import RouteTable

MAX_BRANCH = 255
MAX_CUSTOM_PROMPT = 10_000


def register(api: RouteTable) -> None:
    api.post_route("/api/analyses", create)
    api.post_route("/api/analyses/", regenerate)
    api.route("/api/analyses/", read)


def conversation_param(value: Any) -> str:
    if not isinstance(value, str):
        raise ProxyError(400, "conversationId must be a UUID string.")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ProxyError(400, f"conversationId must be a UUID, got {value[:60]!r}.") from None


def branch_param(value: Any) -> str:
    if value is None:
        return "main"
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_BRANCH
        or "/" in value
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    ):
        raise ProxyError(400, "branchId must be a branch id (1-255 characters, no '/' or control characters).")
    return value


def custom_prompt_param(body: Any) -> str | None:
    value = body.get("customPrompt") if isinstance(body, dict) else None
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_CUSTOM_PROMPT or "\x00" in value:
        raise ProxyError(400, f"customPrompt must be a string of at most {MAX_CUSTOM_PROMPT} characters.")
    return value


def _path(param: str, suffix: str = "") -> tuple[str, str]:
    """`{conversationId}/{branchId}[suffix]` from the path after `/api/analyses/`."""
    if suffix:
        if not param.endswith(suffix):
            raise ProxyError(404, "No such analysis route.", "not_found_error")
        param = param[: -len(suffix)]
    parts = param.split("/")
    if len(parts) != 2:
        raise ProxyError(404, "Use /api/analyses/{conversationId}/{branchId}.", "not_found_error")
    return conversation_param(parts[0]), branch_param(parts[1])


async def _project(conn: Any, conversation_id: str, branch_id: str) -> str:
    project = await queue.branch_project(conn, conversation_id, branch_id)
    if project is None:
        raise ProxyError(
            404, f"No stored request of conversation {conversation_id} on branch {branch_id[:60]!r}.", "not_found_error"
        )
    return project


async def create(pool: AsyncConnectionPool, param: str, body: Any) -> tuple[int, Any]:
    if not isinstance(body, dict):
        raise ProxyError(400, "The request body must be a JSON object with conversationId and branchId.")
    conversation_id = conversation_param(body.get("conversationId"))
    branch_id = branch_param(body.get("branchId"))
    custom_prompt = custom_prompt_param(body)
    async with pool.connection() as conn, conn.transaction():
        project = await _project(conn, conversation_id, branch_id)
        outcome, row = await queue.enqueue(conn, conversation_id, branch_id, project, custom_prompt)
    status = row["status"]
    if outcome == "created":
        message, code = "Analysis request created", 201
    elif outcome == "requeued":
        message, code = "The failed analysis was queued again", 201
    elif status == "completed":
        message, code = "Analysis already completed", 200
    else:
        message, code = "Analysis already in progress", 200
    return code, {"message": message, "analysisId": row["id"], "status": status, "analysis": queue.api_view(row)}


async def regenerate(pool: AsyncConnectionPool, param: str, body: Any) -> tuple[int, Any]:
    conversation_id, branch_id = _path(param, "/regenerate")
    custom_prompt = custom_prompt_param(body)
    async with pool.connection() as conn, conn.transaction():
        project = await _project(conn, conversation_id, branch_id)
        row = await queue.regenerate(conn, conversation_id, branch_id, project, custom_prompt)
    return 200, {
        "message": "Analysis regeneration requested",
        "analysisId": row["id"],
        "status": row["status"],
        "analysis": queue.api_view(row),
    }


async def read(pool: AsyncConnectionPool, param: str, query: Query) -> dict[str, Any]:
    conversation_id, branch_id = _path(param)
    async with pool.connection() as conn:
        row = await queue.get(conn, conversation_id, branch_id)
    if row is None:
        raise ProxyError(404, "No analysis was requested for this conversation branch.", "not_found_error")
    return queue.api_view(row)
