"""The dashboard's analysis button: it asks the proxy, it never writes the database itself.

The dashboard only reads (a read-only pool, the `nexus_reader` role); queuing an analysis is a write
that spends money, so it goes through the one place that validates and queues it: the proxy's
`POST /api/analyses` (or `.../regenerate`) at `PROXY_API_URL`, with `DASHBOARD_API_KEY` when one is set
(without one, the proxy serves loopback callers, which the dashboard on the same machine is).

A form post is a state change: with a session it needs the session's CSRF token; without a key (this
machine only) a browser's cross-site post is refused by its `Origin` / `Sec-Fetch-Site`, so a page on
another site cannot make a visitor's browser queue paid analyses.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from urllib.parse import quote

import orjson

#: How long the dashboard waits for the proxy, s.
PROXY_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class ProxyAnswer:
    status: int
    message: str


def same_origin(headers: dict[str, str]) -> bool:
    """Whether a browser says the form came from this dashboard (or no browser said anything)."""
    site = headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        return False
    origin = headers.get("origin")
    if origin is None:
        return True
    host = headers.get("host", "")
    return origin.rstrip("/").lower() in (f"http://{host}".lower(), f"https://{host}".lower())


def _call(url: str, body: bytes, api_key: str | None) -> ProxyAnswer:
    request = urllib.request.Request(url, data=body, method="POST")  # noqa: S310 (a validated http(s) setting)
    request.add_header("content-type", "application/json")
    if api_key:
        request.add_header("x-api-key", api_key)
    try:
        with urllib.request.urlopen(request, timeout=PROXY_TIMEOUT_S) as response:  # noqa: S310
            payload = orjson.loads(response.read(64 * 1024) or b"{}")
            return ProxyAnswer(int(response.status), str(payload.get("message", "queued")))
    except urllib.error.HTTPError as exc:
        try:
            error = orjson.loads(exc.read(64 * 1024))
            message = str(error.get("error", {}).get("message", exc.reason))
        except (orjson.JSONDecodeError, AttributeError):
            message = str(exc.reason)
        return ProxyAnswer(exc.code, message[:300])
    except (OSError, orjson.JSONDecodeError) as exc:
        return ProxyAnswer(502, f"The proxy at PROXY_API_URL did not answer ({exc.__class__.__name__}).")


async def ask_proxy(
    proxy_url: str,
    api_key: str | None,
    conversation_id: str,
    branch_id: str,
    regenerate: bool,
    custom_prompt: str | None,
) -> ProxyAnswer:
    conversation_id = str(uuid.UUID(conversation_id))
    base = proxy_url.rstrip("/") + "/api/analyses"
    if regenerate:
        url = f"{base}/{conversation_id}/{quote(branch_id, safe='')}/regenerate"
        body = orjson.dumps({"customPrompt": custom_prompt})
    else:
        url = base
        body = orjson.dumps({"conversationId": conversation_id, "branchId": branch_id, "customPrompt": custom_prompt})
    return await asyncio.to_thread(_call, url, body, api_key)
