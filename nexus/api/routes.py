"""`/api/*` handlers: thin HTTP over the storage read functions.

Guarded by `DASHBOARD_API_KEY` when it is set (`X-API-Key` or `Authorization: Bearer`), compared in
constant time. Reads use a small async pool of their own, opened on first use, so a proxy that never
serves the API never connects for it.
"""

from __future__ import annotations

import hmac
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import orjson
from psycopg_pool import AsyncConnectionPool

from nexus.errors import ProxyError
from nexus.storage import requests_repo

JSON = [("content-type", "application/json")]


class ApiRoutes:
    def __init__(self, database_url: str | None, api_key: str | None) -> None:
        self.database_url = database_url
        self.api_key = api_key
        self._pool: AsyncConnectionPool | None = None

    async def _conn_pool(self) -> AsyncConnectionPool:
        if self.database_url is None:
            raise ProxyError(503, "Storage is not configured on this proxy.", "api_error")
        if self._pool is None:
            self._pool = AsyncConnectionPool(self.database_url, min_size=1, max_size=4, open=False)
            await self._pool.open(wait=True, timeout=10)
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    def _authorize(self, headers: Any) -> None:
        if not self.api_key:
            return
        given = headers.get("x-api-key") or ""
        auth = headers.get("authorization") or ""
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:]
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise ProxyError(401, "A valid DASHBOARD_API_KEY is required for /api/*.", "authentication_error")

    async def handle(self, scope: Any, proto: Any, request_id: str) -> None:
        self._authorize(scope.headers)
        path: str = scope.path
        if scope.method != "GET":
            raise ProxyError(405, f"Method {scope.method} not allowed on {path}.", "invalid_request_error")
        if path == "/api/requests":
            payload = await self._list(parse_qs(scope.query_string))
        elif path.startswith("/api/requests/"):
            payload = await self._get(path.removeprefix("/api/requests/"))
        else:
            raise ProxyError(404, f"No route for GET {path}.", "not_found_error")
        proto.response_bytes(
            200, [*JSON, ("x-request-id", request_id)], orjson.dumps(payload, option=orjson.OPT_NAIVE_UTC)
        )

    async def _get(self, wanted: str) -> dict[str, Any]:
        try:
            uuid.UUID(wanted)
        except ValueError:
            raise ProxyError(404, f"No stored request {wanted!r}.", "not_found_error") from None
        pool = await self._conn_pool()
        async with pool.connection() as conn:
            row = await requests_repo.get_request(conn, wanted)
        if row is None:
            raise ProxyError(404, f"No stored request {wanted!r}.", "not_found_error")
        return row

    async def _list(self, query: dict[str, list[str]]) -> dict[str, Any]:
        try:
            limit = max(1, min(500, int(query.get("limit", ["50"])[0])))
        except ValueError:
            raise ProxyError(400, "limit must be an integer.") from None
        before = None
        if "before" in query:
            try:
                us, rid = query["before"][0].split("_", 1)
                before = (datetime.fromtimestamp(int(us) / 1_000_000, UTC), str(uuid.UUID(rid)))
            except ValueError:
                raise ProxyError(400, "before must be a cursor returned as next_cursor.") from None
        pool = await self._conn_pool()
        async with pool.connection() as conn:
            rows = await requests_repo.list_requests(
                conn,
                limit=limit,
                before=before,
                project_id=query.get("project_id", [None])[0],
                conversation_id=query.get("conversation_id", [None])[0],
            )
        cursor = None
        if len(rows) == limit:  # URL-safe: epoch microseconds and the id of the last row
            last = rows[-1]
            cursor = f"{int(last['timestamp'].timestamp() * 1_000_000)}_{last['request_id']}"
        return {"requests": rows, "next_cursor": cursor}
