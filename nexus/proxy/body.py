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
    proto: BodySource,
    content_length: str | None,
    limit: int,
    *,
    idle_s: float,
    total_s: float,
    upload: Upload | None = None,
) -> bytes:
    """The whole body, or `ProxyError` 400/408/413, or `ClientGone`. `upload` (from `UploadGuard`)
    may pull the whole-body deadline in while slow uploads crowd the worker.

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
            return await _read_at_once(proto, declared, min(idle_s, total_s), upload)
    parts: list[bytes] = []
    size = 0
    try:
        with Deadline(total_s) as total, Deadline(idle_s) as idle:
            if upload is not None:
                upload.attach(total)
            async for chunk in proto:
                size += len(chunk)
                if size > limit:
                    raise ProxyError(413, f"Request body exceeds the limit of {limit} bytes.")
                parts.append(chunk)
                idle.touch()
    except TimeoutError:
        if total.expired:
            raise _late(total_s, "in all", upload) from None
        raise _late(idle_s, "between two parts", upload) from None
    except ProtocolClosed:
        raise ClientGone from None
    if size < declared:
        raise ClientGone
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _read_at_once(proto: Any, declared: int, within_s: float, upload: Upload | None) -> bytes:
    try:
        with Deadline(within_s) as deadline:
            if upload is not None:
                upload.attach(deadline)
            body: bytes = await proto()
    except TimeoutError:
        raise _late(within_s, "in all", upload) from None
    except ProtocolClosed:
        raise ClientGone from None
    if len(body) < declared:
        raise ClientGone
    return body


def _late(limit_s: float, which: str, upload: Upload | None) -> ProxyError:
    if upload is not None and upload.tightened:
        limit_s, which = STRICT_BODY_TIMEOUT_S, "in all while slow uploads crowd the gateway"
    return ProxyError(408, f"The request body was not received in time ({limit_s:g} s {which}).", "timeout_error")


def check_json_content_type(content_type: str | None) -> None:
    """`application/json`, parameters (charset) allowed; anything else, or a look-alike, is a 415."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise ProxyError(
            415, f"Content-Type must be application/json, got {content_type or 'none'!r}.", "invalid_request_error"
        )


class Upload:
    """One body being read: where from, since when, and the deadline that may be pulled in."""

    __slots__ = ("address", "deadline", "started", "tightened")

    def __init__(self, address: str, started: float) -> None:
        self.address = address
        self.started = started
        self.deadline: Deadline | None = None
        self.tightened = False

    def attach(self, deadline: Deadline) -> None:
        self.deadline = deadline
        if self.tightened:
            deadline.shorten(STRICT_BODY_TIMEOUT_S)


class UploadGuard:
    """Uploads in progress per client address and in all, so slow clients cannot hold every slot.

    While an address has more than `limit` uploads in progress, or the worker more than `total_limit`
    from any number of addresses, the gateway is crowded: a new upload (of that address, or of anyone)
    must arrive within `STRICT_BODY_TIMEOUT_S`, and the uploads already in progress for over
    `SLOW_AFTER_S` get the same deadline from now. A normal client's body arrives in milliseconds and is
    never affected; trickling ones are refused (408) within seconds instead of holding their slots for
    the whole `BODY_READ_TIMEOUT_MS`, even when thousands arrive at once from many addresses.
    """

    #: The crowded check walks every upload in progress at most this often.
    SWEEP_EVERY_S = 0.5

    def __init__(self, limit: int, total_limit: int | None = None) -> None:
        self.limit = limit
        self.total_limit = total_limit if total_limit is not None else limit * 32
        self._uploads: dict[int, Upload] = {}
        self._per_address: dict[str, int] = {}
        self._swept_at = 0.0

    def start(self, address: str | None) -> Upload:
        key = address or ""
        now = time.monotonic()
        upload = Upload(key, now)
        count = self._per_address.get(key, 0) + 1
        self._per_address[key] = count
        self._uploads[id(upload)] = upload
        if count > self.limit or len(self._uploads) > self.total_limit:
            upload.tightened = True
            self._sweep(now, None if len(self._uploads) > self.total_limit else key)
        return upload

    def finish(self, upload: Upload) -> None:
        if self._uploads.pop(id(upload), None) is None:
            return
        count = self._per_address.get(upload.address, 1) - 1
        if count > 0:
            self._per_address[upload.address] = count
        else:
            self._per_address.pop(upload.address, None)

    def _sweep(self, now: float, address: str | None) -> None:
        """Pull in the deadlines of the slow uploads (of `address`, or of everyone)."""
        if now - self._swept_at < self.SWEEP_EVERY_S:
            return
        self._swept_at = now
        for upload in self._uploads.values():
            if upload.tightened or now - upload.started < SLOW_AFTER_S:
                continue
            if address is None or upload.address == address:
                upload.tightened = True
                if upload.deadline is not None:
                    upload.deadline.shorten(STRICT_BODY_TIMEOUT_S)

    def slow_uploads(self) -> int:
        """For /health: uploads in progress for over a second."""
        now = time.monotonic()
        return sum(1 for u in self._uploads.values() if now - u.started >= SLOW_AFTER_S)
