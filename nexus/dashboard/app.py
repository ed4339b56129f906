"""The dashboard service: Robyn routes over thin handlers, server-rendered pages, static files, SSE.

Pages: `/` overview, `/requests` (keyset pages, project filter), `/conversations` and
`/conversations/{id}` (the tree), `/requests/{id}` (summary, the body
as a conversation, raw JSON, stored headers), `/usage` (5-hour windows per account and project, the
rolling series, daily sums), `/live` (Server-Sent Events of new requests), `/login`, `/logout`,
`/health` (with `/health/live` and `/health/ready`) and `/static/*`. Every page but the health
probes, `/login` and `/static/*` goes through `auth`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, quote, unquote_plus, urlsplit

import orjson
import psycopg
from psycopg_pool import PoolTimeout

from nexus import __version__
from nexus.api.params import check_query
from nexus.compat import dashboard_api, dashboard_links
from nexus.dashboard import analysis, find, render, tree_page, views
from nexus.dashboard.auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE, Access, DashboardAuth, parse_cookies
from nexus.dashboard.cache import PageCache
from nexus.dashboard.db import read_only_pool
from nexus.dashboard.live import HEARTBEAT_SECONDS, LiveFeed
from nexus.dashboard.urls import shown_url
from nexus.errors import ProxyError
from nexus.integrations.spark import FeedbackError, SparkClient, feedback_payload
from nexus.observability import logs
from nexus.security.throttle import FailureThrottle
from nexus.settings import Settings
from nexus.storage import querylog
from nexus.storage.migrate import PENDING_CHECK_SQL, pending_names
from nexus.usage.repo import Filters

log = logging.getLogger("nexus.dashboard")

HTML = "text/html; charset=utf-8"
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
#: One live stream lasts at most this long; the browser's EventSource then reconnects on its own.
STREAM_SECONDS = 600

Page = Callable[[Any, Access], Awaitable[Any]]


def _robyn() -> Any:
    """Import Robyn without letting it parse *our* command line (it reads sys.argv at import)."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        from robyn import Robyn
        from robyn.argument_parser import Config

        config = Config()
    finally:
        sys.argv = argv
    config.disable_openapi = True
    config.log_level = "WARNING"
    return Robyn, config


def respond(status: int, body: str | bytes, content_type: str = HTML, headers: dict[str, str] | None = None) -> Any:
    from robyn import Response

    return Response(status, {**SECURITY_HEADERS, "content-type": content_type, **(headers or {})}, body)


def _headers(request: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.to_dict().items()}


def _query(request: Any, name: str) -> str | None:
    """A query parameter, percent-decoded (Robyn hands them over as they are in the URL)."""
    value = request.query_params.get(name, None)
    return unquote_plus(value) if value else None


def _query_dict(request: Any) -> dict[str, str]:
    """Every query parameter, percent-decoded, its last value."""
    return {k: unquote_plus(v[-1]) for k, v in request.query_params.to_dict().items() if v}


def _form(request: Any) -> dict[str, str]:
    body = request.body
    text = body.decode("utf-8", "replace") if isinstance(body, bytes | bytearray) else str(body or "")
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


#: A same-site path and query: no scheme, no host, no backslash, no whitespace or control character
#: (browsers drop tabs and newlines from URLs, so `/\t/evil.com` would become `//evil.com`).
_LOCAL_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9\-._~!$&'()*+,;=:@/%?]*")


def _safe_next(target: str | None) -> str:
    """Only a local path: never an open redirect to another site, never a header-breaking value."""
    if not target or len(target) > 2048 or not _LOCAL_PATH.fullmatch(target):
        return "/"
    return target


