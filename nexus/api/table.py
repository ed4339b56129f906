"""The `/api/*` route table: which handler answers which path.

Apart from `nexus.api.routes` (which serves it) so that the handler modules can register into it
without importing the module that imports them: the handlers depend on this table, `routes` depends on
the handlers, and no import goes back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from psycopg_pool import AsyncConnectionPool

#: (pool, path parameter, query) -> payload
Handler = Callable[[AsyncConnectionPool, str, dict[str, list[str]]], Awaitable[Any]]
#: (pool, path parameter, parsed JSON body) -> (status, payload): the few routes that change something
PostHandler = Callable[[AsyncConnectionPool, str, Any], Awaitable[tuple[int, Any]]]


class RouteTable:
    """GET routes (exact paths, and prefixes ending with `/`, longest first) and POST routes."""

    def __init__(self) -> None:
        self._exact: dict[str, Handler] = {}
        self._prefixes: list[tuple[str, Handler]] = []
        self._posts: list[tuple[str, PostHandler]] = []

    def route(self, path: str, handler: Handler) -> None:
        """Serve `path` exactly, or every path below it when `path` ends with `/`."""
        if path.endswith("/"):
            self._prefixes.append((path, handler))
            self._prefixes.sort(key=lambda item: -len(item[0]))
        else:
            self._exact[path] = handler

    def post_route(self, path: str, handler: PostHandler) -> None:
        """Serve POST on `path` exactly, or on every path below it when `path` ends with `/`."""
        self._posts.append((path, handler))
        self._posts.sort(key=lambda item: -len(item[0]))

    def accepts_post(self, path: str) -> bool:
        return self._find_post(path) is not None

    def _find_post(self, path: str) -> tuple[PostHandler, str] | None:
        for route, handler in self._posts:
            if path == route or (route.endswith("/") and path.startswith(route) and len(path) > len(route)):
                return handler, path[len(route) :] if route.endswith("/") else ""
        return None

    def _find(self, path: str) -> tuple[Handler, str] | None:
        handler = self._exact.get(path)
        if handler is not None:
            return handler, ""
        for prefix, handler in self._prefixes:
            if path.startswith(prefix) and len(path) > len(prefix):
                return handler, path[len(prefix) :]
        return None
