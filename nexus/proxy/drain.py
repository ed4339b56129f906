"""Graceful shutdown of a proxy worker: in-flight requests finish, up to a deadline.

On SIGTERM Granian's main process stops listening and signals each worker; the worker's server stops
taking connections and waits for the requests it is serving, streams included, however long they
run; only then does it call the app's `__rsgi_del__` (which flushes the storage writer). Left alone,
one endless stream would hold shutdown until Granian's kill timeout, and the kill would lose every row
still queued in memory. So the worker watches the same signal (`install`: the Python-level handler
the event loop installed is wrapped, so Granian still gets it) and, `SHUTDOWN_TIMEOUT_MS` later,
cancels the requests still running (`SHUTDOWN`): a stream ends with an SSE error event, a response not
yet begun gets a 503 the SDKs retry elsewhere, and each is stored with `outcome = 'shutdown'`. The
server's wait then ends, and the writer flushes or spools what it holds before the worker exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

log = logging.getLogger("nexus.proxy")

#: The cancellation message of a request ended by the shutdown deadline.
SHUTDOWN = "nexus-shutdown-deadline"


def is_shutdown(exc: BaseException) -> bool:
    return isinstance(exc, asyncio.CancelledError) and bool(exc.args) and exc.args[0] == SHUTDOWN


class Drain:
    """One per worker: the requests in flight, and the deadline that ends them once shutdown began."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.draining = False
        self.expired = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Notice SIGTERM / SIGINT without taking them from the server (its handlers still run)."""
        self._loop = loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: Any, previous: Any = previous) -> None:
                self.begin()
                if callable(previous):
                    previous(signum, frame)

            signal.signal(sig, handler)

    def begin(self) -> None:
        """Shutdown began: not ready any more; in-flight requests get `timeout_s` to finish."""
        if self.draining or self._loop is None:
            return
        self.draining = True
        self._loop.call_soon_threadsafe(self._arm)

    def _arm(self) -> None:
        assert self._loop is not None
        if self.tasks:
            log.warning("shutting down: %d requests in flight get %g s to finish", len(self.tasks), self.timeout_s)
        self._loop.call_later(self.timeout_s, self.expire)

    def expire(self) -> None:
        """The deadline passed: end what still runs."""
        self.expired = True
        if self.tasks:
            log.warning("shutdown deadline passed: ending %d requests still in flight", len(self.tasks))
        for task in list(self.tasks):
            task.cancel(SHUTDOWN)


def worker_kill_timeout_s(settings: Any) -> int:
    """How long Granian waits for a worker after SIGTERM before killing it: the in-flight deadline,
    then the writer's last flush (a database that hangs is given the write timeout), with a margin."""
    return int(settings.shutdown_timeout_ms / 1000 + settings.storage_write_timeout_ms / 1000 + 15)
