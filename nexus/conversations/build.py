"""The proxy's linking service, as `LINK_SHARED` and the deployment ask (docs/scaling.md)."""

from __future__ import annotations

from nexus.conversations.index import LinkIndex
from nexus.conversations.lease import SoloLease
from nexus.conversations.linker import Linker
from nexus.conversations.service import ConversationService, LookupPool
from nexus.conversations.shared import SHARED_OPTIONS, SharedConversationService
from nexus.settings import Settings


def build_conversations(s: Settings) -> tuple[ConversationService, LookupPool]:
    """off: each worker links from its own memory. on: every decision from the shared tables. auto: from
    memory while this process is the only one linking against the database (the solo lease), shared from
    the moment another appears. `on` holds the lease too, so that an `auto` process never thinks itself alone."""
    assert s.database_url is not None  # linking with a database only
    timeout_s = s.link_lookup_timeout_s
    if s.link_shared == "off":
        pool = LookupPool(s.database_url, s.link_lookup_timeout_ms)
        service = ConversationService(
            Linker(LinkIndex(s.link_index_size)),
            pool,
            lookup_timeout_s=timeout_s,
            lookback_days=s.link_lookback_days,
            flush_wait_s=s.storage_batch_interval_s + 0.03 if s.proxy_workers > 1 else 0.0,
        )
        return service, pool
    pool = LookupPool(s.database_url, s.link_lookup_timeout_ms, size=4, options=SHARED_OPTIONS)
    auto = s.link_shared == "auto"
    shared = SharedConversationService(
        # alone, memory decides (the whole index); shared, it only decides while the database is away
        Linker(LinkIndex(s.link_index_size if auto else 1000)),
        pool,
        lookup_timeout_s=timeout_s,
        lookback_days=s.link_lookback_days,
        lease=SoloLease(s.database_url, may_be_solo=auto),
    )
    return shared, pool
