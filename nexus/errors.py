"""Errors the gateway makes itself, in Anthropic's wire shape.

Clients (the SDKs, Claude Code) map `error.type` and the HTTP status to their own exception classes and
retry rules, so a proxy-made error must look exactly like one from the API: same envelope, same type
names, same statuses. Upstream errors are never rewritten; they pass through untouched.
"""

from __future__ import annotations

import orjson

#: Anthropic error type for each status the proxy produces.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class ProxyError(Exception):
    """An error answered to the client by the proxy itself (never reaches the upstream)."""

    def __init__(
        self, status: int, message: str, error_type: str | None = None, headers: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or ERROR_TYPES.get(status, "api_error")
        self.headers = headers or []
        #: The request body when it had been read before the refusal (kept with the stored request).
        self.body_read: bytes | None = None
        #: Upstream attempts made before this error, when it comes from forwarding.
        self.attempts: int | None = None
        #: A client key's secret the request carried where it must not: kept out of what is stored.
        self.secret: str | None = None

    def body(self, request_id: str) -> bytes:
        return error_body(self.error_type, self.message, request_id)


def error_body(error_type: str, message: str, request_id: str | None) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id})


def sse_error_event(error_type: str, message: str, request_id: str | None = None) -> bytes:
    """An SSE `error` event, as the API sends after a 200 when a stream fails."""
    payload: dict[str, object] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id:
        payload["request_id"] = request_id
    return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
