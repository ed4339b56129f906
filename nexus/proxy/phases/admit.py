"""Admission: every check a request must pass before anything goes upstream.

A failure is a `ProxyError` the client gets as it is, in Anthropic's error shape, and storage keeps
with its reason (and with the body when it was read: `exc.body_read`). The checks run cheapest and
least revealing first: a page of another web origin is refused before its key is even looked at, and
the body (the only slow part: the client's upload) is read only once the key is known good.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from nexus._core import NexusCoreError, RequestAnalysis, analyze_request
from nexus.analysis import marker as analysis_marker
from nexus.api.routes import ApiRoutes
from nexus.auth.projects import ACCOUNT_HEADERS, PROJECT_HEADERS
from nexus.auth.service import RequestAuthorizer, holds_secret
from nexus.errors import ProxyError
from nexus.proxy.body import UploadGuard, check_json_content_type, read_body
from nexus.proxy.headers import ANALYSIS_MARK
from nexus.proxy.paths import FORWARDED_METHODS, upstream_target
from nexus.proxy.phases.credential import resolve_credential
from nexus.proxy.phases.exchange import Admitted
from nexus.security.access import DataAccess
from nexus.security.cors import CorsPolicy
from nexus.security.throttle import FailureThrottle
from nexus.settings import Settings

log = logging.getLogger("nexus.proxy")

SELECTOR_HEADERS = PROJECT_HEADERS + ACCOUNT_HEADERS


class Admission:
    """The admission checks of one worker, with what they consult (built once, with the app)."""

    def __init__(
        self,
        settings: Settings,
        authorizer: RequestAuthorizer,
        throttle: FailureThrottle,
        data_access: DataAccess,
        cors: CorsPolicy,
        uploads: UploadGuard,
        api: ApiRoutes,
    ) -> None:
        self.settings = settings
        self.authorizer = authorizer
        self.throttle = throttle
        self.data_access = data_access
        self.cors = cors
        self.uploads = uploads
        self.api = api
        self.body_idle_s = settings.body_read_idle_timeout_s
        self.body_total_s = settings.body_read_timeout_s

    async def admit(self, scope: Any, proto: Any, path: str, method: str) -> Admitted:
        """Every check before anything goes upstream; a failure is a `ProxyError` the client gets as
        it is (and storage keeps, with the body when it was read: `exc.body_read`)."""
        headers = scope.headers
        self.check_origin(headers)
        if method not in FORWARDED_METHODS:
            raise ProxyError(405, f"Method {method[:20]} is not forwarded.", "invalid_request_error")
        is_messages = path == "/v1/messages"
        if is_messages and method != "POST":
            raise ProxyError(405, f"Method {method} not allowed on /v1/messages; use POST.", "invalid_request_error")
        target = upstream_target(path, scope.query_string)
        header_items = headers.items()
        if len(header_items) != len(headers.keys()):
            check_selectors_readable(headers)
        auth = await resolve_credential(self.authorizer, self.throttle, self.data_access, scope, header_items)
        if auth.client_secret and holds_secret(target, auth.client_secret):
            error = ProxyError(400, "Client keys may not be sent in the URL; send them as x-api-key.")
            error.secret = auth.client_secret  # kept out of the stored path too
            raise error
        analysis_job = await self.analysis_mark(scope) if ANALYSIS_MARK in headers else None
        body: bytes | None = None
        analysis: RequestAnalysis | None = None
        upload_s = 0.0
        if method in ("POST", "PUT", "PATCH") or headers.get("content-length") or headers.get("transfer-encoding"):
            if is_messages:
                check_json_content_type(headers.get("content-type"))
            reading = time.monotonic()
            body = await self.read_body(scope, proto)
            upload_s = time.monotonic() - reading
            if is_messages or path == "/v1/messages/count_tokens":
                try:  # one pass in Rust: the checks, the storage split and the linking hashes
                    analysis = analyze_request(body, strict=is_messages)
                except NexusCoreError as exc:
                    if is_messages:
                        error = ProxyError(400, str(exc), "invalid_request_error")
                        error.body_read = body
                        raise error from None
        return Admitted(auth, target, body, analysis, header_items, upload_s, analysis_job)

    async def analysis_mark(self, scope: Any) -> int:
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

    def check_origin(self, headers: Any) -> None:
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

    async def read_body(self, scope: Any, proto: Any) -> bytes:
        """The client's body, within the size cap and the upload timeouts; a client that uploads slowly
        holds one of a bounded number of slow-upload slots for its address."""
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


def check_selectors_readable(headers: Any) -> None:
    """Granian drops header values that are not ASCII from `get` and `items`; a selector sent that
    way must not fall through to another project (the wrong credential would pay)."""
    present = set(headers.keys())
    for name in SELECTOR_HEADERS:
        if name in present and headers.get(name) is None:
            raise ProxyError(400, f"Invalid {name} header: only ASCII names are accepted.", "invalid_request_error")
