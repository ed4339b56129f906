"""The stack's floor: the least a Granian RSGI + pyreqwest forwarder can do (read, forward, reply).

The overhead harness measures it beside Nexus in the same run, so Nexus's own cost (checks, headers,
retries, observation) is the gap between the two, and the rest is the stack and the extra hop.
Run by the harness as `granian --interface rsgi bench.floor_proxy:app` with FLOOR_UPSTREAM set.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from granian.rsgi import ProtocolClosed
from pyreqwest.client import Client, ClientBuilder

UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "http://127.0.0.1:8123")
DROP = frozenset({"host", "content-length"})


class FloorProxy:
    client: Client

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.client = ClientBuilder().gzip(False).build()

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.path == "/health":
            proto.response_bytes(200, [], b"ok")
            return
        body = await proto()
        headers = [(k, v) for k, v in scope.headers.items() if k not in DROP]
        request = self.client.post(UPSTREAM + scope.path).headers(headers).body_bytes(body)
        async with request.streamed_read_buffer_limit(0).build_streamed() as resp:
            reader = resp.body_reader
            transport = proto.response_stream(resp.status, [("content-type", resp.get_header("content-type") or "")])
            try:
                while (chunk := await reader.read_chunk()) is not None:
                    await transport.send_bytes(bytes(chunk))
            except ProtocolClosed:
                pass  # wrk closed the connection mid-response at the end of a run: nothing to send to


app = FloorProxy()
