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
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from nexus import __version__
from nexus.api import openapi, token_stats
from nexus.api.params import check_query
from nexus.api.routes import ApiRoutes, dump_json
from nexus.auth.service import RequestAuthorizer
from nexus.conversations.service import ConversationService, LookupPool
from nexus.errors import ProxyError
from nexus.ids import new_request_id
from nexus.integrations.hub import Integrations, build_integrations, credential_slack
from nexus.observability import logs, recorder
from nexus.observability import metrics as prom
from nexus.observability.tracing import RequestFacts, Tracer
from nexus.proxy import probes
from nexus.proxy.body import ClientGone, UploadGuard, check_json_content_type, read_body
from nexus.proxy.client_setup import PREFIX as CLIENT_SETUP_PREFIX
from nexus.proxy.client_setup import ClientSetup
from nexus.proxy.drain import Drain
from nexus.proxy.phases import record as recording
from nexus.proxy.phases.admit import Admission
from nexus.proxy.phases.exchange import Admitted, Arrival, Exchange
from nexus.proxy.phases.forward import FAILURES, failure, open_exchange, watch_client
from nexus.proxy.phases.link import link
from nexus.proxy.phases.relay import relay_exchange
from nexus.proxy.retry import RetryPolicy
from nexus.proxy.services import Services, build_services
from nexus.proxy.stats import ProxyStats
from nexus.proxy.upstream import Upstream
from nexus.security.access import DataAccess
from nexus.security.cors import CorsPolicy
from nexus.security.throttle import FailureThrottle
from nexus.settings import Settings, get_settings
from nexus.storage import querylog
from nexus.storage.writer import StorageWriter
from nexus.usage.counters import TokenCounters

if TYPE_CHECKING:
    from nexus.mcp.endpoint import McpEndpoint

log = logging.getLogger("nexus.proxy")

JSON_HEADERS = [("content-type", "application/json")]
#: Largest body of an `/api/*` POST (an analysis request is a few hundred bytes).
API_BODY_LIMIT = 64 * 1024


