"""One JSON POST to an outside receiver (a Slack webhook, a telemetry collector, the Spark API).

Blocking on purpose, like the OAuth token endpoint: the integrations call it from a worker thread a
few times per batch, so the proxy's pooled upstream client stays for the upstream. The result never
carries the URL (a Slack webhook URL is itself the credential) or the body. Redirects are not followed:
they would carry the headers (a bearer key) to whatever host the receiver names.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

TIMEOUT_S = 5.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None  # the 3xx is an answer (a failure): no request goes where a receiver points


#: urllib follows 301/302/303 by default, with the request's headers (a Spark bearer key) to any host.
_OPENER = urllib.request.build_opener(_NoRedirect)
#: Longest `Retry-After` honoured; a receiver asking for more is treated as failed for this batch.
MAX_RETRY_AFTER_S = 60.0


@dataclass(frozen=True, slots=True)
class Posted:
    """What the receiver answered: a status (None when it could not be reached) and, on 429 or 503, how
    long it asked us to wait."""

    status: int | None
    retry_after_s: float | None = None
    error: str | None = None
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def post_json(
    url: str, payload: bytes, headers: dict[str, str] | None = None, timeout_s: float = TIMEOUT_S, method: str = "POST"
) -> Posted:
    req = urllib.request.Request(  # noqa: S310 (the URL is a validated http(s) setting)
        url,
        data=payload if method != "GET" else None,
        method=method,
        headers={"content-type": "application/json", "user-agent": "nexus-gateway", **(headers or {})},
    )
    try:
        with _OPENER.open(req, timeout=timeout_s) as resp:
            return Posted(resp.status, body=resp.read(1024 * 1024))
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(64 * 1024)
        except OSError:
            body = b""
        return Posted(exc.code, _retry_after(exc.headers.get("retry-after")), f"answered {exc.code}", body)
    except (OSError, ValueError) as exc:
        return Posted(None, error=f"unreachable ({exc.__class__.__name__})")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= MAX_RETRY_AFTER_S else None
