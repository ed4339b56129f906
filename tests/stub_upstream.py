"""A scripted raw-HTTP upstream for byte-exact tests: it sends exactly the chunks a test gives it.

The fake upstream speaks the API; this one lets a test control the bytes on the wire (odd chunk
boundaries, pauses between chunks) and know when the proxy let go of the connection.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Script:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    pause_s: float = 0.0
    gate: threading.Event | None = None  # when set, the stub waits for it before the last chunk


class StubUpstream:
    def __init__(self) -> None:
        self.script = Script()
        self.requests: list[bytes] = []
        self.closed_early = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                await self._respond(writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _respond(self, writer: asyncio.StreamWriter) -> None:
        s = self.script
        lines = [f"HTTP/1.1 {s.status} OK", "transfer-encoding: chunked"] + [f"{k}: {v}" for k, v in s.headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        for i, chunk in enumerate(s.chunks):
            if s.gate is not None and i == len(s.chunks) - 1:
                await asyncio.get_running_loop().run_in_executor(None, s.gate.wait, 10)
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            try:
                await writer.drain()
            except ConnectionError:
                self.closed_early.set()
                raise
            if s.pause_s:
                await asyncio.sleep(s.pause_s)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    def start(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, sock=sock))
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(5)

    def stop(self) -> None:
        def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(shutdown)


@contextmanager
def stub_upstream() -> Iterator[StubUpstream]:
    stub = StubUpstream()
    stub.start()
    try:
        yield stub
    finally:
        stub.stop()