class Dashboard:
    def __init__(self, settings: Settings, database_url: str) -> None:
        self.settings = settings
        self.auth = DashboardAuth(
            settings.dashboard_api_key,
            settings.dashboard_session_hours,
            FailureThrottle(settings.auth_failure_limit, settings.auth_failure_window_s),
            settings.trusted_proxy_networks,
        )
        self.env = render.environment()
        self.env.globals["proxy_url"] = shown_url(settings.host, settings.port)  # the empty states' advice
        self.pool = read_only_pool(database_url, settings.db_pool_size, querylog.pool_kwargs(settings))
        self.cache = PageCache(settings.dashboard_cache_ttl)
        self.feed = LiveFeed(self.pool, self.render_row, settings.dashboard_live_interval_s)
        #: Sends feedback on Spark recommendations (docs/spark.md); None without SPARK_API_KEY.
        self.spark = (
            SparkClient(settings.spark_api_url, settings.spark_api_key)
            if settings.spark_active and settings.spark_api_key
            else None
        )

    # --- rendering ------------------------------------------------------------------------------
    def page(self, template: str, status: int = 200, **context: Any) -> Any:
        return respond(status, self.env.get_template(template).render(**context))

    def render_row(self, row: dict[str, Any]) -> str:
        return self.env.get_template("_row.html").render(r=row)

    def message(self, status: int, heading: str, text: str, access: Access | None = None) -> Any:
        return self.page("message.html", status, heading=heading, message=text, access=access, page="")

    # --- access ---------------------------------------------------------------------------------
    def guarded(self, fn: Page, *, stream: bool = False) -> Callable[[Any], Awaitable[Any]]:
        async def handler(request: Any) -> Any:
            headers = _headers(request)
            access = self.auth.access(
                request.ip_addr, headers, parse_cookies(headers.get("cookie")), getattr(request.url, "host", None)
            )
            if not access.allowed:
                return self.denied(request, access, stream)
            try:
                check_query({k: [unquote_plus(v) for v in vs] for k, vs in request.query_params.to_dict().items()})
                check_query({"path": list((request.path_params or {}).values())})
                # no asyncio.timeout: a cancelled query can freeze the process (nexus/storage/pools.py)
                return await fn(request, access)
            except (psycopg.OperationalError, PoolTimeout) as exc:
                log.warning("%s: the database is unavailable (%s)", request.url.path, exc.__class__.__name__)
                return self.message(503, "Storage unavailable", "The database does not answer; try again shortly.")
            except ProxyError as exc:
                return self.message(exc.status, "Bad request", exc.message, access)
            except views.NotFound:
                return self.message(404, "Not found", "No such request is stored.", access)
            except (views.BadRequest, ValueError) as exc:
                return self.message(400, "Bad request", str(exc), access)

        return handler

    def denied(self, request: Any, access: Access, stream: bool) -> Any:
        if access.status == 429:
            return respond(
                429,
                orjson.dumps({"error": access.reason}),
                "application/json",
                {"retry-after": str(access.retry_after)},
            )
        if not self.auth.key_required:
            return self.message(
                403, "Forbidden", f"{access.reason} Set DASHBOARD_API_KEY to serve the dashboard to other machines."
            )
        if access.reason == "login required" and not stream:
            target = request.url.path
            query = request.query_params.to_dict()
            if query:
                target += "?" + "&".join(f"{quote(k)}={quote(unquote_plus(v[-1]))}" for k, v in query.items() if v)
            return respond(303, "", headers={"location": "/login?next=" + quote(target, safe="")})
        return respond(401, orjson.dumps({"error": access.reason}), "application/json")

    # --- pages ----------------------------------------------------------------------------------
    async def overview(self, request: Any, access: Access) -> Any:
        async def load() -> dict[str, Any]:
            async with self.pool.connection() as conn:
                return await views.overview(conn)

        data = await self.cache.get(("overview",), load)
        return self.page("overview.html", access=access, page="overview", **data)

    async def requests(self, request: Any, access: Access) -> Any:
        async with self.pool.connection() as conn:
            found, params = find.read(_query_dict(request), requests=True)
            data = await views.requests_page(
                conn,
                find=found,
                params=params,
                conversation_id=_query(request, "conversation_id"),
                before=_query(request, "before"),
            )
        return self.page("requests.html", access=access, page="requests", **data)

    async def request_detail(self, request: Any, access: Access) -> Any:
        async with self.pool.connection() as conn:
            data = await views.request_page(conn, request.path_params["request_id"])
        notice = "sent" if _query(request, "spark") == "sent" else None  # never text from the URL
        return self.page(
            "request.html",
            access=access,
            page="requests",
            spark_enabled=self.spark is not None,
            spark_notice=notice,
            **data,
        )

    async def spark_feedback(self, request: Any, access: Access) -> Any:
        """Feedback on a Spark recommendation shown on a request's page, sent on to the Spark API. Only
        for a session id that recommendation really has, and only sections and sources it has."""
        if self.spark is None:
            return self.message(503, "Spark is not configured", "Set SPARK_API_KEY to send feedback.", access)
        form = _form(request)
        if not self._same_site_form(request, access, form):
            return self.message(403, "Forbidden", "Missing or wrong CSRF token.", access)
        request_id = request.path_params["request_id"]
        async with self.pool.connection() as conn:
            data = await views.request_page(conn, request_id)
        rec = next((r for r in data["spark"] if r.session_id == form.get("session_id")), None)
        if rec is None:
            return self.message(400, "Bad request", "This request has no such Spark recommendation.", access)
        section_ids = {sec.id for sec in rec.sections}
        section_feedback = {
            k.removeprefix("section:"): v
            for k, v in form.items()
            if k.startswith("section:") and k.removeprefix("section:") in section_ids
        }
        urls = {url for _, url in rec.sources}
        source_feedback = {
            v: form.get("source_feedback_" + k.removeprefix("source_url_"), "")
            for k, v in form.items()
            if k.startswith("source_url_") and v in urls
        }
        try:
            payload = feedback_payload(
                rec.session_id, form.get("rating"), form.get("comments", ""), section_feedback, source_feedback
            )
        except FeedbackError as exc:
            return self.message(400, "Bad request", str(exc), access)
        answer = await asyncio.to_thread(self.spark.send_feedback, payload)
        if not answer.ok:
            log.warning("spark: feedback for session %s not taken (%s)", rec.session_id, answer.error)
            return self.message(502, "Spark did not take the feedback", answer.error or "failed", access)
        return respond(
            303, "", headers={"location": f"/requests/{quote(str(data['r']['request_id']))}?spark=sent#spark"}
        )

    def _same_site_form(self, request: Any, access: Access, form: dict[str, str]) -> bool:
        """A state-changing form post: with a login session its CSRF token must match; with a key in a
        header it is no browser's ambient credential; on loopback without a key, only a same-origin page
        may post (Sec-Fetch-Site and Origin, which every current browser sends on a POST)."""
        if access.session is not None:
            return self.auth.csrf_matches(access.session, form.get("_csrf"))
        if access.by_header:
            return True
        headers = _headers(request)
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        origin = headers.get("origin")
        return origin is None or urlsplit(origin).netloc == headers.get("host")

    async def conversations(self, request: Any, access: Access) -> Any:
        found, params = find.read(_query_dict(request), requests=False)
        before = _query(request, "before")

        async def load() -> dict[str, Any]:
            async with self.pool.connection() as conn:
                return await views.conversations_page(conn, find=found, params=params, before=before)

        data = await self.cache.get(("conversations", *sorted(params.items()), before), load)
        return self.page("conversations.html", access=access, page="conversations", **data)

    async def conversation(self, request: Any, access: Access) -> Any:
        async with self.pool.connection() as conn:
            data = await views.conversation_page(
                conn,
                request.path_params["conversation_id"],
                branch=_query(request, "branch"),
                tree_from=tree_page.offset_param(_query(request, "tree_from")),
            )
        return self.page("conversation.html", access=access, page="conversations", **data)

    async def request_analysis(self, request: Any, access: Access) -> Any:
        """The analysis button: forwarded to the proxy's /api/analyses (nexus/dashboard/analysis.py)."""
        headers = _headers(request)
        form = _form(request)
        if access.session is not None:
            if not self.auth.csrf_matches(access.session, form.get("_csrf")):
                return self.message(403, "Forbidden", "Missing or wrong CSRF token.", access)
        elif not access.by_header and not analysis.same_origin(headers):
            return self.message(403, "Forbidden", "Cross-site form posts are refused.", access)
        conversation_id = request.path_params["conversation_id"]
        try:
            conversation_id = str(uuid.UUID(conversation_id))
        except ValueError:
            raise views.NotFound(conversation_id) from None
        answer = await analysis.ask_proxy(
            self.settings.dashboard_proxy_url,
            self.settings.dashboard_api_key,
            conversation_id,
            form.get("branch_id") or "main",
            form.get("action") == "regenerate",
            form.get("custom_prompt") or None,
        )
        if answer.status >= 400:
            return self.message(answer.status if answer.status < 500 else 502, "Analysis not queued", answer.message)
        return respond(303, "", headers={"location": f"/conversations/{conversation_id}#analysis"})

    async def usage(self, request: Any, access: Access) -> Any:
        filters = Filters(account_id=_query(request, "account_id"), project_id=_query(request, "project_id"))
        bucket, by = _query(request, "bucket"), _query(request, "by")

        async def load() -> dict[str, Any]:
            async with self.pool.connection() as conn:
                return await views.usage_page(conn, filters, chart_bucket=bucket, chart_by=by)

        data = await self.cache.get(("usage", filters.account_id, filters.project_id, bucket, by), load)
        return self.page("usage.html", access=access, page="usage", **data)

    async def live(self, request: Any, access: Access) -> Any:
        from robyn import Headers, SSEResponse

        sub = self.feed.subscribe(_query(request, "project_id"))
        if sub is None:
            return respond(503, "too many live viewers", "text/plain", {"retry-after": "30"})
        loop = asyncio.get_running_loop()

        async def stream() -> Any:
            try:
                yield "retry: 3000\n\n: connected\n\n"
                deadline = loop.time() + STREAM_SECONDS
                while loop.time() < deadline:
                    sub.touch()
                    try:
                        item = await asyncio.wait_for(sub.queue.get(), HEARTBEAT_SECONDS)
                    except TimeoutError:
                        yield ": ping\n\n"  # keeps proxies from idling the stream out
                        continue
                    if item is None:
                        break
                    yield item
            finally:
                self.feed.unsubscribe(sub)

        headers = Headers({})
        for name, value in SECURITY_HEADERS.items():
            headers.set(name, value)
        return SSEResponse(stream(), headers=headers)

    # --- login ----------------------------------------------------------------------------------
    def login_form(self, request: Any, status: int = 200, error: str | None = None, target: str = "/") -> Any:
        token = self.auth.new_login_csrf()
        resp = self.page("login.html", status, login_csrf=token, next=target, error=error, access=None, page="")
        resp.set_cookie(LOGIN_CSRF_COOKIE, token, path="/login", http_only=True, same_site="Strict", max_age=3600)
        return resp

    async def login_get(self, request: Any) -> Any:
        if not self.auth.key_required:
            return self.message(404, "No login", "DASHBOARD_API_KEY is unset: this dashboard serves loopback only.")
        return self.login_form(request, target=_safe_next(_query(request, "next")))

    async def login_post(self, request: Any) -> Any:
        if not self.auth.key_required:
            return self.message(404, "No login", "DASHBOARD_API_KEY is unset: there is nothing to log in to.")
        headers = _headers(request)
        form = _form(request)
        target = _safe_next(form.get("next"))
        cookie = parse_cookies(headers.get("cookie")).get(LOGIN_CSRF_COOKIE)
        if not self.auth.login_csrf_matches(cookie, form.get("_csrf")):
            return self.login_form(request, 403, "The form expired; please try again.", target)
        checked = self.auth.check_login(request.ip_addr, headers, form.get("key"))
        if checked.status == 429:
            resp = self.login_form(request, 429, f"Too many wrong keys. {checked.reason}", target)
            resp.headers.set("retry-after", str(checked.retry_after))
            return resp
        if not checked.allowed:
            await asyncio.sleep(0.5)  # slows guessing; the event loop keeps serving others
            return self.login_form(request, 401, "Wrong key.", target)
        resp = respond(303, "", headers={"location": target})
        secure = headers.get("x-forwarded-proto", "").lower() == "https"
        resp.set_cookie(
            SESSION_COOKIE,
            self.auth.issue_session(),
            path="/",
            http_only=True,
            same_site="Lax",
            secure=secure,
            max_age=self.auth.session_seconds,
        )
        resp.set_cookie(LOGIN_CSRF_COOKIE, "", path="/login", http_only=True, same_site="Strict", max_age=0)
        return resp

    async def logout(self, request: Any, access: Access) -> Any:
        if access.session is not None and not self.auth.csrf_matches(access.session, _form(request).get("_csrf")):
            return self.message(403, "Forbidden", "Missing or wrong CSRF token.", access)
        resp = respond(303, "", headers={"location": "/login" if self.auth.key_required else "/"})
        resp.set_cookie(SESSION_COOKIE, "", path="/", http_only=True, same_site="Lax", max_age=0)
        return resp

    async def health(self, request: Any) -> Any:
        body: dict[str, Any] = {"service": "nexus-dashboard", "version": __version__, "pid": os.getpid()}
        try:
            async with self.pool.connection(timeout=2, hang_after_s=3) as conn:
                await conn.execute("SELECT 1")
        except Exception as exc:
            body |= {"status": "unhealthy", "database": "disconnected", "error": exc.__class__.__name__}
            return respond(503, orjson.dumps(body), "application/json")
        body |= {"status": "healthy", "database": "connected", "live_viewers": len(self.feed.subscribers)}
        return respond(200, orjson.dumps(body), "application/json")

    async def health_live(self, request: Any) -> Any:
        """The process serves (nothing else is asked: a database outage must not get it restarted)."""
        return respond(200, orjson.dumps({"status": "alive", "pid": os.getpid()}), "application/json")

    async def health_ready(self, request: Any) -> Any:
        """Ready to serve pages: the database answers and has every migration this version reads."""
        checks: dict[str, Any] = {}
        try:
            async with self.pool.connection(timeout=2, hang_after_s=3) as conn:
                cur = await conn.execute(PENDING_CHECK_SQL)
                exists, readable = await cur.fetchone() or (False, False)
                done: set[int] | None = set() if not exists else None
                if readable:
                    cur = await conn.execute("SELECT version FROM nexus_migrations")
                    done = {int(row[0]) for row in await cur.fetchall()}
            checks["database"] = {"ok": True, "detail": "reachable"}
            if done is None:
                checks["migrations"] = {"ok": True, "detail": "not visible to this database role (nexus_migrations)"}
            else:
                pending = pending_names(done)
                detail = f"pending: {', '.join(pending)} (run `nexus migrate`)" if pending else "current"
                checks["migrations"] = {"ok": not pending, "detail": detail}
        except Exception as exc:
            checks["database"] = {"ok": False, "detail": f"unreachable ({exc.__class__.__name__})"}
            checks["migrations"] = {"ok": False, "detail": "not checked (no database)"}
        failed = [name for name, check in checks.items() if not check["ok"]]
        body = {"status": "not_ready" if failed else "ready", "failed": failed, "checks": checks}
        return respond(503 if failed else 200, orjson.dumps(body), "application/json")

    # --- lifecycle ------------------------------------------------------------------------------
    async def startup(self) -> None:
        await self.pool.open(wait=False)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: loop.create_task(self.shutdown()))
        if self.auth.key_required:
            log.warning("dashboard: DASHBOARD_API_KEY is set; login required (or X-API-Key / Bearer)")
        else:
            log.warning("dashboard: DASHBOARD_API_KEY is unset; serving loopback clients only (set it to allow others)")

    async def shutdown(self) -> None:
        """Robyn does not stop on SIGTERM by itself: close what we hold, then leave."""
        try:
            await self.feed.close()
            await asyncio.wait_for(self.pool.close(), 3)
        finally:
            logging.shutdown()
            os._exit(0)

    def build(self) -> Any:
        robyn_cls, config = _robyn()
        app = robyn_cls(__file__, config=config)
        app.startup_handler(self.startup)
        app.serve_directory("/static", str(render.STATIC))
        app.add_route("GET", "/health", self.health)
        app.add_route("GET", "/health/live", self.health_live)
        app.add_route("GET", "/health/ready", self.health_ready)
        app.add_route("GET", "/login", self.login_get)
        app.add_route("POST", "/login", self.login_post)
        app.add_route("POST", "/logout", self.guarded(self.logout))
        app.add_route("GET", "/", self.guarded(self.overview))
        app.add_route("GET", "/requests", self.guarded(self.requests))
        app.add_route("GET", "/requests/:request_id", self.guarded(self.request_detail))
        app.add_route("POST", "/requests/:request_id/spark-feedback", self.guarded(self.spark_feedback))
        app.add_route("GET", "/conversations", self.guarded(self.conversations))
        app.add_route("GET", "/conversations/:conversation_id", self.guarded(self.conversation))
        app.add_route("POST", "/conversations/:conversation_id/analysis", self.guarded(self.request_analysis))
        app.add_route("GET", "/usage", self.guarded(self.usage))
        app.add_route("GET", "/live", self.guarded(self.live, stream=True))
        dashboard_links.register(app, respond, _query_dict)  # the reference dashboard's /dashboard/* links
        # the reference dashboard's JSON endpoints, answered by the proxy (nexus/compat/dashboard_api.py)
        dashboard_api.register(
            app, self.guarded, respond, self.settings.dashboard_proxy_url, self.settings.dashboard_api_key
        )
        return app


def run(settings: Settings, database_url: str) -> None:
    """Serve the dashboard in this process until SIGTERM / SIGINT."""
    logs.configure(settings.log_format, "nexus-dashboard", debug=settings.debug, level=settings.log_level)
    app = Dashboard(settings, database_url).build()
    app.start(host=settings.dashboard_bind, port=settings.dashboard_port, _check_port=False)


__all__ = ["Dashboard", "run"]
