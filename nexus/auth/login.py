"""`nexus oauth login`: the PKCE (S256) authorization-code flow, and saving its tokens as a credential file.

The operator opens the printed URL, signs in, and pastes back the `code#state` the callback page shows.
Two departures from the reference system's scripts, both deliberate: `state` is its own random value
(the reference reused the PKCE verifier, which put the verifier in the URL and defeated PKCE), and a
pasted state that differs from ours is refused (it belongs to another login attempt). The new file is
written under the credential's machine-wide lock, so a proxy refreshing the old tokens at that moment
cannot overwrite the new login with tokens from the old one.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson

from nexus.auth import oauth_status
from nexus.auth.credentials import Credential, parse_credential
from nexus.auth.files import credential_lock, write_atomically
from nexus.auth.token_endpoint import TokenAnswer, TokenEndpoint
from nexus.settings import Settings

_CODE = re.compile(r"^[A-Za-z0-9._~+/=-]{1,2048}$")


class LoginError(ValueError):
    """A login that cannot go on; the message says what to do."""


@dataclass(frozen=True, slots=True)
class LoginRequest:
    verifier: str
    state: str
    url: str


def start_login(settings: Settings) -> LoginRequest:
    """A fresh verifier and state, and the authorize URL that carries the verifier's S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    state = secrets.token_urlsafe(24)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = {
        "code": "true",
        "client_id": settings.claude_oauth_client_id,
        "response_type": "code",
        "redirect_uri": settings.claude_oauth_redirect_uri,
        "scope": settings.claude_oauth_scopes,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": state,
    }
    return LoginRequest(verifier, state, f"{settings.claude_oauth_authorize_url}?{urlencode(query)}")


def parse_pasted(text: str, expected_state: str) -> str:
    """The authorization code from what the operator pasted: `code#state`, a bare code, or the callback URL."""
    text = text.strip()
    if not text:
        raise LoginError("nothing was pasted: paste the code#state shown after signing in")
    if "://" in text:
        parts = urlsplit(text)
        query = parse_qs(parts.query) | parse_qs(parts.fragment)
        code, state = (query.get("code") or [""])[0], (query.get("state") or [""])[0]
    else:
        code, _, state = text.partition("#")
    if state and state != expected_state:
        raise LoginError("the pasted state does not belong to this login: start `nexus oauth login` again")
    if not _CODE.match(code):
        raise LoginError("the pasted text does not look like an authorization code (expected code#state)")
    return code


def complete_login(settings: Settings, request: LoginRequest, code: str, path: Path) -> Credential:
    """Exchange the code, then save the tokens to `path` (atomically, 0600, under the credential's lock)."""
    endpoint = TokenEndpoint(settings.claude_oauth_token_url, settings.claude_oauth_client_id)
    answer = endpoint.exchange_code(code, request.state, request.verifier, settings.claude_oauth_redirect_uri)
    if answer.refresh_token is None:
        raise LoginError("the token endpoint gave no refresh token; the account could not be refreshed later")
    with credential_lock(path):
        data = login_file(_existing(path), answer, path.name.removesuffix(".credentials.json"))
        write_atomically(path, data)
        oauth_status.record_login(path, answer.refresh_token)
    return parse_credential(path, data)


def _existing(path: Path) -> dict[str, Any]:
    """The current file's content, so a re-login keeps `accountId`, `slack` and unknown fields."""
    try:
        data = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def login_file(existing: dict[str, Any], answer: TokenAnswer, name: str) -> dict[str, Any]:
    found = existing.get("oauth")
    old_oauth: dict[str, Any] = found if isinstance(found, dict) else {}
    data = {k: v for k, v in existing.items() if k != "api_key"}  # a replaced API key must not linger
    data["type"] = "oauth"
    data["accountId"] = existing.get("accountId") or name
    account = answer.raw.get("account")
    if isinstance(account, dict) and isinstance(account.get("email_address"), str):
        data["email"] = account["email_address"]
    data["oauth"] = {
        **old_oauth,
        "accessToken": answer.access_token,
        "refreshToken": answer.refresh_token,
        "expiresAt": answer.expires_at_ms,
        "scopes": answer.scopes or old_oauth.get("scopes") or [],
        "isMax": bool(old_oauth.get("isMax", False)),
    }
    return data
