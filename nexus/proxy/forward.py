"""Opening the upstream exchange, with retries while nothing has reached the client yet.

The result is an open response whose head has arrived and whose body has not been read: the caller
streams or buffers it. Once a byte has gone to the client nothing is retried, so no response is ever
duplicated or spliced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from nexus.errors import ProxyError
from nexus.proxy.deadline import Deadline
from nexus.proxy.retry import RetryPolicy, is_retryable_status, parse_retry_after
from nexus.proxy.upstream import NetworkError, RequestError, Response, Upstream

log = logging.getLogger("nexus.proxy")


@dataclass(slots=True)  # pragma: no mutate (slots save memory)
class OpenResponse:
    """An upstream response with its head received; `close()` must be awaited exactly once."""

    response: Response
    attempts: int
    _request: object

    async def close(self) -> None:
        await self._request.__aexit__(None, None, None)  # type: ignore[attr-defined]


async def open_upstream(
    upstream: Upstream,
    policy: RetryPolicy,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes | None,
    head_timeout_s: float,
    on_retry: Callable[[str], None] | None = None,
) -> OpenResponse:
    """Send the request; retry connect failures, 5xx and 529 per `policy`. `on_retry` is told why
    each retry happens (`overloaded`, `server_error`, `connect_timeout`, `connection`)."""
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        request = upstream.request(method, target, headers, body)
        try:
            with Deadline(head_timeout_s) as deadline:
                response = await request.__aenter__()
        except TimeoutError as exc:
            if deadline.expired:
                error = ProxyError(504, f"Upstream did not answer within {head_timeout_s:g} s.", "timeout_error")
                error.attempts = attempt
                raise error from None
            failure = f"connect timeout ({exc.__class__.__name__})"
            reason = "connect_timeout"
        except (NetworkError, RequestError) as exc:
            failure = f"{exc.__class__.__name__}: {exc}"
            reason = "connection"
        else:
            if not is_retryable_status(response.status) or response.get_header("x-should-retry") == "false":
                return OpenResponse(response, attempt, request)
            retry_after = parse_retry_after(response.get_header("retry-after"))
            delay = policy.next_delay(attempt, time.monotonic() - started, retry_after)
            if delay is None:
                return OpenResponse(response, attempt, request)  # out of attempts: the client sees this error
            await request.__aexit__(None, None, None)
            if on_retry is not None:
                on_retry("overloaded" if response.status == 529 else "server_error")
            log.warning("upstream answered %s on attempt %d; retrying in %.2fs", response.status, attempt, delay)
            await asyncio.sleep(delay)
            continue
        delay = policy.next_delay(attempt, time.monotonic() - started)
        if delay is None:
            error = ProxyError(
                502, f"Could not reach the upstream API after {attempt} attempt(s): {failure}.", "api_error"
            )
            error.attempts = attempt
            raise error
        if on_retry is not None:
            on_retry(reason)
        log.warning("upstream unreachable on attempt %d (%s); retrying in %.2fs", attempt, failure, delay)
        await asyncio.sleep(delay)
