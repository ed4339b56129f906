"""Reading and checking a client's request body before anything goes upstream.

Granian accepts any body size, so the cap is enforced here while reading: a `Content-Length` over the
limit is refused before a byte is read, and a chunked body is refused as soon as it crosses the limit,
so memory per request is bounded by the limit. The fields the proxy relies on are checked by the Rust
analysis (`nexus._core.analyze_request`); all else is Anthropic's to judge, so new API fields pass
through untouched.
"""

from __future__ import annotations

from typing import Any, Protocol

from nexus.errors import ProxyError


class BodySource(Protocol):
    def __aiter__(self) -> Any: ...


async def read_body(proto: BodySource, content_length: str | None, limit: int) -> bytes:
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise ProxyError(400, "Invalid Content-Length header.") from None
        if declared > limit:
            raise ProxyError(413, f"Request body is {declared} bytes; the limit is {limit} bytes.")
        if declared >= 0 and callable(proto):
            # The server reads exactly the declared length: one call into Granian instead of one per chunk.
            return await proto()  # type: ignore[no-any-return]
    parts: list[bytes] = []
    size = 0
    async for chunk in proto:
        size += len(chunk)
        if size > limit:
            raise ProxyError(413, f"Request body exceeds the limit of {limit} bytes.")
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def check_json_content_type(content_type: str | None) -> None:
    if not content_type or "json" not in content_type.lower():
        raise ProxyError(
            415, f"Content-Type must be application/json, got {content_type or 'none'!r}.", "invalid_request_error"
        )
