"""Request ids: one id per request, shared by the `X-Request-ID` header and the stored row."""

from __future__ import annotations

import os
import time
import uuid


def new_request_id() -> str:
    """A UUIDv7 string: time-ordered, so rows written in batches stay index-friendly."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | rand
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))
