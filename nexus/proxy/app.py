"""The proxy's RSGI application: routing and the life of one request.

Handlers stay thin: reading and checking the body (`body`), the upstream target (`paths`), choosing
headers (`headers`), opening the upstream with retries (`forward`) and relaying the answer (`relay`)
each live in their own module; who may read data, guess keys or call from a web page lives in
`nexus.security`. A request the proxy refuses itself is answered in Anthropic's error shape and
stored with the reason, like every other request. A client that goes away cancels the request task
at once, which drops the upstream connection, so an abandoned generation stops costing tokens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

import orjson

from nexus import __version__
from nexus._core import NexusCoreError, RequestAnalysis, analyze_request
from nexus.analysis import marker as analysis_marker
from nexus.api import openapi, token_stats
from nexus.api.params import check_query
from nexus.api.routes import ApiRoutes, dump_json
from nexus.auth.errors import ClientKeyError
from nexus.auth.projects import ACCOUNT_HEADERS, DEFAULT_PROJECT, PROJECT_HEADERS, resolve_project
from nexus.auth.service import Authorization, RequestAuthorizer, holds_secret
from nexus.conversations.classify import classify
from nexus.conversations.index import LinkIndex
from nexus.conversations.linker import Link, Linker
from nexus.conversations.service import ConversationService, LookupPool, link_request
from nexus.conversations.shared import SHARED_OPTIONS, SharedConversationService
from nexus.errors import ProxyError
from nexus.ids import new_request_id
from nexus.integrations.hub import Integrations, build_integrations, credential_slack
from nexus.observability import logs, recorder
from nexus.observability import metrics as prom
from nexus.observability.tracing import RequestFacts, Tracer, build_tracer
from nexus.proxy import probes
from nexus.proxy.body import ClientGone, UploadGuard, check_json_content_type, read_body
from nexus.proxy.client_setup import PREFIX as CLIENT_SETUP_PREFIX
from nexus.proxy.client_setup import ClientSetup
from nexus.proxy.drain import Drain, is_shutdown
from nexus.proxy.forward import open_upstream
from nexus.proxy.headers import ANALYSIS_MARK, upstream_request_headers
from nexus.proxy.paths import FORWARDED_METHODS, upstream_target
from nexus.proxy.recording import SHUTDOWN_ERROR, complete_record
from nexus.proxy.relay import Outcome, relay
from nexus.proxy.retry import RetryPolicy
from nexus.proxy.upstream import Upstream
from nexus.security.access import DataAccess
from nexus.security.cors import CorsPolicy
from nexus.security.throttle import FailureThrottle
from nexus.settings import Settings, get_settings
from nexus.storage import querylog
from nexus.storage.records import ExchangeRecord
from nexus.storage.writer import StorageWriter, build_writer
from nexus.usage.counters import TokenCounters

if TYPE_CHECKING:
    from nexus.mcp.endpoint import McpEndpoint

log = logging.getLogger("nexus.proxy")

JSON_HEADERS = [("content-type", "application/json")]
#: Largest body of an `/api/*` POST (an analysis request is a few hundred bytes).
API_BODY_LIMIT = 64 * 1024
ANALYSIS_TYPE = analysis_marker.REQUEST_TYPE
SELECTOR_HEADERS = PROJECT_HEADERS + ACCOUNT_HEADERS


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


@dataclass(slots=True)
class Admitted:
    """A request that passed every check the proxy makes before forwarding."""

    auth: Authorization
    target: str
    body: bytes | None
    analysis: RequestAnalysis | None
    #: Seconds spent waiting for the client's body (not the proxy's own time).
    upload_s: float = 0.0
    #: The analysis job whose worker sent this request (its mark checked), kept out of conversations.
    analysis_job: int | None = None


class ProxyApp:
    """One instance per worker process; Granian calls `__rsgi_init__` once the loop exists."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        s = self.settings
        self.policy = RetryPolicy(
            max_attempts=s.upstream_max_attempts,
            base_delay_s=s.upstream_retry_base_delay_ms / 1000,
            max_delay_s=s.upstream_retry_max_delay_ms / 1000,
            budget_s=s.upstream_retry_budget_ms / 1000,
        )
        self.head_timeout_s = s.claude_api_timeout / 1000
        self.idle_timeout_s = s.stream_idle_timeout_ms / 1000
        self.server_timeout_s = s.proxy_server_timeout / 1000
        self.body_idle_s = s.body_read_idle_timeout_ms / 1000
        self.body_total_s = s.body_read_timeout_ms / 1000
        self.upstream: Upstream | None = None
        self.writer: StorageWriter | None = None
        self.conversations: ConversationService | None = None
        self.lookup_pool: LookupPool | None = None
        self._finishing: set[asyncio.Task[None]] = set()
        self.api = ApiRoutes(s.database_url, pool_size=s.db_pool_size, connect_kwargs=querylog.pool_kwargs(s))
        self.throttle = FailureThrottle(s.auth_failure_limit, s.auth_failure_window_ms / 1000)
        self.data_access = DataAccess(s.dashboard_api_key, self.throttle, s.trusted_proxy_networks)
        self.cors = CorsPolicy(s.cors_origins)
        # a quarter of the worker's request slots may be held by slow uploads before everyone's new
        # uploads must be quick: the other three quarters stay for normal requests
        self.uploads = UploadGuard(s.slow_uploads_per_client, max(s.slow_uploads_per_client, s.proxy_backpressure // 4))
        self.authorizer = RequestAuthorizer(s)
        self.stats = ProxyStats()
        self.token_counters = TokenCounters()
        self.started_at = time.time()
        self.metrics = recorder.RequestMetrics(s.metrics_label_limit) if s.metrics_enabled else None
        self.tracer: Tracer | None = None
        self.drain = Drain(s.shutdown_timeout_ms / 1000)
        self._flush_timer: asyncio.TimerHandle | None = None
        self.client_setup = ClientSetup(s)
        self.mcp: McpEndpoint | None = None
        if s.mcp_enabled:
            from nexus.mcp.endpoint import McpEndpoint  # only loaded (with YAML and Handlebars) when enabled

            self.mcp = McpEndpoint(s, self.authorizer.client_keys, self.throttle, self.data_access, self._check_origin)
        #: Slack, telemetry, test samples (nexus/integrations); None when none is configured.
        self.integrations: Integrations | None = build_integrations(
            s, credential_slack(self.authorizer.store, self.authorizer.db)
        )

    # --- RSGI protocol -----------------------------------------------------------------------
    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        s = self.settings
        logs.configure(s.log_format, "nexus-proxy", debug=s.debug, level=s.log_level)
        self.drain.install(loop)
        self.upstream = Upstream(self.settings)
        self.writer = build_writer(self.settings, prom.storage_batch if self.metrics is not None else None)
        self.tracer = build_tracer(s.otel_exporter_otlp_endpoint, s.otel_service_name, s.claude_api_base_url)
        if self.metrics is not None:
            self._flush_timer = loop.call_later(1.0, self._flush_metrics, loop)
        if self.mcp is not None:
            loop.call_soon(self.mcp.start)
        if self.integrations is not None:
            self.integrations.start()
        if self.writer is not None:
            self.writer.start()
            s = self.settings
            assert s.database_url is not None  # a writer exists only with a database
            if s.link_shared != "off":  # every worker of every instance decides from the same state
                self.lookup_pool = LookupPool(s.database_url, s.link_lookup_timeout_ms, size=4, options=SHARED_OPTIONS)
                self.conversations = SharedConversationService(
                    Linker(LinkIndex(1000)),  # only decides while the database is away
                    self.lookup_pool,
                    lookup_timeout_s=s.link_lookup_timeout_ms / 1000,
                    lookback_days=s.link_lookback_days,
                )
            else:
                self.lookup_pool = LookupPool(s.database_url, s.link_lookup_timeout_ms)
                self.conversations = ConversationService(
                    Linker(LinkIndex(s.link_index_size)),
                    self.lookup_pool,
                    lookup_timeout_s=s.link_lookup_timeout_ms / 1000,
                    lookback_days=s.link_lookback_days,
                    flush_wait_s=(s.storage_batch_interval_ms + 30) / 1000 if s.proxy_workers > 1 else 0.0,
                )

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        upstream, self.upstream = self.upstream, None
        if self.mcp is not None:
            self.mcp.stop()
        self.authorizer.close()
        can_run = not loop.is_closed() and not loop.is_running()
        if self._finishing and can_run:  # records waiting on a link lookup are stored, settled or not
            loop.run_until_complete(asyncio.wait(self._finishing, timeout=5))
        if isinstance(self.conversations, SharedConversationService) and can_run:
            loop.run_until_complete(self.conversations.drain())  # what replies added, for other workers
        if self.writer is not None:
            self.writer.close()  # graceful shutdown flushes (or spools) everything queued
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        if self.metrics is not None:
            self.metrics.flush(self.writer, ready=False)  # the last requests and rows, then this worker leaves
            prom.worker_exit()
        if self.tracer is not None:
            self.tracer.shutdown()
        if self.integrations is not None and can_run:  # what is queued gets a few seconds to go out
            loop.run_until_complete(self.integrations.close())
        if upstream is not None and can_run:
            loop.run_until_complete(upstream.close())
            loop.run_until_complete(self.api.close())
            if self.lookup_pool is not None:
                loop.run_until_complete(self.lookup_pool.close())

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        now_ns = time.time_ns()
        request_id = new_request_id(now_ns // 1_000_000)
        logs.request_id.set(request_id)  # every log line of this request's task (and its tasks) carries it
        path: str = scope.path
        method: str = scope.method
        extra: list[tuple[str, str]] = []
        try:
            if path.startswith("/v1/"):
                origin = scope.headers.get("origin")
                if origin is not None and self.cors.allows(origin):
                    if method == "OPTIONS":
                        proto.response_empty(204, [*self.cors.preflight_headers(origin), ("x-request-id", request_id)])
                        return
                    extra = self.cors.response_headers(origin)
                elif method == "OPTIONS":  # a preflight from an origin not allowed: no grants
                    proto.response_empty(204, [("allow", "GET, POST, OPTIONS"), ("x-request-id", request_id)])
                    return
                await self._proxy(scope, proto, request_id, path, method, now_ns // 1000, extra)
            elif path.startswith("/health") and method == "GET":
                self._health(path, proto, request_id, now_ns)
            elif path == "/metrics" and method == "GET" and self.metrics is not None:
                self._guard_data(scope)
                self._metrics_page(proto, request_id)
            elif path == "/token-stats" and method == "GET":
                self._guard_data(scope)
                self._token_stats(scope, proto, request_id)
            elif path == "/mcp" and self.mcp is not None:
                await self.mcp.handle(scope, proto, request_id)
            elif path.startswith(CLIENT_SETUP_PREFIX) and method == "GET":
                self.client_setup.handle(scope, proto, request_id)
            elif path == "/openapi.json" and method == "GET":
                proto.response_bytes(200, [*JSON_HEADERS, ("x-request-id", request_id)], openapi.document_bytes())
            elif path == "/" and method == "GET":
                self._respond_json(proto, 200, self.descriptor(), request_id)
            elif path.startswith("/api/event_logging/") or path == "/api/hello":
                # Claude Code's own telemetry (acknowledged and dropped, never forwarded) and its
                # connectivity probe (`HEAD /api/hello` when interactive mode starts).
                self._respond_json(proto, 200, {"status": "ok"}, request_id)
            elif path.startswith("/api/"):
                self._guard_data(scope)
                if self.mcp is not None and path.startswith("/api/mcp/"):
                    if method != "GET":  # `POST /api/mcp/sync` changes state: same rule as the other POSTs
                        self._check_origin(scope.headers)
                    await self.mcp.api(scope, proto, request_id)
                else:
                    posts = method == "POST" and self.api.accepts_post(path)
                    body = await self._api_body(scope, proto) if posts else None
                    await self.api.handle(scope, proto, request_id, body)
            else:
                error = ProxyError(404, f"No route for {method} {path[:200]}.", "not_found_error")
                self._store_refusal(scope, request_id, now_ns // 1000, None, error)
                if self.metrics is not None:
                    self.metrics.finished("unmatched", 404, None, "none", False, 0.0)
                raise error
        except ProxyError as exc:
            self.stats.proxy_errors += 1
            headers = [*JSON_HEADERS, *exc.headers, ("x-request-id", request_id), *extra]
            proto.response_bytes(exc.status, headers, exc.body(request_id))
        except ClientGone:
            self.stats.aborted_uploads += 1
            log.info("client closed the connection before its request body was complete (request %s)", request_id)

    async def _api_body(self, scope: Any, proto: Any) -> bytes:
        """The JSON body of an `/api/*` POST (it queues paid work): no web page of another origin may
        send it (a JSON content type needs a CORS preflight, which is never granted), and it is small."""
        self._check_origin(scope.headers)
        check_json_content_type(scope.headers.get("content-type"))
        return await read_body(
            proto,
            scope.headers.get("content-length"),
            API_BODY_LIMIT,
            idle_s=self.body_idle_s,
            total_s=self.body_total_s,
            upload=None,
        )

    def _guard_data(self, scope: Any) -> None:
        """The data rule (`nexus.security.access`): stored prompts are for whoever holds the key, or
        for this machine only when no key is set."""
        decision = self.data_access.decide(scope.client, scope.headers, authority=scope.authority)
        if not decision.allowed:
            headers = [("retry-after", str(decision.retry_after))] if decision.retry_after else []
            if decision.status == 401:
                headers.append(("www-authenticate", 'Bearer realm="nexus"'))
            raise ProxyError(decision.status, decision.reason, headers=headers)

    # --- the proxied request -----------------------------------------------------------------
    async def _proxy(
        self,
        scope: Any,
        proto: Any,
        request_id: str,
        path: str,
        method: str,
        started_us: int,
        extra: list[tuple[str, str]],
    ) -> None:
        assert self.upstream is not None, "__rsgi_init__ was not called"
        self.stats.requests += 1
        arrived = time.monotonic()
        task = asyncio.current_task()
        assert task is not None
        self.drain.tasks.add(task)
        if self.metrics is not None:
            self.metrics.in_flight += 1
        span = (
            self.tracer.start_request(method, path, scope.headers, started_us * 1000, request_id)
            if self.tracer
            else None
        )
        try:
            await self._forward(scope, proto, request_id, path, method, started_us, extra, arrived, span)
        finally:
            self.drain.tasks.discard(task)
            if self.metrics is not None:
                self.metrics.in_flight -= 1

    async def _forward(
        self,
        scope: Any,
        proto: Any,
        request_id: str,
        path: str,
        method: str,
        started_us: int,
        extra: list[tuple[str, str]],
        arrived: float,
        span: Any,
    ) -> None:
        headers = scope.headers
        upstream, tracer = self.upstream, self.tracer
        assert upstream is not None
        try:
            admitted = await self._admit(scope, proto, path, method)
        except ProxyError as exc:
            self._store_refusal(scope, request_id, started_us, getattr(exc, "body_read", None), exc)
            self._refused(path, exc.status, arrived, span)
            raise
        except BaseException:
            self._refused(path, 499, arrived, span)  # the upload was abandoned (or the worker stops)
            raise
        auth, body, analysis = admitted.auth, admitted.body, admitted.analysis
        is_messages = path == "/v1/messages"
        header_items = headers.items()
        model = analysis.model if analysis is not None else None
        if tracer is not None:
            tracer.set_model(span, path, model)

        outcome = Outcome()
        started = time.monotonic()
        record = ExchangeRecord(
            request_id, started_us, auth.project_id, auth.account_id, method, admitted.target, header_items, body
        )
        if admitted.analysis_job is not None:  # the analysis worker's request: never a conversation turn
            record.analysis, record.request_type, record.link = analysis, ANALYSIS_TYPE, Link(ANALYSIS_TYPE)
        elif self.conversations is not None:
            req = link_request(request_id, auth.project_id, started_us / 1e6, path, headers, analysis)
            record.analysis, record.request_type = analysis, req.request_type
            record.link = await self.conversations.link(req)
        task = asyncio.current_task()
        watcher = asyncio.ensure_future(proto.client_disconnect())
        state = {"done": False, "disconnected": False}

        def on_disconnect(fut: asyncio.Future[None]) -> None:
            if not fut.cancelled() and not state["done"] and task is not None:
                state["disconnected"] = True
                task.cancel()

        watcher.add_done_callback(on_disconnect)
        to_upstream = time.monotonic()
        relayed: float | None = None
        upstream_span = tracer.start_upstream(span, method, time.time_ns()) if tracer is not None else None
        on_retry = self._count_retry if self.metrics is not None else None
        tokens: tuple[int, int, int, int] | None = None
        try:
            async with asyncio.timeout(self.server_timeout_s) as server_deadline:
                opened = await open_upstream(
                    upstream,
                    self.policy,
                    method,
                    admitted.target,
                    auth.headers,
                    body,
                    self.head_timeout_s,
                    on_retry,
                )
                attempts = opened.attempts
                if opened.response.status == 401 and self.authorizer.refreshable(auth):
                    await opened.close()  # a refused OAuth token: refreshed once, the request sent once more
                    retry = await self.authorizer.after_unauthorized(auth)
                    opened = await open_upstream(
                        upstream,
                        self.policy,
                        method,
                        admitted.target,
                        retry.headers,
                        body,
                        self.head_timeout_s,
                        on_retry,
                    )
                    attempts += opened.attempts
                record.attempts = attempts
                if opened.response.status != 200 and isinstance(self.conversations, SharedConversationService):
                    await self.conversations.failed(request_id)  # before the client can retry it anywhere
                server_deadline.reschedule(None)  # the response has started: streams may run long
            try:
                await relay(
                    proto,
                    opened,
                    request_id,
                    idle_timeout_s=self.idle_timeout_s,
                    body_timeout_s=self.head_timeout_s,
                    outcome=outcome,
                    extra_headers=extra,
                )
            finally:
                await opened.close()
            relayed = time.monotonic()
            if outcome.streamed:
                self.stats.streams += 1
            if outcome.status >= 400 or outcome.error:
                self.stats.upstream_errors += 1
        except TimeoutError:
            record.outcome, record.response_status = "timeout", 504
            raise ProxyError(
                504, f"No upstream response within the server limit of {self.server_timeout_s:g} s.", "timeout_error"
            ) from None
        except ProxyError as exc:
            record.outcome, record.response_status, record.error = "proxy_error", exc.status, exc.message
            record.attempts = exc.attempts or record.attempts
            raise
        except asyncio.CancelledError as exc:
            if state["disconnected"]:
                task.uncancel()  # type: ignore[union-attr]
                record.outcome = "client_disconnected"
                self.stats.client_disconnects += 1
                log.info("client disconnected; upstream request %s cancelled", request_id)
            elif is_shutdown(exc) or self.drain.expired:
                task.uncancel()  # type: ignore[union-attr]
                record.outcome, record.error = "shutdown", SHUTDOWN_ERROR
                outcome.error = outcome.error or "shutdown"
                if not outcome.status:  # nothing sent yet: an answer the client's SDK retries
                    record.response_status = 503
                    raise ProxyError(
                        503, "The gateway is shutting down; retry the request.", "overloaded_error"
                    ) from None
            else:
                raise
        finally:
            state["done"] = True
            watcher.cancel()
            if is_messages:
                kind = record.request_type or classify(path, analysis, headers.get("x-claude-code-agent-id"))
                tokens = self.token_counters.observe(auth.project_id, outcome, kind)
            if self.writer is not None:
                self._finish(record, outcome, started)
            if self.integrations is not None:
                if self.writer is None:  # storage off: the record was not completed by `_finish`
                    record.analysis = analysis
                    complete_record(record, outcome, started)
                self.integrations.finished(record)
            if self.metrics is not None or span is not None:
                self._observe(
                    path,
                    model,
                    auth.project_id,
                    record,
                    outcome,
                    tokens,
                    arrived,
                    admitted.upload_s,
                    to_upstream,
                    relayed,
                    span,
                    upstream_span,
                )

    def _observe(
        self,
        path: str,
        model: str | None,
        project: str,
        record: ExchangeRecord,
        outcome: Outcome,
        tokens: tuple[int, int, int, int] | None,
        arrived: float,
        upload_s: float,
        to_upstream: float,
        relayed: float | None,
        span: Any,
        upstream_span: Any,
    ) -> None:
        """Metrics and the trace of one forwarded request, from what the request path already knows."""
        end = time.monotonic()
        status = outcome.status or record.response_status or (499 if record.outcome == "client_disconnected" else 0)
        handled = record.outcome if record.outcome in ("proxy_error", "timeout") else None
        stream_error = outcome.observer is not None and outcome.observer.error is not None
        if self.metrics is not None:
            overhead = None if relayed is None else (to_upstream - arrived - upload_s) + (end - relayed)
            ttft = outcome.first_byte_at - arrived if outcome.streamed and outcome.first_byte_at else None
            self.metrics.finished(
                recorder.route_label(path),
                status,
                model,
                project,
                outcome.streamed,
                end - arrived,
                overhead,
                ttft,
                tokens,
                recorder.upstream_error_kind(status, handled, outcome.error, stream_error),
            )
        if span is not None:
            assert self.tracer is not None
            error = record.error if record.outcome not in ("completed",) else outcome.error
            self.tracer.end_upstream(upstream_span, outcome.status or record.response_status, record.attempts, error)
            observer = outcome.observer
            facts = RequestFacts(
                status,
                model,
                tokens=tokens,
                streaming=outcome.streamed,
                outcome=record.outcome,
                error=error,
                attempts=record.attempts,
                project=project,
            )
            reply = outcome.reply() if observer is not None or status == 200 else None
            if reply is not None:
                facts.response_model, facts.response_id = reply.model, reply.message_id
                facts.finish_reason = reply.stop_reason
            self.tracer.end_request(span, facts)

    def _refused(self, path: str, status: int, arrived: float, span: Any) -> None:
        """A request that never went upstream: counted, and its span ended."""
        if self.metrics is not None:
            self.metrics.finished(recorder.route_label(path), status, None, "none", False, time.monotonic() - arrived)
        if span is not None:
            assert self.tracer is not None
            self.tracer.end_request(span, RequestFacts(status, outcome="refused"))

    def _count_retry(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.count("retries", reason)

    async def _admit(self, scope: Any, proto: Any, path: str, method: str) -> Admitted:
        """Every check before anything goes upstream; a failure is a `ProxyError` the client gets as
        it is (and storage keeps, with the body when it was read: `exc.body_read`)."""
        headers = scope.headers
        self._check_origin(headers)
        if method not in FORWARDED_METHODS:
            raise ProxyError(405, f"Method {method[:20]} is not forwarded.", "invalid_request_error")
        is_messages = path == "/v1/messages"
        if is_messages and method != "POST":
            raise ProxyError(405, f"Method {method} not allowed on /v1/messages; use POST.", "invalid_request_error")
        target = upstream_target(path, scope.query_string)
        header_items = headers.items()
        if len(header_items) != len(headers.keys()):
            _check_selectors_readable(headers)
        auth = await self._authorize(scope, header_items)
        if auth.client_secret and holds_secret(target, auth.client_secret):
            error = ProxyError(400, "Client keys may not be sent in the URL; send them as x-api-key.")
            error.secret = auth.client_secret  # kept out of the stored path too
            raise error
        analysis_job = await self._analysis_mark(scope) if ANALYSIS_MARK in headers else None
        body: bytes | None = None
        analysis: RequestAnalysis | None = None
        upload_s = 0.0
        if method in ("POST", "PUT", "PATCH") or headers.get("content-length") or headers.get("transfer-encoding"):
            if is_messages:
                check_json_content_type(headers.get("content-type"))
            reading = time.monotonic()
            body = await self._read_body(scope, proto)
            upload_s = time.monotonic() - reading
            if is_messages or path == "/v1/messages/count_tokens":
                try:  # one pass in Rust: the checks, the storage split and the linking hashes
                    analysis = analyze_request(body, strict=is_messages)
                except NexusCoreError as exc:
                    if is_messages:
                        error = ProxyError(400, str(exc), "invalid_request_error")
                        error.body_read = body
                        raise error from None
        return Admitted(auth, target, body, analysis, upload_s, analysis_job)

    async def _analysis_mark(self, scope: Any) -> int:
        """The job of a request marked by the analysis worker, checked against the job's current claim in
        the database (nexus/analysis/marker.py). A mark that does not check out is refused and counted
        against the address like a wrong key: it is never ignored, and never a way around anything."""
        address = self.data_access.address(scope.client, scope.headers)
        wait = self.throttle.retry_after(address)
        mark = scope.headers.get(ANALYSIS_MARK)
        job: int | None = None
        # A well-formed mark is checked even while the address is throttled: the worker shares its address
        # with local clients, and a valid mark (a 256-bit token of a claim held now) cannot be guessed, so
        # refusing it would only let anyone there stop every analysis by sending bogus marks.
        if wait is None or analysis_marker.parse(mark) is not None:
            try:
                pool = await self.api.pool()
                async with pool.connection() as conn:
                    job = await analysis_marker.verify(conn, mark)
            except ProxyError:
                job = None
            except Exception as exc:
                log.warning("analysis mark not checked: storage unavailable (%s)", exc.__class__.__name__)
                raise ProxyError(503, "The analysis mark cannot be checked right now.", "api_error") from None
        if job is not None:
            return job
        if wait is not None:
            message = f"Too many refused requests from this address; retry in {wait} s."
            raise ProxyError(429, message, "rate_limit_error", headers=[("retry-after", str(wait))])
        self.throttle.failed(address, "analysis mark refused")
        message = "Invalid x-nexus-analysis header: it is set by the analysis worker only."
        raise ProxyError(403, message, "permission_error")

    def _check_origin(self, headers: Any) -> None:
        """A request a browser sent for a web page (an `Origin` not allowed, or no `Origin` but a
        `Sec-Fetch-Site` other than `none`: an `<img>` load, or a page whose DNS name was rebound to this
        gateway, which is "same-origin" to the browser) never spends a held credential. The proxy serves
        no pages of its own, so no legitimate page is same-origin with it; `none` is a URL typed in."""
        origin = headers.get("origin")
        if origin is None and "origin" in headers:  # present but not ASCII: no page may send that
            origin = "(not ASCII)"
        if origin is not None:
            if self.cors.allows(origin):
                return
            message = f"Requests from the web origin {origin[:100]!r} are not allowed (CORS_ALLOWED_ORIGINS)."
            raise ProxyError(403, message, "permission_error")
        fetch_site = headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site.strip().lower() != "none":
            raise ProxyError(403, "Cross-site requests from a browser are not allowed.", "permission_error")

    async def _authorize(self, scope: Any, header_items: list[tuple[str, str]]) -> Authorization:
        """Project, account and upstream headers; failed client keys count against the address."""
        if not self.authorizer.client_auth:
            return await self.authorizer.authorize(header_items, upstream_request_headers(header_items))
        address = self.data_access.address(scope.client, scope.headers)
        wait = self.throttle.retry_after(address)
        if wait is not None:
            raise ProxyError(
                429,
                f"Too many failed client keys from this address; retry in {wait} s.",
                "rate_limit_error",
                headers=[("retry-after", str(wait))],
            )
        try:
            auth = await self.authorizer.authorize(header_items, upstream_request_headers(header_items))
        except ClientKeyError:
            self.throttle.failed(address, "client key refused")
            raise
        return auth

    async def _read_body(self, scope: Any, proto: Any) -> bytes:
        upload = self.uploads.start(self.data_access.address(scope.client, scope.headers))
        try:
            return await read_body(
                proto,
                scope.headers.get("content-length"),
                self.settings.max_request_size,
                idle_s=self.body_idle_s,
                total_s=self.body_total_s,
                upload=upload,
            )
        finally:
            self.uploads.finish(upload)

    def _finish(self, record: ExchangeRecord, outcome: Outcome, started: float) -> None:
        """Complete the record from the outcome and hand it to storage (after its link lookup settles)."""
        assert self.writer is not None
        complete_record(record, outcome, started)
        if self.conversations is not None:
            ok = record.response_status == 200 and record.outcome == "completed"
            record.task_prompt_keys = (
                self.conversations.complete(record.request_id, record.link, ok, record.reply) or None
            )
            if self.conversations.pending(record.request_id) is not None:
                task = asyncio.ensure_future(self._submit_settled(record))
                self._finishing.add(task)
                task.add_done_callback(self._finishing.discard)
                return
            if self.metrics is not None and record.link is not None:
                self.metrics.count("link_decisions", record.link.evidence)
        self.writer.submit(record)

    def _store_refusal(
        self, scope: Any, request_id: str, started_us: int, body: bytes | None, error: ProxyError
    ) -> None:
        """Keep a request the proxy answered itself, with the reason, so it shows up like any other."""
        self.stats.refused += 1
        if self.writer is None:
            return
        header_items = scope.headers.items()
        try:
            project = resolve_project(dict(header_items), None, self.settings.default_project_id)
        except ProxyError:
            project = self.settings.default_project_id or DEFAULT_PROJECT
        target = unquote(scope.path + ("?" + scope.query_string if scope.query_string else ""))
        if error.secret:
            target = re.sub(re.escape(error.secret), "[redacted]", target, flags=re.IGNORECASE)
        record = ExchangeRecord(request_id, started_us, project, None, scope.method, target[:2048], header_items, body)
        record.outcome, record.response_status, record.error = "refused", error.status, error.message
        record.duration_ms = max(0, int(time.time() * 1000 - started_us / 1000))
        self.writer.submit(record)

    async def _submit_settled(self, record: ExchangeRecord) -> None:
        """Store a record once the database lookup for its link has answered (or given up)."""
        assert self.conversations is not None and self.writer is not None
        record.link = await self.conversations.settle(record.request_id, record.link)
        if self.metrics is not None and record.link is not None:
            self.metrics.count("link_decisions", record.link.evidence)
        self.writer.submit(record)

    # --- small endpoints ---------------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return probes.readiness(self.writer, self.authorizer.store, self.drain.draining)

    def _health(self, path: str, proto: Any, request_id: str, now_ns: int) -> None:
        """`/health/live` (the loop answers), `/health/ready` (which check failed), `/health` (the detail,
        with the readiness status code: 200 once ready to serve and keep requests, 503 while not)."""
        if path == "/health/live":
            self._respond_json(proto, 200, {"status": "alive", "pid": os.getpid()}, request_id)
            return
        if path == "/health/ready":
            ready, body = self.readiness()
            self._respond_json(proto, 200 if ready else 503, body, request_id)
            return
        if path != "/health":
            raise ProxyError(404, f"No route for GET {path[:200]}.", "not_found_error")
        body = self.health()
        self._respond_json(proto, 200 if body["ready"] else 503, body, request_id)

    def _metrics_page(self, proto: Any, request_id: str) -> None:
        assert self.metrics is not None
        self.metrics.flush(
            self.writer, self.readiness()[0]
        )  # this worker's numbers are current; the others' a second old at most
        headers = [("content-type", prom.CONTENT_TYPE), ("cache-control", "no-store"), ("x-request-id", request_id)]
        proto.response_bytes(200, headers, prom.families().render())

    def _flush_metrics(self, loop: asyncio.AbstractEventLoop) -> None:
        """Once a second: this worker's sums into the shared metrics, and its gauges sampled."""
        assert self.metrics is not None
        try:
            self.metrics.flush(self.writer, self.readiness()[0])
        except Exception:
            log.exception("metrics: flush failed")
        if not loop.is_closed():
            self._flush_timer = loop.call_later(1.0, self._flush_metrics, loop)

    def health(self) -> dict[str, object]:
        storage = self.writer.snapshot() if self.writer is not None else {"enabled": False}
        degraded = bool(storage.get("degraded"))
        ready, readiness = self.readiness()
        status = ("degraded" if degraded else "healthy") if ready else "unavailable"
        return {
            "status": status,
            "ready": ready,
            "failed": readiness["failed"],
            "checks": readiness["checks"],
            "service": "nexus-proxy",
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 3),
            "storage": storage,
            "linking": self.conversations.stats() if self.conversations is not None else {"enabled": False},
            "integrations": self.integrations.snapshot() if self.integrations is not None else {},
            "stats": {
                "requests": self.stats.requests,
                "streams": self.stats.streams,
                "upstream_errors": self.stats.upstream_errors,
                "client_disconnects": self.stats.client_disconnects,
                "proxy_errors": self.stats.proxy_errors,
                "refused": self.stats.refused,
                "aborted_uploads": self.stats.aborted_uploads,
                "slow_uploads": self.uploads.slow_uploads(),
            },
        }

    def descriptor(self) -> dict[str, object]:
        return {
            "service": "nexus",
            "version": __version__,
            "status": "operational",
            "endpoints": {
                "messages": "POST /v1/messages",
                "passthrough": "/v1/*",
                "health": "GET /health (/health/live, /health/ready)",
                "metrics": "GET /metrics",
                "requests": "GET /api/requests[/{id}]",
                "conversations": "GET /api/conversations[/{id}]",
                "token_usage": "GET /api/token-usage/current | /daily | /time-series",
                "token_stats": "GET /token-stats",
                "client_setup": "GET /client-setup/{filename}",
                **({"mcp": "POST /mcp (GET /mcp: discovery)"} if self.mcp is not None else {}),
                "analyses": "POST /api/analyses | GET /api/analyses/{conversationId}/{branchId} | POST …/regenerate",
                "openapi": "GET /openapi.json (every /api/* operation, its parameters and fields)",
            },
        }

    def _token_stats(self, scope: Any, proto: Any, request_id: str) -> None:
        query = parse_qs(scope.query_string, keep_blank_values=True)
        check_query(query)
        project = token_stats.project_of(query)
        body = dump_json(self.token_counters.snapshot(project))  # a total may pass 64 bits
        proto.response_bytes(200, [*JSON_HEADERS, *self.token_counters.headers(), ("x-request-id", request_id)], body)

    @staticmethod
    def _respond_json(proto: Any, status: int, payload: object, request_id: str) -> None:
        proto.response_bytes(status, [*JSON_HEADERS, ("x-request-id", request_id)], orjson.dumps(payload))


def _check_selectors_readable(headers: Any) -> None:
    """Granian drops header values that are not ASCII from `get` and `items`; a selector sent that
    way must not fall through to another project (the wrong credential would pay)."""
    present = set(headers.keys())
    for name in SELECTOR_HEADERS:
        if name in present and headers.get(name) is None:
            raise ProxyError(400, f"Invalid {name} header: only ASCII names are accepted.", "invalid_request_error")


def create_app() -> ProxyApp:
    """Granian factory target (`nexus.proxy.app:create_app`)."""
    return ProxyApp()
