"""Reading and checking a client's request body before anything goes upstream.

Granian accepts any body size and waits for a body as long as the client likes, so both limits are
enforced here while reading: a `Content-Length` over the limit is refused before a byte is read, a
body that crosses the limit is refused at once (memory per request is bounded by the limit), and a
body that stops arriving (`BODY_READ_IDLE_TIMEOUT_MS` between chunks) or takes too long in all
(`BODY_READ_TIMEOUT_MS`) is refused with 408, so a client that trickles its upload cannot hold a
request slot for ever. `UploadGuard` tightens the total for a client address that already holds many
slow uploads. The fields the proxy relies on are checked by the Rust analysis
(`nexus._core.analyze_request`); all else is Anthropic's to judge, so new API fields pass through
untouched.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Protocol

from granian.rsgi import ProtocolClosed

from nexus.errors import ProxyError
from nexus.proxy.deadline import Deadline

#: Bodies up to this size (by Content-Length) are read in one call into Granian, which costs about
#: 50 us less per request than reading part by part; such a body must arrive within the idle
#: timeout as a whole (at 35 KB/s a 1 MiB body takes 30 s). Larger or chunked bodies are read part
#: by part, each part within the idle timeout.
ONE_CALL_MAX = 1 << 20
#: Uploads from one address that started this recently are not counted as slow.
SLOW_AFTER_S = 1.0
#: The whole-body limit for new requests of an address that holds too many slow uploads.
STRICT_BODY_TIMEOUT_S = 2.0


class ClientGone(Exception):
    """The client closed the connection before its request body was complete: nobody to answer."""


class BodySource(Protocol):
    def __aiter__(self) -> Any: ...


async def read_body(
    proto: BodySource, content_length: str | None, limit: int, *, idle_s: float, total_s: float
) -> bytes:
    """The whole body, or `ProxyError` 400/408/413, or `ClientGone`.

    Granian ends the iteration quietly when the client disconnects mid-body, so a body shorter than
    its `Content-Length` is a client that left, never a body to forward.
    """
    declared = -1
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise ProxyError(400, "Invalid Content-Length header.") from None
        if declared > limit:
            raise ProxyError(413, f"Request body is {declared} bytes; the limit is {limit} bytes.")
        if 0 <= declared <= ONE_CALL_MAX and callable(proto):
            return await _read_at_once(proto, declared, min(idle_s, total_s))
    parts: list[bytes] = []
    size = 0
    try:
        async with Deadline(total_s) as total, Deadline(idle_s) as idle:
            async for chunk in proto:
                size += len(chunk)
                if size > limit:
                    raise ProxyError(413, f"Request body exceeds the limit of {limit} bytes.")
                parts.append(chunk)
                idle.touch()
    except TimeoutError:
        which = "in all" if total.expired else "between two parts"
        limit_s = total_s if total.expired else idle_s
        raise ProxyError(
            408, f"The request body was not received in time ({limit_s:g} s {which}).", "timeout_error"
        ) from None
    except ProtocolClosed:
        raise ClientGone from None
    if size < declared:
        raise ClientGone
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _read_at_once(proto: Any, declared: int, within_s: float) -> bytes:
    try:
        async with Deadline(within_s):
            body: bytes = await proto()
    except TimeoutError:
        raise ProxyError(
            408, f"The request body was not received in time ({within_s:g} s in all).", "timeout_error"
        ) from None
    except ProtocolClosed:
        raise ClientGone from None
    if len(body) < declared:
        raise ClientGone
    return body


def check_json_content_type(content_type: str | None) -> None:
    """`application/json`, parameters (charset) allowed; anything else, or a look-alike, is a 415."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise ProxyError(
            415, f"Content-Type must be application/json, got {content_type or 'none'!r}.", "invalid_request_error"
        )


class UploadGuard:
    """Uploads in progress per client address, so one address cannot hold every worker's patience.

    An address's slow uploads are those in progress that started over `SLOW_AFTER_S` ago (counted as
    in progress minus started within that second, which costs a counter and a short deque instead of
    a timer per request). While an address holds `limit` of them, its new requests must deliver their
    body within `STRICT_BODY_TIMEOUT_S`: a normal client's body arrives in milliseconds and is never
    affected, a trickling one is refused (408) quickly instead of joining the others.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._active: dict[str, int] = {}
        self._recent: dict[str, deque[float]] = {}

    def start(self, address: str | None) -> bool:
        """Count one upload from `address`; True when it must be held to the strict deadline."""
        key = address or ""
        now = time.monotonic()
        recent = self._recent.get(key)
        if recent is None:
            recent = self._recent[key] = deque(maxlen=self.limit * 4)
        while recent and recent[0] < now - SLOW_AFTER_S:
            recent.popleft()
        active = self._active.get(key, 0)
        strict = active - len(recent) >= self.limit
        self._active[key] = active + 1
        recent.append(now)
        return strict

    def finish(self, address: str | None) -> None:
        key = address or ""
        active = self._active.get(key, 1) - 1
        if active > 0:
            self._active[key] = active
            return
        self._active.pop(key, None)
        self._recent.pop(key, None)

    def slow_uploads(self) -> int:
        """For /health: uploads in progress that started over a second ago, all addresses (approximate)."""
        now = time.monotonic()
        recent = sum(sum(1 for t in d if t >= now - SLOW_AFTER_S) for d in self._recent.values())
        return max(0, sum(self._active.values()) - recent)
