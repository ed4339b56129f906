"""Resolving the credential: which project pays, and with which upstream headers.

A client key that fails counts against the caller's address (`FailureThrottle`), so keys cannot be
guessed at speed; an address over the limit is told when to come back. When the upstream refuses a
proxy-held OAuth token (401), the token is refreshed once and the request may be sent once more: the
token may have been revoked or rotated by another holder since it was last refreshed.
"""

from __future__ import annotations

from typing import Any

from nexus.auth.errors import ClientKeyError
from nexus.auth.service import Authorization, RequestAuthorizer
from nexus.errors import ProxyError
from nexus.proxy.headers import upstream_request_headers
from nexus.security.access import DataAccess
from nexus.security.throttle import FailureThrottle


async def resolve_credential(
    authorizer: RequestAuthorizer,
    throttle: FailureThrottle,
    data_access: DataAccess,
    scope: Any,
    header_items: list[tuple[str, str]],
) -> Authorization:
    """Project, account and upstream headers; failed client keys count against the address."""
    if not authorizer.client_auth:
        return await authorizer.authorize(header_items, upstream_request_headers(header_items))
    address = data_access.address(scope.client, scope.headers)
    wait = throttle.retry_after(address)
    if wait is not None:
        raise ProxyError(
            429,
            f"Too many failed client keys from this address; retry in {wait} s.",
            "rate_limit_error",
            headers=[("retry-after", str(wait))],
        )
    try:
        auth = await authorizer.authorize(header_items, upstream_request_headers(header_items))
    except ClientKeyError:
        throttle.failed(address, "client key refused")
        raise
    return auth


def replayable(authorizer: RequestAuthorizer, auth: Authorization, status: int) -> bool:
    """Whether an upstream answer may be cured by refreshing the credential and sending again: a 401
    for a proxy-held OAuth token (an API key that is refused stays refused)."""
    return status == 401 and authorizer.refreshable(auth)


async def refreshed_headers(authorizer: RequestAuthorizer, auth: Authorization) -> list[tuple[str, str]]:
    """The upstream headers to replay with, once the held OAuth token was refreshed (forced)."""
    return (await authorizer.after_unauthorized(auth)).headers
