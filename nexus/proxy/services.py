"""The long-lived services of one proxy worker, built once from the settings and closed in reverse.

A worker needs an event loop before it can open connections, so these are built in `__rsgi_init__`
(not in `ProxyApp.__init__`) and closed in `__rsgi_del__`. Building them in one place, in one order,
makes the closing order the reverse of it, and keeps the settings arithmetic out of the request path:
what depends on what is read here top to bottom.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from nexus.conversations.build import build_conversations
from nexus.conversations.service import ConversationService, LookupPool
from nexus.conversations.shared import SharedConversationService
from nexus.observability import metrics as prom
from nexus.observability.tracing import Tracer, build_tracer
from nexus.proxy.upstream import Upstream
from nexus.settings import Settings
from nexus.storage.writer import StorageWriter, build_writer


@dataclass(slots=True)
class Services:
    """What one worker opens once and shares between its requests."""

    upstream: Upstream
    #: None when storage is off (no database): nothing is stored and nothing is linked.
    writer: StorageWriter | None = None
    #: None when no OTLP endpoint is set.
    tracer: Tracer | None = None
    lookup_pool: LookupPool | None = None
    conversations: ConversationService | None = None

    def _link(self, s: Settings) -> None:
        """The conversation service and its database pool (storage on only: links are stored rows)."""
        self.conversations, self.lookup_pool = build_conversations(s)  # LINK_SHARED: off, auto (solo lease), on

    def close(self, loop: asyncio.AbstractEventLoop, can_run: bool) -> None:
        """Close in the reverse order of `build_services`: linking first (its last shared writes, then its
        pool), then tracing, then storage (which flushes or spools what it holds), the upstream last.
        `can_run` is False when the loop can no longer run coroutines: only the synchronous steps run."""
        if isinstance(self.conversations, SharedConversationService) and can_run:
            loop.run_until_complete(self.conversations.drain())  # what replies added, for other workers
        if self.lookup_pool is not None and can_run:
            loop.run_until_complete(self.lookup_pool.close())
        if self.tracer is not None:
            self.tracer.shutdown()
        if self.writer is not None:
            self.writer.close()  # graceful shutdown flushes (or spools) everything queued
        if can_run:
            loop.run_until_complete(self.upstream.close())


def build_services(settings: Settings, *, storage_metrics: bool) -> Services:
    """Open the worker's services in dependency order: the upstream client, storage (started, so rows
    queue from the first request), tracing, and conversation linking, which needs storage.
    `storage_metrics`: the writer reports its batches to the shared metrics (METRICS_ENABLED)."""
    s = settings
    services = Services(Upstream(s))
    services.writer = build_writer(s, prom.storage_batch if storage_metrics else None)
    services.tracer = build_tracer(s.otel_exporter_otlp_endpoint, s.otel_service_name, s.claude_api_base_url)
    if services.writer is not None:
        services.writer.start()
        services._link(s)
    return services
