"""Recording: what one request leaves behind once it has ended, however it ended.

The token counters (`/token-stats`), the row storage keeps (completed from the relay's outcome, stored
once its link lookup has settled, so the row carries its final link), and the integrations (Slack,
telemetry). A request the proxy refused itself is stored too, with the reason, so it shows up like
any other. Metrics and the trace are read from the same `Exchange` by `ProxyApp._observe`.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any
from urllib.parse import unquote

from nexus.auth.projects import DEFAULT_PROJECT, resolve_project
from nexus.conversations.classify import classify
from nexus.conversations.service import ConversationService
from nexus.errors import ProxyError
from nexus.integrations.hub import Integrations
from nexus.observability.recorder import RequestMetrics
from nexus.proxy.phases.exchange import Exchange
from nexus.proxy.recording import complete_record
from nexus.proxy.relay import Outcome
from nexus.storage.records import ExchangeRecord
from nexus.storage.writer import StorageWriter
from nexus.usage.counters import TokenCounters


def count_tokens(ex: Exchange, counters: TokenCounters, headers: Any) -> None:
    """The tokens of a `/v1/messages` answer, by project and request kind (`ex.tokens`)."""
    if not ex.is_messages:
        return
    record = ex.record
    kind = record.request_type or classify(ex.path, ex.admitted.analysis, headers.get("x-claude-code-agent-id"))
    ex.tokens = counters.observe(ex.admitted.auth.project_id, ex.outcome, kind)


def store(
    record: ExchangeRecord,
    outcome: Outcome,
    started: float,
    writer: StorageWriter,
    conversations: ConversationService | None,
    metrics: RequestMetrics | None,
    finishing: set[asyncio.Task[None]],
) -> None:
    """Complete the record from the outcome and hand it to storage; a record whose link lookup has not
    answered yet waits for it in a task kept in `finishing` (the worker waits for those on exit)."""
    complete_record(record, outcome, started)
    if conversations is not None:
        ok = record.response_status == 200 and record.outcome == "completed"
        record.task_prompt_keys = conversations.complete(record.request_id, record.link, ok, record.reply) or None
        if conversations.pending(record.request_id) is not None:
            task = asyncio.ensure_future(submit_settled(record, conversations, writer, metrics))
            finishing.add(task)
            task.add_done_callback(finishing.discard)
            return
        if metrics is not None and record.link is not None:
            metrics.count("link_decisions", record.link.evidence)
    writer.submit(record)


async def submit_settled(
    record: ExchangeRecord, conversations: ConversationService, writer: StorageWriter, metrics: RequestMetrics | None
) -> None:
    """Store a record once the database lookup for its link has answered (or given up)."""
    record.link = await conversations.settle(record.request_id, record.link)
    if metrics is not None and record.link is not None:
        metrics.count("link_decisions", record.link.evidence)
    writer.submit(record)


def notify(ex: Exchange, integrations: Integrations, stored: bool) -> None:
    """Hand the finished record to the integrations; with storage off (`stored` False) the record was
    not completed by `store`, so it is completed here."""
    record = ex.record
    if not stored:
        record.analysis = ex.admitted.analysis
        complete_record(record, ex.outcome, ex.started)
    integrations.finished(record)


def refusal_record(
    scope: Any, request_id: str, started_us: int, body: bytes | None, error: ProxyError, default_project: str | None
) -> ExchangeRecord:
    """The row of a request the proxy answered itself: the project its headers name (the default when
    they name none or a bad one), the path with a client key sent in it redacted, and the reason."""
    header_items = scope.headers.items()
    try:
        project = resolve_project(dict(header_items), None, default_project)
    except ProxyError:
        project = default_project or DEFAULT_PROJECT
    target = unquote(scope.path + ("?" + scope.query_string if scope.query_string else ""))
    if error.secret:
        target = re.sub(re.escape(error.secret), "[redacted]", target, flags=re.IGNORECASE)
    record = ExchangeRecord(request_id, started_us, project, None, scope.method, target[:2048], header_items, body)
    record.outcome, record.response_status, record.error = "refused", error.status, error.message
    record.duration_ms = max(0, int(time.time() * 1000 - started_us / 1000))
    return record
