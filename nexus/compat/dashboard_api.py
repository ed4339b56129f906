"""The reference dashboard service's JSON endpoints, answered on Nexus's dashboard port.

The reference's dashboard (port 3001) served `GET /api/requests`, `/api/requests/:id`,
`/api/requests/:id/subtasks`, `/api/storage-stats` and `/api/conversations` itself; scripts pointed at
that port got a 404 from Nexus's dashboard. Nexus's proxy serves those paths with the same parameters
and field names (docs/api.md), so the dashboard asks it, as it does for analyses
(nexus/dashboard/analysis.py): one implementation, one contract (`/openapi.json`), one set of checks.

The caller has passed the dashboard's own access check (key, session, or loopback) before this runs;
the dashboard then calls the proxy with `DASHBOARD_API_KEY`. Only these GET paths are forwarded, with
the query string as it came (the proxy validates it and refuses what it does not know); the proxy's
status and body come back unchanged. A proxy that does not answer is a 502 in Anthropic's error shape.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, unquote_plus, urlencode

import orjson

#: The dashboard service's JSON routes of the reference, as Robyn routes.
ROUTES = (
    "/api/requests",
    "/api/requests/:request_id",
    "/api/requests/:request_id/subtasks",
    "/api/storage-stats",
    "/api/conversations",
)
#: How long the dashboard waits for the proxy, s (the proxy bounds its own queries at 15 s).
TIMEOUT_S = 20.0
#: The largest answer passed on: a page of 500 requests is far below it.
MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Forwarded:
    status: int
    body: bytes


def _error(status: int, kind: str, message: str) -> Forwarded:
    body = {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": str(uuid.uuid4()),
    }
    return Forwarded(status, orjson.dumps(body))


def _get(url: str, api_key: str | None) -> Forwarded:
    request = urllib.request.Request(url, method="GET")  # noqa: S310 (a validated http(s) setting)
    request.add_header("accept", "application/json")
    if api_key:
        request.add_header("x-api-key", api_key)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310
            return Forwarded(int(response.status), response.read(MAX_BYTES))
    except urllib.error.HTTPError as exc:
        return Forwarded(exc.code, exc.read(MAX_BYTES))
    except OSError as exc:
        return _error(502, "api_error", f"The proxy at PROXY_API_URL did not answer ({exc.__class__.__name__}).")


async def forward(proxy_url: str, api_key: str | None, path: str, query: str) -> Forwarded:
    """GET `path?query` from the proxy; `path` is one of `ROUTES` as the request named it."""
    url = proxy_url.rstrip("/") + path + (f"?{query}" if query else "")
    return await asyncio.to_thread(_get, url, api_key)


def _path(request: Any) -> str:
    """The route's path rebuilt from its parameters, each one percent-encoded: no `..` or `/` in an id
    can make the dashboard ask the proxy for another path."""
    params = {k: unquote(str(v)) for k, v in (request.path_params or {}).items()}
    path = str(request.url.path)
    request_id = params.get("request_id")
    if request_id is None:
        return path if path in ROUTES else "/api/requests"
    suffix = "/subtasks" if path.rstrip("/").endswith("/subtasks") else ""
    return f"/api/requests/{quote(request_id, safe='')}{suffix}"


def _query_string(request: Any) -> str:
    """The query as the client sent it (every value, repeated ones too: the proxy refuses those)."""
    pairs = [(unquote_plus(k), unquote_plus(v)) for k, values in request.query_params.to_dict().items() for v in values]
    return urlencode(pairs)


def register(
    app: Any,
    guarded: Callable[..., Any],
    respond: Callable[..., Any],
    proxy_url: str,
    api_key: str | None,
) -> None:
    """Add the routes to a Robyn app behind the dashboard's access check (`guarded`; refused as JSON,
    401, never the login form's redirect: these are called by scripts)."""

    async def handler(request: Any, _access: Any) -> Any:
        answer = await forward(proxy_url, api_key, _path(request), _query_string(request))
        return respond(answer.status, answer.body, "application/json")

    for route in ROUTES:
        app.add_route("GET", route, guarded(handler, stream=True))
