"""A bounded queue drained in batches by one background task, with counts of what became of each item.

`offer` is what the request path calls: an append to a deque and, for the first item of a batch, an
event set; a full queue drops the item and counts it (memory stays bounded whatever the traffic, and a
slow or dead receiver never reaches back into the request path). Full means `capacity` items, or
`max_bytes` of the bodies they keep alive (a Claude Code request body is often hundreds of KB). The
task waits for the first item, gives the batch `interval_s` to fill, then hands it to `deliver` (which
may take its time: meanwhile the queue takes new items up to its bounds). Counts are kept as plain
integers and folded into the Prometheus counter `nexus_integration_events{sink,result}` by the task,
never by the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from nexus.observability import metrics as prom

MIB = 1024 * 1024
#: Bytes of bodies one sink's queue may keep alive per worker.
MAX_QUEUED_BYTES = 64 * MIB

log = logging.getLogger("nexus.integrations")

T = TypeVar("T")
R = TypeVar("R")
RESULTS = prom.INTEGRATION_RESULTS
#: The integrations' own threads (parsing, masking, blocking posts): never the loop's default executor,
#: which OAuth refreshes use, so a receiver that hangs cannot hold up a token refresh. One per sink.
_EXECUTOR: ThreadPoolExecutor | None = None


async def in_thread(fn: Callable[..., R], *args: Any) -> R:
    """`fn(*args)` in the integrations' thread pool."""
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = ThreadPoolExecutor(max_workers=3, thread_name_prefix="nexus-integrations")
    return await asyncio.get_running_loop().run_in_executor(_EXECUTOR, functools.partial(fn, *args))


class Counts:
    """Running totals by result, and what of them was already reported to Prometheus."""

    def __init__(self, sink: str) -> None:
        self.sink = sink
        self.totals = dict.fromkeys(RESULTS, 0)
        self._reported = dict.fromkeys(RESULTS, 0)

    def add(self, result: str, n: int = 1) -> None:
        self.totals[result] += n

    def fold(self) -> None:
        """Report what was counted since the last fold (the background task, and at close)."""
        for result, total in self.totals.items():
            delta = total - self._reported[result]
            if delta > 0:
                try:
                    prom.integration_events(self.sink, result, delta)
                except Exception:  # metrics must never stop a delivery
                    log.exception("integrations: metrics fold failed")
                    return
                self._reported[result] = total


class BatchQueue(Generic[T]):
    def __init__(
        self,
        counts: Counts,
        capacity: int,
        batch_size: int,
        interval_s: float,
        deliver: Callable[[list[T]], Awaitable[None]],
        size: Callable[[T], int] | None = None,
        max_bytes: int = MAX_QUEUED_BYTES,
    ) -> None:
        self.counts = counts
        self._size = size
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self.capacity = capacity
        self.batch_size = batch_size
        self.interval_s = interval_s
        self._deliver = deliver
        self._items: deque[T] = deque()
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._in_flight = 0
        self._task: asyncio.Task[None] | None = None

    def offer(self, item: T) -> bool:
        """Queue `item` unless the queue is full (then it is dropped and counted). Never blocks."""
        if len(self._items) >= self.capacity:
            self.counts.totals["dropped"] += 1
            return False
        if self._size is not None:
            size = self._size(item)
            if self.queued_bytes + size > self.max_bytes:
                self.counts.totals["dropped"] += 1
                return False
            self.queued_bytes += size
        self._items.append(item)
        if self._wake is not None and not self._wake.is_set():
            self._wake.set()
        return True

    def __len__(self) -> int:
        return len(self._items)

    def start(self) -> None:
        """Start the draining task on the running loop."""
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        if self._items:
            self._wake.set()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        assert self._wake is not None and self._stop is not None
        while not (self._stop.is_set() and not self._items):
            await self._wake.wait()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):  # let the batch fill (cut short by close)
                await asyncio.wait_for(self._stop.wait(), self.interval_s)
            await self.drain()

    async def drain(self) -> None:
        """Deliver everything queued now, a batch at a time."""
        while self._items:
            batch = [self._items.popleft() for _ in range(min(self.batch_size, len(self._items)))]
            if self._size is not None:
                self.queued_bytes -= sum(self._size(item) for item in batch)
            self._in_flight = len(batch)
            try:
                await self._deliver(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("integrations: %s delivery failed", self.counts.sink)
                self.counts.add("failed", len(batch))
            self._in_flight = 0
            self.counts.fold()
        self.counts.fold()

    async def close(self, timeout_s: float) -> None:
        """Deliver what is queued (the batch being delivered included) within `timeout_s`; what is
        left then is dropped and counted."""
        task, self._task = self._task, None
        if task is None:
            return
        assert self._wake is not None and self._stop is not None
        self._stop.set()
        self._wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                await task
        except TimeoutError:
            self.counts.add("dropped", len(self._items) + self._in_flight)
            self._items.clear()
            self.queued_bytes = 0
        except Exception:
            log.exception("integrations: %s stopped with an error", self.counts.sink)
        self.counts.fold()
