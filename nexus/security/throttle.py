"""Failed credential checks, counted per client address, so guessing a key is slow and visible.

Every failed check (a wrong data key, a wrong login, an invalid client key) is logged without the key
and counted for the client's address (an IPv6 client's /64, which one host can fill with addresses).
After `limit` failures within `window_s` the address is refused with 429 and a `retry-after` until its
oldest failure leaves the window, without the presented key even being checked. A success forgives
nothing: otherwise a caller holding one valid key could interleave it with guesses of others. Memory is bounded: at most
`max_addresses` addresses are remembered, least recently failed forgotten first. Counts are per
process (each proxy worker and the dashboard keep their own), which multiplies the budget by the
number of workers at most: still a few guesses a second instead of thousands.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

log = logging.getLogger("nexus.security")


class FailureThrottle:
    def __init__(
        self,
        limit: int = 10,
        window_s: float = 60.0,
        *,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str | None) -> int | None:
        """Seconds the address must wait before it may try again, or None when it may try now."""
        failures = self._failures.get(_bucket(address))
        if failures is None or len(failures) < self.limit:
            return None
        wait = failures[0] + self.window_s - self._clock()
        if wait <= 0:
            return None
        return max(1, math.ceil(wait))

    def failed(self, address: str | None, what: str) -> None:
        """Count and log one failed check (`what` says which, never the secret)."""
        key = _bucket(address)
        now = self._clock()
        failures = self._failures.get(key)
        if failures is None:
            failures = self._failures[key] = deque(maxlen=self.limit)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
        while failures and failures[0] + self.window_s <= now:
            failures.popleft()
        failures.append(now)
        log.warning("%s from %s (%d in the last %gs)", what, address or "unknown address", len(failures), self.window_s)


def _bucket(address: str | None) -> str:
    """What failures are counted by: the address, or for IPv6 its /64 (an IPv4-mapped address is the
    IPv4 client it maps, never one bucket for every IPv4 client of a dual-stack listener)."""
    if not address or ":" not in address:
        return address or ""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))
