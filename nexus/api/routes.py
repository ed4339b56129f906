"""`/api/*`: a small route table over thin handlers, each domain adding its own.

Guarded by `DASHBOARD_API_KEY` when it is set (`X-API-Key` or `Authorization: Bearer`), compared in
constant time. Reads use a small async pool of their own, opened on first use, so a proxy that never
serves the API never connects for it. A handler gets the pool, the path parameter (the part after its
prefix, for prefix routes) and the parsed query, and returns a JSON-serialisable payload.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import orjson
from psycopg_pool import AsyncConnectionPool

from nexus.errors import ProxyError

JSON = [("content-type", "application/json")]

#: (pool, path parameter, query) -> payload
Handler = Callable[[AsyncConnectionPool, str, dict[str, list[str]]], Awaitable[Any]]


class ApiRoutes:
    def __init__(self, database_url: str | None, api_key: str | None) -> None:
        self.database_url = database_url
        self.api_key = api_key
        self._pool: AsyncConnectionPool | None = None
        self._exact: dict[str, Handler] = {}
        self._prefixes: list[tuple[str, Handler]] = []
        from nexus.api import conversations, requests, usage

        requests.register(self)
        conversations.register(self)
        usage.register(self)

    def route(self, path: str, handler: Handler) -> None:
        """Serve `path` exactly, or every path below it when `path` ends with `/`."""
        if path.endswith("/"):
            self._prefixes.append((path, handler))
            self._prefixes.sort(key=lambda item: -len(item[0]))
        else:
            self._exact[path] = handler

    async def pool(self) -> AsyncConnectionPool:
        if self.database_url is None:
            raise ProxyError(503, "Storage is not configured on this proxy.", "api_error")
        if self._pool is None:
            self._pool = AsyncConnectionPool(self.database_url, min_size=1, max_size=4, open=False)
            await self._pool.open(wait=True, timeout=10)
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    def authorize(self, headers: Any) -> None:
        if not self.api_key:
            return
        given = headers.get("x-api-key") or ""
        auth = headers.get("authorization") or ""
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:]
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise ProxyError(401, "A valid DASHBOARD_API_KEY is required for /api/*.", "authentication_error")

    def _find(self, path: str) -> tuple[Handler, str] | None:
        handler = self._exact.get(path)
        if handler is not None:
            return handler, ""
        for prefix, handler in self._prefixes:
            if path.startswith(prefix) and len(path) > len(prefix):
                return handler, path[len(prefix) :]
        return None

    async def handle(self, scope: Any, proto: Any, request_id: str) -> None:
        self.authorize(scope.headers)
        path: str = scope.path
        found = self._find(path)
        if found is None:
            raise ProxyError(404, f"No route for {scope.method} {path}.", "not_found_error")
        if scope.method != "GET":
            raise ProxyError(405, f"Method {scope.method} not allowed on {path}.", "invalid_request_error")
        handler, param = found
        payload = await handler(await self.pool(), param, parse_qs(scope.query_string))
        proto.response_bytes(
            200, [*JSON, ("x-request-id", request_id)], orjson.dumps(payload, option=orjson.OPT_NAIVE_UTC)
        )