class ProxyApp:
    """One instance per worker process; Granian calls `__rsgi_init__` once the loop exists."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        s = self.settings
        self.policy = RetryPolicy(
            max_attempts=s.upstream_max_attempts,
            base_delay_s=s.upstream_retry_base_delay_s,
            max_delay_s=s.upstream_retry_max_delay_s,
            budget_s=s.upstream_retry_budget_s,
        )
        self.head_timeout_s = s.head_timeout_s
        self.idle_timeout_s = s.stream_idle_timeout_s
        self.server_timeout_s = s.server_timeout_s
        self.body_idle_s = s.body_read_idle_timeout_s
        self.body_total_s = s.body_read_timeout_s
        #: Opened in `__rsgi_init__` (they need the worker's event loop); the attributes below name its parts.
        self.services: Services | None = None
        self.upstream: Upstream | None = None
        self.writer: StorageWriter | None = None
        self.conversations: ConversationService | None = None
        self.lookup_pool: LookupPool | None = None
        self._finishing: set[asyncio.Task[None]] = set()
        self.api = ApiRoutes(s.database_url, pool_size=s.db_pool_size, connect_kwargs=querylog.pool_kwargs(s))
        self.throttle = FailureThrottle(s.auth_failure_limit, s.auth_failure_window_s)
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
        self.drain = Drain(s.shutdown_timeout_s)
        self._flush_timer: asyncio.TimerHandle | None = None
        self.client_setup = ClientSetup(s)
        self.admission = Admission(
            s, self.authorizer, self.throttle, self.data_access, self.cors, self.uploads, self.api
        )
        self.mcp: McpEndpoint | None = None
        if s.mcp_enabled:
            from nexus.mcp.endpoint import McpEndpoint  # only loaded (with YAML and Handlebars) when enabled

            self.mcp = McpEndpoint(
                s, self.authorizer.client_keys, self.throttle, self.data_access, self.admission.check_origin
            )
        #: Slack, telemetry, test samples (nexus/integrations); None when none is configured.
        self.integrations: Integrations | None = build_integrations(
            s, credential_slack(self.authorizer.store, self.authorizer.db)
        )

    # --- RSGI protocol -----------------------------------------------------------------------
    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        s = self.settings
        logs.configure(s.log_format, "nexus-proxy", debug=s.debug, level=s.log_level)
        self.drain.install(loop)
        self.services = services = build_services(s, storage_metrics=self.metrics is not None)
        self.upstream, self.writer, self.tracer = services.upstream, services.writer, services.tracer
        self.lookup_pool, self.conversations = services.lookup_pool, services.conversations
        if self.metrics is not None:
            self._flush_timer = loop.call_later(1.0, self._flush_metrics, loop)
        if self.mcp is not None:
            loop.call_soon(self.mcp.start)
        if self.integrations is not None:
            self.integrations.start()

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        services, self.services = self.services, None
        if self.mcp is not None:
            self.mcp.stop()
        self.authorizer.close()
        can_run = not loop.is_closed() and not loop.is_running()
        if self._finishing and can_run:  # records waiting on a link lookup are stored, settled or not
            loop.run_until_complete(asyncio.wait(self._finishing, timeout=5))
        if services is not None:
            services.close(loop, can_run)  # linking, tracing, storage (flushed or spooled), the upstream
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        if self.metrics is not None:
            self.metrics.flush(self.writer, ready=False)  # the last requests and rows, then this worker leaves
            prom.worker_exit()
        if self.integrations is not None and can_run:  # what is queued gets a few seconds to go out
            loop.run_until_complete(self.integrations.close())
        if services is not None and can_run:
            loop.run_until_complete(self.api.close())

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
                        self.admission.check_origin(scope.headers)
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
        self.admission.check_origin(scope.headers)
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

    # --- the proxied request (its phases: nexus/proxy/phases) --------------------------------
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
        arrival = Arrival(request_id, method, path, started_us, time.monotonic(), extra)
        task = asyncio.current_task()
        assert task is not None
        self.drain.tasks.add(task)
        if self.metrics is not None:
            self.metrics.in_flight += 1
        if self.tracer is not None:
            arrival.span = self.tracer.start_request(method, path, scope.headers, started_us * 1000, request_id)
        try:
            await self._forward(scope, proto, arrival, task)
        finally:
            self.drain.tasks.discard(task)
            if self.metrics is not None:
                self.metrics.in_flight -= 1

    async def _forward(self, scope: Any, proto: Any, arrival: Arrival, task: asyncio.Task[Any]) -> None:
        """Admit, link, forward, relay; whatever ends the request, the record phase runs."""
        upstream, headers = self.upstream, scope.headers
        assert upstream is not None
        admitted = await self._admit(scope, proto, arrival)
        ex = Exchange.begin(arrival, admitted)
        if self.tracer is not None:
            self.tracer.set_model(arrival.span, arrival.path, ex.model)
        await link(ex, self.conversations, headers)
        watcher = watch_client(proto, ex, task)
        ex.to_upstream = time.monotonic()
        if self.tracer is not None:
            ex.upstream_span = self.tracer.start_upstream(arrival.span, arrival.method, time.time_ns())
        try:
            opened = await open_exchange(
                ex,
                upstream,
                self.policy,
                self.authorizer,
                self.conversations,
                server_timeout_s=self.server_timeout_s,
                head_timeout_s=self.head_timeout_s,
                on_retry=self._count_retry if self.metrics is not None else None,
            )
            await relay_exchange(
                proto, opened, ex, self.stats, idle_timeout_s=self.idle_timeout_s, body_timeout_s=self.head_timeout_s
            )
        except FAILURES as exc:
            ended = failure(exc, ex, server_timeout_s=self.server_timeout_s, drain_expired=self.drain.expired)
            if ex.disconnected and ended is None:
                self.stats.client_disconnects += 1
            if ended is exc:
                raise
            if ended is not None:
                raise ended from None
        finally:
            ex.done = True
            watcher.cancel()
            self._record(ex, headers)

    async def _admit(self, scope: Any, proto: Any, arrival: Arrival) -> Admitted:
        """The admission phase; a refused request is stored with its reason, counted and its span ended."""
        try:
            return await self.admission.admit(scope, proto, arrival.path, arrival.method)
        except ProxyError as exc:
            self._store_refusal(scope, arrival.request_id, arrival.started_us, getattr(exc, "body_read", None), exc)
            self._refused(arrival, exc.status)
            raise
        except BaseException:
            self._refused(arrival, 499)  # the upload was abandoned (or the worker stops)
            raise

    def _record(self, ex: Exchange, headers: Any) -> None:
        """The record phase: token counters, storage, integrations, then metrics and the trace."""
        recording.count_tokens(ex, self.token_counters, headers)
        if self.writer is not None:
            recording.store(
                ex.record, ex.outcome, ex.started, self.writer, self.conversations, self.metrics, self._finishing
            )
        if self.integrations is not None:
            recording.notify(ex, self.integrations, stored=self.writer is not None)
        if self.metrics is not None or ex.arrival.span is not None:
            self._observe(ex)

    def _observe(self, ex: Exchange) -> None:
        """Metrics and the trace of one forwarded request, from what the request path already knows."""
        end = time.monotonic()
        arrival, record, outcome, tokens, model = ex.arrival, ex.record, ex.outcome, ex.tokens, ex.model
        project, arrived, span = ex.admitted.auth.project_id, arrival.arrived, arrival.span
        status = outcome.status or record.response_status or (499 if record.outcome == "client_disconnected" else 0)
        handled = record.outcome if record.outcome in ("proxy_error", "timeout") else None
        stream_error = outcome.observer is not None and outcome.observer.error is not None
        if self.metrics is not None:
            relayed = ex.relayed
            overhead = None if relayed is None else (ex.to_upstream - arrived - ex.admitted.upload_s) + (end - relayed)
            ttft = outcome.first_byte_at - arrived if outcome.streamed and outcome.first_byte_at else None
            self.metrics.finished(
                recorder.route_label(arrival.path),
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
            self.tracer.end_upstream(ex.upstream_span, outcome.status or record.response_status, record.attempts, error)
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

    def _refused(self, arrival: Arrival, status: int) -> None:
        """A request that never went upstream: counted, and its span ended."""
        if self.metrics is not None:
            route = recorder.route_label(arrival.path)
            self.metrics.finished(route, status, None, "none", False, time.monotonic() - arrival.arrived)
        if arrival.span is not None:
            assert self.tracer is not None
            self.tracer.end_request(arrival.span, RequestFacts(status, outcome="refused"))

    def _count_retry(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.count("retries", reason)

    def _store_refusal(
        self, scope: Any, request_id: str, started_us: int, body: bytes | None, error: ProxyError
    ) -> None:
        """Keep a request the proxy answered itself, with the reason, so it shows up like any other."""
        self.stats.refused += 1
        if self.writer is None:
            return
        self.writer.submit(
            recording.refusal_record(scope, request_id, started_us, body, error, self.settings.default_project_id)
        )

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


def create_app() -> ProxyApp:
    """Granian factory target (`nexus.proxy.app:create_app`)."""
    return ProxyApp()
