"""The OAuth token endpoint (`CLAUDE_OAUTH_TOKEN_URL`): refreshing tokens and exchanging login codes.

Blocking on purpose: a refresh runs under a machine-wide file lock in a worker thread, and a login
runs in the CLI, so there is nothing to gain from an event loop here and a lot to lose from sharing
the proxy's upstream pool with a different host. Errors carry the endpoint's status and OAuth error
code, never a token or a request body, because they end up in logs and client-facing messages.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import orjson

from nexus.auth.credentials import OAUTH_BETA

TIMEOUT_S = 30.0


class OAuthError(Exception):
    """A refresh or code exchange that failed; `invalid_grant` means only a new login can fix it."""

    def __init__(self, message: str, *, invalid_grant: bool = False) -> None:
        super().__init__(message)
        self.invalid_grant = invalid_grant


@dataclass(frozen=True, slots=True)
class TokenAnswer:
    access_token: str
    refresh_token: str | None
    expires_at_ms: int
    scopes: list[str] | None
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TokenEndpoint:
    url: str
    client_id: str
    timeout_s: float = TIMEOUT_S

    def refresh(self, refresh_token: str) -> TokenAnswer:
        """Spend `refresh_token` (single-use) for a new access token and, usually, a new refresh token."""
        return self._post({"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": self.client_id})

    def exchange_code(self, code: str, state: str, verifier: str, redirect_uri: str) -> TokenAnswer:
        """The last step of the PKCE login: the pasted code and our verifier for the first tokens."""
        return self._post(
            {
                "grant_type": "authorization_code",
                "code": code,
                "state": state,
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
            }
        )

    def _post(self, payload: dict[str, str]) -> TokenAnswer:
        req = urllib.request.Request(  # noqa: S310 (the token URL is a validated http(s) setting)
            self.url,
            data=orjson.dumps(payload),
            method="POST",
            headers={"content-type": "application/json", "accept": "application/json", "anthropic-beta": OAUTH_BETA},
        )
        sent_at_ms = int(time.time() * 1000)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310
                answer = orjson.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise _http_error(exc) from None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise OAuthError(f"token endpoint unreachable or unreadable ({exc.__class__.__name__})") from None
        return _parse_answer(answer, sent_at_ms)


def _http_error(exc: urllib.error.HTTPError) -> OAuthError:
    try:
        detail = orjson.loads(exc.read())
    except (orjson.JSONDecodeError, OSError):
        detail = None
    code = detail.get("error") if isinstance(detail, dict) else None
    code = code if isinstance(code, str) and code.replace("_", "").isalnum() else None  # a code, not free text
    message = f"token endpoint answered {exc.code} ({code or 'no error code'})"
    return OAuthError(message, invalid_grant=code == "invalid_grant")


def _parse_answer(answer: Any, sent_at_ms: int) -> TokenAnswer:
    if not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str) or not answer["access_token"]:
        raise OAuthError("token endpoint answer has no access_token")
    refresh = answer.get("refresh_token")
    expires_in = answer.get("expires_in", 3600)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        raise OAuthError("token endpoint answer has no usable expires_in")
    scope = answer.get("scope")
    return TokenAnswer(
        access_token=answer["access_token"],
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        # counted from when we asked, so the expiry we store is never later than the real one
        expires_at_ms=sent_at_ms + int(expires_in * 1000),
        scopes=scope.split() if isinstance(scope, str) else None,
        raw=answer,
    )
