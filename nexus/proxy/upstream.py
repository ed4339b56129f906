"""The one shared, pooled HTTP client that talks to the upstream API.

pyreqwest was chosen by measurement (bench/upstream_clients.py; about 1.6x aiohttp's throughput at
concurrency 32 on this kind of machine). Kept behind this module so it can be swapped. Two settings
matter for a proxy: the streamed read buffer is 0, so each chunk is handed over the moment it arrives
(the default 64 KiB buffer held SSE back and hid client disconnects), and automatic decompression is
off, so the bytes the client gets are the bytes upstream sent.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import (
    ConnectError,
    ConnectTimeoutError,
    NetworkError,
    PoolTimeoutError,
    ReadError,
    RequestError,
)
from pyreqwest.response import Response

from nexus.proxy.paths import join_upstream

if TYPE_CHECKING:
    from pyreqwest.request import StreamRequest

    from nexus.settings import Settings

__all__ = [
    "ConnectError",
    "ConnectTimeoutError",
    "NetworkError",
    "PoolTimeoutError",
    "ReadError",
    "RequestError",
    "Response",
    "Upstream",
]


class Upstream:
    """The upstream base URL and the pooled client for it; one per worker process."""

    def __init__(self, settings: Settings) -> None:
        self.base_url = settings.claude_api_base_url
        self._client: Client = (
            ClientBuilder()
            .gzip(False)
            .brotli(False)
            .zstd(False)
            .deflate(False)
            .follow_redirects(False)
            .connect_timeout(timedelta(milliseconds=settings.upstream_connect_timeout_ms))
            .pool_max_idle_per_host(settings.upstream_pool_max_idle)
            .pool_idle_timeout(timedelta(seconds=50))
            .tcp_nodelay(True)
            .http1_lower_case_headers()
            .tcp_keepalive(timedelta(seconds=30))
            .build()
        )

    def request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None) -> StreamRequest:
        """A streamed request to `base_url + target`; enter it to get the response head."""
        url = join_upstream(self.base_url, target)
        builder = self._client.request(method, url).headers(headers).streamed_read_buffer_limit(0)
        if body:
            builder = builder.body_bytes(body)
        return builder.build_streamed()

    async def close(self) -> None:
        await self._client.close()
