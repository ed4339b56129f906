"""A TCP relay in front of PostgreSQL that can freeze: connections stay open, no byte moves, like a
server that hangs (a stopped process, a full disk, a partition that drops packets) rather than one that
refuses connections."""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from psycopg.conninfo import conninfo_to_dict


class FreezableRelay:
    def __init__(self, target_dsn: str) -> None:
        params = conninfo_to_dict(target_dsn)
        host = str(params.get("host") or "/tmp")
        port = int(params.get("port") or 5432)
        self._target = (
            (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}")
            if host.startswith("/")
            else (
                socket.AF_INET,
                (host, port),
            )
        )
        self.frozen = threading.Event()
        self._stop = threading.Event()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        user = params.get("user") or "postgres"
        self.dsn = f"postgresql://{user}@127.0.0.1:{self.port}/{params.get('dbname')}"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        while not self._stop.is_set():
            for key, _ in sel.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    client, _ = sock.accept()
                    upstream = socket.socket(self._target[0], socket.SOCK_STREAM)
                    upstream.connect(self._target[1])
                    peers[client], peers[upstream] = upstream, client
                    sel.register(client, selectors.EVENT_READ)
                    sel.register(upstream, selectors.EVENT_READ)
                    continue
                if self.frozen.is_set():
                    continue  # nothing moves: the bytes wait in the kernel's buffers
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                other = peers.get(sock)
                if not data or other is None:
                    for s in (sock, other):
                        if s is not None and s in peers:
                            sel.unregister(s)
                            peers.pop(s, None)
                            s.close()
                    continue
                other.sendall(data)
        for s in list(peers):
            s.close()
        self._listener.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@contextmanager
def freezable(target_dsn: str) -> Iterator[FreezableRelay]:
    relay = FreezableRelay(target_dsn)
    try:
        yield relay
    finally:
        relay.stop()
