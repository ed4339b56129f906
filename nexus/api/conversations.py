"""`GET /api/conversations` (latest activity first) and `GET /api/conversations/{id}` (the tree)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg_pool import AsyncConnectionPool

from nexus.api.params import Query, cursor_param, first, found, limit_param, next_cursor, path_uuid
from nexus.conversations import repository

if TYPE_CHECKING:
    from nexus.api.routes import ApiRoutes


def register(api: ApiRoutes) -> None:
    api.route("/api/conversations", list_conversations)
    api.route("/api/conversations/", get_conversation)


async def list_conversations(pool: AsyncConnectionPool, _: str, query: Query) -> dict[str, Any]:
    limit = limit_param(query)
    before = cursor_param(query)
    project = first(query, "project_id", "projectId")
    async with pool.connection() as conn:
        rows = await repository.list_conversations(conn, limit=limit, before=before, project_id=project)
    return {"conversations": rows, "next_cursor": next_cursor(rows, limit, at="last_at", key="conversation_id")}


async def get_conversation(pool: AsyncConnectionPool, wanted: str, query: Query) -> dict[str, Any]:
    conversation_id = path_uuid(wanted, "conversation")
    async with pool.connection() as conn:
        return found(await repository.get_conversation(conn, conversation_id), "conversation", wanted)
