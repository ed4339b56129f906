"""The worker's in-process request counters since start, shown by /health."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ProxyStats:
    """In-process counters since start, shown by /health."""

    requests: int = 0
    streams: int = 0
    upstream_errors: int = 0
    client_disconnects: int = 0
    proxy_errors: int = 0
    refused: int = 0
    aborted_uploads: int = 0
