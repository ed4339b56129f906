"""Raw HTTP for the attack tests: any method, path (sent as is, no normalisation), Host and headers."""

from __future__ import annotations

import http.client
from typing import Any
from urllib.parse import urlsplit

import orjson


def call(
    url: str, path: str, *, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """One request on its own connection; returns status, lower-cased headers and the body (JSON parsed when it is)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest(
            method, path, skip_host="host" in {k.lower() for k in (headers or {})}, skip_accept_encoding=True
        )
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("content-length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    out = {k.lower(): v for k, v in resp.getheaders()}
    try:
        parsed: Any = orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        parsed = data
    return resp.status, out, parsed


def is_anthropic_error(body: Any, error_type: str | None = None) -> bool:
    return (
        isinstance(body, dict)
        and body.get("type") == "error"
        and isinstance(body.get("error"), dict)
        and (error_type is None or body["error"].get("type") == error_type)
        and bool(body.get("request_id"))
    )
