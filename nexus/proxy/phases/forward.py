"""Forwarding: the upstream opened within the server limit, and what the client gets when it fails.

The server limit (PROXY_SERVER_TIMEOUT) covers everything until the response head arrives, retries and
the OAuth replay included; once the head is there a stream may run as long as it keeps sending (the
relay's idle limit takes over). The client leaving cancels the request task at once, which drops the
upstream connection, so an abandoned generation stops costing tokens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from nexus.auth.service import RequestAuthorizer
from nexus.conversations.service import ConversationService
from nexus.conversations.shared import SharedConversationService
from nexus.errors import ProxyError
from nexus.proxy.deadline import Deadline
from nexus.proxy.drain import is_shutdown
from nexus.proxy.forward import OpenResponse, open_upstream
from nexus.proxy.phases import credential
from nexus.proxy.phases.exchange import Exchange
from nexus.proxy.recording import SHUTDOWN_ERROR
from nexus.proxy.retry import RetryPolicy
from nexus.proxy.upstream import Upstream

log = logging.getLogger("nexus.proxy")

#: The failures `failure` maps; anything else propagates untouched.
FAILURES = (TimeoutError, ProxyError, asyncio.CancelledError)


def watch_client(proto: Any, ex: Exchange, task: asyncio.Task[Any] | None = None) -> asyncio.Future[None]:
    """Cancel the request task (`task`, by default the running one) the moment its client disconnects
    (until `ex.done`); the caller cancels the returned watcher when the request ends. Granian's
    `client_disconnect()` is a future already, so this costs a callback, not a task."""
    if task is None:
        task = asyncio.current_task()
    watcher = asyncio.ensure_future(proto.client_disconnect())

    def on_disconnect(fut: asyncio.Future[None]) -> None:
        if not fut.cancelled() and not ex.done and task is not None:
            ex.disconnected = True
            task.cancel()

    watcher.add_done_callback(on_disconnect)
    return watcher


async def open_exchange(
    ex: Exchange,
    upstream: Upstream,
    policy: RetryPolicy,
    authorizer: RequestAuthorizer,
    conversations: ConversationService | None,
    *,
    server_timeout_s: float,
    head_timeout_s: float,
    on_retry: Callable[[str], None] | None,
) -> OpenResponse:
    """The upstream response with its head received, after retries (`nexus.proxy.forward`) and at most
    one replay with a refreshed OAuth token; `TimeoutError` past the server limit."""
    admitted = ex.admitted
    auth, target, body, method = admitted.auth, admitted.target, admitted.body, ex.record.method
    with Deadline(server_timeout_s) as server_deadline:  # a loop timer per request cost ~4 us
        opened = await open_upstream(upstream, policy, method, target, auth.headers, body, head_timeout_s, on_retry)
        attempts = opened.attempts
        if credential.replayable(authorizer, auth, opened.response.status):
            await opened.close()  # a refused OAuth token: refreshed once, the request sent once more
            headers = await credential.refreshed_headers(authorizer, auth)
            opened = await open_upstream(upstream, policy, method, target, headers, body, head_timeout_s, on_retry)
            attempts += opened.attempts
        ex.record.attempts = attempts
        if isinstance(conversations, SharedConversationService):
            if opened.response.status != 200:
                await conversations.failed(ex.record.request_id)  # before the client can retry it anywhere
            else:  # before the client can send what follows this answer to another instance
                await conversations.committed(ex.record.request_id)
        server_deadline.disarm()  # the response has started: streams may run long
    return opened


def failure(exc: BaseException, ex: Exchange, *, server_timeout_s: float, drain_expired: bool) -> BaseException | None:
    """What forwarding or relaying ending in `exc` means for the client and for the record.

    Returns the exception the client's request must end with (`exc` itself when it is not ours to
    map), or None when the request ends quietly: the client left (nobody to answer), or the shutdown
    deadline ended a response whose head was already sent (the stream carries the error).
    A request cancelled here and ended quietly is uncancelled, so the phases after it still run.
    """
    record, outcome = ex.record, ex.outcome
    if isinstance(exc, TimeoutError):
        record.outcome, record.response_status = "timeout", 504
        return ProxyError(
            504, f"No upstream response within the server limit of {server_timeout_s:g} s.", "timeout_error"
        )
    if isinstance(exc, ProxyError):
        record.outcome, record.response_status, record.error = "proxy_error", exc.status, exc.message
        record.attempts = exc.attempts or record.attempts
        return exc
    if not isinstance(exc, asyncio.CancelledError):
        return exc
    task = asyncio.current_task()
    if ex.disconnected:
        task.uncancel()  # type: ignore[union-attr]
        record.outcome = "client_disconnected"
        log.info("client disconnected; upstream request %s cancelled", record.request_id)
        return None
    if is_shutdown(exc) or drain_expired:
        task.uncancel()  # type: ignore[union-attr]
        record.outcome, record.error = "shutdown", SHUTDOWN_ERROR
        outcome.error = outcome.error or "shutdown"
        if not outcome.status:  # nothing sent yet: an answer the client's SDK retries
            record.response_status = 503
            return ProxyError(503, "The gateway is shutting down; retry the request.", "overloaded_error")
        return None
    return exc
