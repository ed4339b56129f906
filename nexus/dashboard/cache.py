"""`DASHBOARD_CACHE_TTL`: the figures of the aggregate pages, reused for a few seconds.

The reference dashboard cached what it read for `DASHBOARD_CACHE_TTL` seconds, so a wall screen or
many people on the overview did not each run its sums. Nexus keeps it off by default (0: every page
is fresh; the live view pushes new requests anyway); set, the overview, usage and conversation list
pages reuse their data per distinct query for that long. Request and conversation details are never
cached. At most `MAX_ENTRIES` queries are kept (query parameters come from visitors).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

MAX_ENTRIES = 256


class PageCache:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[Hashable, tuple[float, dict[str, Any]]] = {}

    async def get(self, key: Hashable, load: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        if self.ttl_s <= 0:
            return await load()
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        data = await load()
        if len(self._entries) >= MAX_ENTRIES:
            self._entries = {k: v for k, v in self._entries.items() if now - v[0] < self.ttl_s}
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
        self._entries[key] = (now, data)
        return data
