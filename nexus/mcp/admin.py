"""`/api/mcp/*`: the reference system's REST view of the prompts, for the dashboard and scripts.

Behind the same data-access rule as the rest of `/api/*` (`DASHBOARD_API_KEY`, or this machine only),
checked by the proxy before this is called. Errors are in Anthropic's shape like every `/api/*` error.

- `GET /api/mcp/prompts?search=&page=&limit=`: `{prompts, page, limit, total}`; `search` matches the
  name, title or description (case-insensitive); `limit` at most 100 (default 20).
- `GET /api/mcp/prompts/{name}`: `{prompt}` with its template, or 404.
- `POST /api/mcp/sync`: sync from GitHub now, in this worker (501 when no repository is configured;
  502 naming the failed step when GitHub fails).
- `GET /api/mcp/sync/status`: the reference's status fields (`repository`, `branch`, `sync_status`,
  `last_sync_at`, `last_commit_sha`, `last_error`), plus `files` and `skipped`, as this worker saw
  its last sync (each proxy worker syncs on its own).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import orjson

from nexus.errors import ProxyError
from nexus.mcp.github import GitHubError, GitHubSync
from nexus.mcp.prompts import Prompt, PromptRegistry

PREFIX = "/api/mcp/"
MAX_LIMIT = 100


async def handle_api(
    registry: PromptRegistry, sync: GitHubSync | None, scope: Any, proto: Any, request_id: str
) -> None:
    path: str = scope.path[len(PREFIX) :]
    method: str = scope.method
    query = parse_qs(scope.query_string or "")
    if path == "prompts" and method == "GET":
        payload: Any = _list(registry, query)
    elif path.startswith("prompts/") and method == "GET":
        prompt = registry.prompts().get(path[len("prompts/") :])
        if prompt is None:
            raise ProxyError(404, "Prompt not found.", "not_found_error")
        payload = {"prompt": _detail(prompt)}
    elif path == "sync" and method == "POST":
        if sync is None:
            raise ProxyError(501, "GitHub sync not configured (MCP_GITHUB_OWNER, MCP_GITHUB_REPO).", "api_error")
        try:
            changed = await asyncio.to_thread(sync.sync_once)
        except GitHubError as exc:
            raise ProxyError(502, f"Sync failed: {exc}.", "api_error") from None
        if changed:
            registry.refresh()
        payload = {"message": "Sync completed.", "changed": changed, "status": _status(sync)}
    elif path == "sync/status" and method == "GET":
        payload = _status(sync)
    else:
        raise ProxyError(404, f"No route for {method[:20]} {scope.path[:200]}.", "not_found_error")
    headers = [("content-type", "application/json"), ("cache-control", "no-store"), ("x-request-id", request_id)]
    proto.response_bytes(200, headers, orjson.dumps(payload))


def _list(registry: PromptRegistry, query: dict[str, list[str]]) -> dict[str, Any]:
    page = _int(query, "page", 1, 1, 1_000_000)
    limit = _int(query, "limit", 20, 1, MAX_LIMIT)
    search = (query.get("search") or [""])[0].strip().lower()[:200]
    prompts = [
        p
        for p in registry.prompts().values()
        if not search or any(search in (v or "").lower() for v in (p.name, p.title, p.description))
    ]
    chosen = prompts[(page - 1) * limit : page * limit]
    return {"prompts": [_summary(p) for p in chosen], "page": page, "limit": limit, "total": len(prompts)}


def _int(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    values = query.get(name)
    if not values:
        return default
    raw = values[0]
    try:
        value = int(raw)
    except ValueError:
        raise ProxyError(400, f"`{name}` must be an integer.") from None
    if not low <= value <= high:
        raise ProxyError(400, f"`{name}` must be between {low} and {high}.")
    return value


def _summary(p: Prompt) -> dict[str, Any]:
    return {"promptId": p.name, **p.wire()}


def _detail(p: Prompt) -> dict[str, Any]:
    return {**_summary(p), "template": p.template.source, "argumentsDeclared": p.declared}


def _status(sync: GitHubSync | None) -> dict[str, Any]:
    if sync is None:
        return {
            "repository": None,
            "branch": None,
            "sync_status": "not_configured",
            "last_sync_at": None,
            "last_commit_sha": None,
            "last_error": "GitHub sync service not configured",
        }
    st = sync.status
    return {
        "repository": f"{sync.client.owner}/{sync.client.repo}",
        "branch": sync.branch,
        "sync_status": st.state,
        "last_sync_at": datetime.fromtimestamp(st.last_sync, UTC).isoformat() if st.last_sync else None,
        "last_commit_sha": st.sha,
        "last_error": st.last_error,
        "files": st.files,
        "skipped": st.skipped,
    }
