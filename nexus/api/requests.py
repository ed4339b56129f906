"""`GET /api/requests` and `GET /api/requests/{id}`: stored requests, newest first, bodies rebuilt."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from psycopg_pool import AsyncConnectionPool

from nexus.errors import ProxyError
from nexus.storage import requests_repo

if TYPE_CHECKING:
    from nexus.api.routes import ApiRoutes


def register(api: ApiRoutes) -> None:
    api.route("/api/requests", list_requests)
    api.route("/api/requests/", get_request)


def found(row: dict[str, Any] | None, what: str, wanted: str) -> dict[str, Any]:
    if row is None:
        raise ProxyError(404, f"No {what} {wanted!r}.", "not_found_error")
    return row


def path_uuid(wanted: str, what: str) -> str:
    """The id in the path, or a 404 in the API's shape (an id that is not a UUID names nothing)."""
    try:
        return str(uuid.UUID(wanted))
    except ValueError:
        raise ProxyError(404, f"No {what} {wanted!r}.", "not_found_error") from None


async def get_request(pool: AsyncConnectionPool, wanted: str, query: dict[str, list[str]]) -> dict[str, Any]:
    request_id = path_uuid(wanted, "stored request")
    async with pool.connection() as conn:
        return found(await requests_repo.get_request(conn, request_id), "stored request", wanted)


def query_limit(query: dict[str, list[str]], default: int = 50, most: int = 500) -> int:
    try:
        return max(1, min(most, int(query.get("limit", [str(default)])[0])))
    except ValueError:
        raise ProxyError(400, "limit must be an integer.") from None


def query_cursor(query: dict[str, list[str]]) -> tuple[datetime, str] | None:
    """`before=<epoch µs>_<uuid>`: the keyset cursor a listing returned as `next_cursor`."""
    if "before" not in query:
        return None
    try:
        us, rid = query["before"][0].split("_", 1)
        return datetime.fromtimestamp(int(us) / 1_000_000, UTC), str(uuid.UUID(rid))
    except ValueError:
        raise ProxyError(400, "before must be a cursor returned as next_cursor.") from None


def next_cursor(rows: list[dict[str, Any]], limit: int, at: str = "timestamp", key: str = "request_id") -> str | None:
    if len(rows) < limit:
        return None
    last = rows[-1]  # URL-safe: epoch microseconds and the id of the last row
    return f"{int(last[at].timestamp() * 1_000_000)}_{last[key]}"


async def list_requests(pool: AsyncConnectionPool, _: str, query: dict[str, list[str]]) -> dict[str, Any]:
    limit = query_limit(query)
    async with pool.connection() as conn:
        rows = await requests_repo.list_requests(
            conn,
            limit=limit,
            before=query_cursor(query),
            project_id=query.get("project_id", [None])[0],
            conversation_id=query.get("conversation_id", [None])[0],
        )
    return {"requests": rows, "next_cursor": next_cursor(rows, limit)}
