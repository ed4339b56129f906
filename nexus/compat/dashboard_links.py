"""Old dashboard links keep working: the reference dashboard's `/dashboard/...` pages redirect to
their Nexus pages, with the query parameters renamed (`projectId` is `project_id`, `accountId` is
`account_id`).

Bookmarks, links pasted in chats and Slack notifications all point at `/dashboard/...`; before, every
one of them was a 404. The redirect says nothing about stored data (the target page checks access),
so it is answered before authentication. Pages Nexus does not have (projects, credentials, prompts)
go to the nearest page that shows the same figures. GET and HEAD get 302; other methods 308, which
keeps the method (a login form posted to `/dashboard/login`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

#: Reference query parameters and the names Nexus's pages read.
PARAMS = {"projectId": "project_id", "accountId": "account_id", "project_id": "project_id", "account_id": "account_id"}
_ID = re.compile(r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.:\-]{0,199}")


def _with(target: str, query: dict[str, str]) -> str:
    kept = {PARAMS[k]: v for k, v in query.items() if k in PARAMS and v and len(v) <= 200}
    return target + ("?" + urlencode(sorted(kept.items())) if kept else "")


def nexus_location(path: str, query: dict[str, str]) -> str:
    """Where a reference dashboard path is in Nexus (always a local path)."""
    parts = [p for p in path.split("/") if p][1:]  # after "dashboard"
    head = parts[0] if parts else ""
    ident = parts[1] if len(parts) > 1 and _ID.fullmatch(parts[1]) else None
    if head == "" and query.get("projectId"):
        return _with("/conversations", query)
    if head == "requests":
        return _with("/requests", query)
    if head == "request" and ident:
        return f"/requests/{quote(ident, safe='')}"
    if head == "conversation" and ident:
        return f"/conversations/{quote(ident, safe='')}"
    if head in ("token-usage", "usage"):
        return _with("/usage", query)
    if head == "projects":
        return _with("/usage", {"projectId": ident} if ident and len(parts) > 2 else query)
    if head == "credentials":
        return "/usage"
    if head == "login":
        return "/login"
    return "/"


#: The reference dashboard's page routes (Robyn matches `:name` segments one at a time).
ROUTES = (
    "/dashboard",
    "/dashboard/:a",
    "/dashboard/:a/:b",
    "/dashboard/:a/:b/:c",
    "/dashboard/:a/:b/:c/:d",
)


def register(app: Any, respond: Callable[..., Any], query: Callable[[Any], dict[str, str]]) -> None:
    """Add the redirects to a Robyn app; `respond(status, body, content_type, headers)` builds a response."""

    async def redirect(request: Any) -> Any:
        status = 302 if request.method in ("GET", "HEAD") else 308
        location = nexus_location(request.url.path, query(request))
        return respond(status, "", "text/plain", {"location": location})

    for route in ROUTES:
        for method in ("GET", "HEAD", "POST"):
            app.add_route(method, route, redirect)
