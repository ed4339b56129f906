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
#: How often requests that outlived the deadline are cancelled again.
RECANCEL_S = 0.1


#: Set once this process's deadline passed. A cancellation's message is lost when the task was waiting
#: on a future implemented natively (the upstream client's reads), so the flag is what tells a shutdown
#: from any other cancellation there (the client leaving is told by its own watcher).
_deadline_passed = False


def is_shutdown(exc: BaseException) -> bool:
    """Whether a cancellation comes from the shutdown deadline."""
    if not isinstance(exc, asyncio.CancelledError):
        return False
    return _deadline_passed or (bool(exc.args) and exc.args[0] == SHUTDOWN)


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
        global _deadline_passed
        first = not self.expired
        self.expired = _deadline_passed = True
        if self.tasks and first:
            log.warning("shutdown deadline passed: ending %d requests still in flight", len(self.tasks))
        for task in list(self.tasks):
            if not task.done():
                task.cancel(SHUTDOWN)
        if self.tasks and self._loop is not None:
            # A cancellation can be lost: the upstream client's read, when its chunk arrives at that very
            # moment, returns the chunk and drops the cancellation. Ask again until every request ended.
            self._loop.call_later(RECANCEL_S, self.expire)


def worker_kill_timeout_s(settings: Any) -> int:
    """How long Granian waits for a worker after SIGTERM before killing it: the in-flight deadline,
    then the writer's last flush (a database that hangs is given the write timeout), with a margin."""
    return int(settings.shutdown_timeout_s + settings.storage_write_timeout_s + 15)
