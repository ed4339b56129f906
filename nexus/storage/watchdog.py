"""Ending a database call that hangs, so the writer never waits on a frozen server.

A server that is stopped refuses connections and the writer spools at once; a server that hangs (a
frozen process, a full disk, a network partition that drops packets) keeps the TCP connection open,
and libpq waits for ever: rows pile up unseen, a `kill -9` loses them all and a graceful shutdown
cannot spool what the stuck thread holds. The watchdog gives every call `timeout_s`: past it, the
connection's socket is shut down from the watchdog's thread, the blocked call fails at once, and the
writer treats it as the outage it is (the batch goes to the spool).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from nexus.observability.threads import name_this_thread

log = logging.getLogger("nexus.storage")


class Watchdog:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.fired = 0
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nexus-storage-watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def guard(self, conn: psycopg.Connection) -> Iterator[None]:
        """Watch one call (or a few, as one operation) on `conn`."""
        with self._lock:
            self._conn, self._since = conn, time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._conn, self._since = None, None

    def busy_for(self) -> float:
        """How long the current call has been waiting (0 when none is)."""
        since = self._since
        return time.monotonic() - since if since is not None else 0.0

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        name_this_thread()
        tick = min(1.0, self.timeout_s / 4)
        while not self._stop.wait(tick):
            with self._lock:
                if self._since is None or self._conn is None or time.monotonic() - self._since < self.timeout_s:
                    continue
                conn, self._since = self._conn, None
                self.fired += 1
                log.error("storage: a database call took over %gs; abandoning the connection", self.timeout_s)
                shut_down(conn)


def shut_down(conn: psycopg.Connection | psycopg.AsyncConnection[Any]) -> None:
    """Shut the connection's socket down in both directions: the blocked libpq call sees it at once.
    (`shutdown` acts on the socket, not on this duplicate descriptor, and frees nothing libpq holds.)"""
    try:
        fd = os.dup(conn.pgconn.socket)
    except (OSError, psycopg.Error):
        return
    try:
        with socket.socket(fileno=fd) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
