"""Relaying: the upstream's answer sent to the client as it arrives (`nexus.proxy.relay`), the upstream
response closed whatever happens, and the worker's counters told how it went."""

from __future__ import annotations

import time
from typing import Any

from nexus.proxy.forward import OpenResponse
from nexus.proxy.phases.exchange import Exchange
from nexus.proxy.relay import relay
from nexus.proxy.stats import ProxyStats


async def relay_exchange(
    proto: Any, opened: OpenResponse, ex: Exchange, stats: ProxyStats, *, idle_timeout_s: float, body_timeout_s: float
) -> None:
    """Send the answer; `ex.outcome` says what went back, `ex.relayed` when the relay ended."""
    try:
        await relay(
            proto,
            opened,
            ex.record.request_id,
            idle_timeout_s=idle_timeout_s,
            body_timeout_s=body_timeout_s,
            outcome=ex.outcome,
            extra_headers=ex.arrival.extra,
        )
    finally:
        await opened.close()
    ex.relayed = time.monotonic()
    count(stats, ex)


def count(stats: ProxyStats, ex: Exchange) -> None:
    """A stream relayed, and an answer that is an error (a status >= 400, or a stream that broke)."""
    outcome = ex.outcome
    if outcome.streamed:
        stats.streams += 1
    if outcome.status >= 400 or outcome.error:
        stats.upstream_errors += 1
