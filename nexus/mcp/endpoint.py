"""`/mcp` over HTTP: the Streamable HTTP transport of the Model Context Protocol, on the proxy's RSGI app.

- `POST /mcp`: one JSON-RPC message per request (`nexus.mcp.protocol`). The answer is JSON, or one
  SSE `message` event when the client's `Accept` takes only `text/event-stream`; a notification or
  a response gets 202 with no body.
- `GET /mcp`: a client asking for an SSE stream (`Accept: text/event-stream`) gets 405, which the
  specification provides for a server that sends no messages of its own; any other GET gets the
  reference system's discovery document.
- `DELETE /mcp`: 405. The server is stateless (like the SDK's `stateless_http` mode): it issues no
  `Mcp-Session-Id`, so any proxy worker can answer any request and there is no session to end.

Before a body is read: a browser `Origin` that `CORS_ALLOWED_ORIGINS` does not list is refused (the
specification's DNS-rebinding rule), and with `ENABLE_CLIENT_AUTH` a valid client key is required
(`x-api-key` or `Authorization: Bearer`), refused keys counting against the address like on `/v1/*`.
Bodies are read with `MCP_MAX_REQUEST_SIZE` and the proxy's read deadlines. Refusals are JSON-RPC
error objects with `id: null` and the HTTP status that says why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson

from nexus.auth.client_keys import ClientKeyRejected, ClientKeyStore
from nexus.auth.errors import WWW_AUTHENTICATE
from nexus.auth.service import presented_client_key
from nexus.errors import ProxyError
from nexus.mcp import protocol
from nexus.mcp.admin import handle_api
from nexus.mcp.github import GitHubSync, build_sync
from nexus.mcp.prompts import PromptRegistry
from nexus.proxy.body import read_body
from nexus.security.access import DataAccess
from nexus.security.throttle import FailureThrottle
from nexus.settings import Settings

log = logging.getLogger("nexus.mcp")

DISCOVERY = {
    "name": protocol.SERVER_INFO["name"],
    "version": protocol.SERVER_INFO["version"],
    "transport": "streamable-http",
    "protocolVersions": list(protocol.PROTOCOL_VERSIONS),
    "capabilities": {"prompts": {"listPrompts": True, "getPrompt": True}},
}


class McpEndpoint:
    def __init__(
        self,
        settings: Settings,
        client_keys: ClientKeyStore | None,
        throttle: FailureThrottle,
        data_access: DataAccess,
        check_origin: Callable[[Any], None],
    ) -> None:
        self.registry = PromptRegistry(settings.mcp_prompts_dir, watch=settings.mcp_watch_files)
        self.client_keys = client_keys
        self.throttle = throttle
        self.data_access = data_access
        self.check_origin = check_origin
        self.max_body = settings.mcp_max_request_size
        self.body_idle_s = settings.body_read_idle_timeout_s
        self.body_total_s = settings.body_read_timeout_s
        self.sync: GitHubSync | None = build_sync(settings, self.registry)
        self._sync_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """On the worker's loop: load the prompts once, and start the GitHub sync when configured."""
        self.registry.prompts()
        if self.sync is not None:
            self._sync_task = asyncio.ensure_future(self.sync.run_forever())

    def stop(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()

    async def handle(self, scope: Any, proto: Any, request_id: str) -> None:
        method: str = scope.method
        base = [("x-request-id", request_id), ("cache-control", "no-store")]
        try:
            self.check_origin(scope.headers)
            self._authorize(scope)
            if method == "POST":
                await self._post(scope, proto, base)
            elif method == "GET":
                if "text/event-stream" in (scope.headers.get("accept") or ""):
                    raise ProxyError(405, "This server sends no messages of its own: there is no SSE stream to open.")
                _json(proto, 200, DISCOVERY, base)
            else:
                raise ProxyError(405, f"Method {method[:20]} is not allowed on /mcp; use POST.")
        except ProxyError as exc:
            headers = [*base, *exc.headers]
            if exc.status == 405:
                headers.append(("allow", "GET, POST"))
            _json(proto, exc.status, protocol.error_message(None, _code(exc.status), exc.message), headers)

    async def api(self, scope: Any, proto: Any, request_id: str) -> None:
        """`/api/mcp/*` (`nexus.mcp.admin`); the caller has applied the data-access rule."""
        await handle_api(self.registry, self.sync, scope, proto, request_id)

    def _authorize(self, scope: Any) -> None:
        if self.client_keys is None:
            return
        address = self.data_access.address(scope.client, scope.headers)
        wait = self.throttle.retry_after(address)
        if wait is not None:
            raise ProxyError(
                429,
                f"Too many failed client keys from this address; retry in {wait} s.",
                headers=[("retry-after", str(wait))],
            )
        presented = presented_client_key(dict(scope.headers.items()))
        if presented is None:
            raise ProxyError(
                401, "A client key is required (x-api-key or Authorization: Bearer).", headers=WWW_AUTHENTICATE
            )
        try:
            self.client_keys.check(presented)
        except ClientKeyRejected as exc:
            self.throttle.failed(address, "client key refused")
            raise ProxyError(401, str(exc), headers=WWW_AUTHENTICATE) from None

    async def _post(self, scope: Any, proto: Any, base: list[tuple[str, str]]) -> None:
        headers = scope.headers
        content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise ProxyError(415, "Content-Type must be application/json.")
        accept = (headers.get("accept") or "").lower()
        wants_json = not accept or any(t in accept for t in ("application/json", "*/*", "application/*"))
        if not wants_json and "text/event-stream" not in accept:
            raise ProxyError(406, "Accept must include application/json or text/event-stream.")
        body = await read_body(
            proto, headers.get("content-length"), self.max_body, idle_s=self.body_idle_s, total_s=self.body_total_s
        )
        reply = protocol.handle(body, self.registry, headers.get("mcp-protocol-version"))
        if reply.message is None:
            proto.response_empty(reply.status, base)
            return
        if wants_json:
            _json(proto, reply.status, reply.message, base)
        else:
            event = b"event: message\ndata: " + orjson.dumps(reply.message) + b"\n\n"
            proto.response_bytes(reply.status, [("content-type", "text/event-stream"), *base], event)


def _json(proto: Any, status: int, payload: object, headers: list[tuple[str, str]]) -> None:
    proto.response_bytes(status, [("content-type", "application/json"), *headers], orjson.dumps(payload))


def _code(status: int) -> int:
    """A JSON-RPC code for an HTTP-level refusal (the HTTP status carries the detail)."""
    return protocol.INTERNAL_ERROR if status >= 500 else protocol.INVALID_REQUEST
