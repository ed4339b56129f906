"""`GET /api/requests` and `GET /api/requests/{id}`: stored requests, newest first, bodies rebuilt."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg_pool import AsyncConnectionPool

from nexus.api.params import Query, cursor_param, first, found, limit_param, next_cursor, path_uuid, uuid_param
from nexus.storage import requests_repo

if TYPE_CHECKING:
    from nexus.api.routes import ApiRoutes


def register(api: ApiRoutes) -> None:
    api.route("/api/requests", list_requests)
    api.route("/api/requests/", get_request)


async def get_request(pool: AsyncConnectionPool, wanted: str, query: Query) -> dict[str, Any]:
    request_id = path_uuid(wanted, "request")
    async with pool.connection() as conn:
        return found(await requests_repo.get_request(conn, request_id), "stored request", wanted)


async def list_requests(pool: AsyncConnectionPool, _: str, query: Query) -> dict[str, Any]:
    limit = limit_param(query)
    before = cursor_param(query)
    conversation_id = uuid_param(query, "conversation_id", "conversationId")
    project_id = first(query, "project_id", "projectId")
    async with pool.connection() as conn:
        rows = await requests_repo.list_requests(
            conn, limit=limit, before=before, project_id=project_id, conversation_id=conversation_id
        )
    return {"requests": rows, "next_cursor": next_cursor(rows, limit)}
