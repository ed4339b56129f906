"""The one call the proxy makes per request: who is this for, and with which credential does it go up.

In: the request's headers. Out: the project, the account, and the exact header list to send
upstream. A proxy-held credential, when one applies, replaces whatever the caller sent; otherwise the
caller's own `x-api-key` / `Authorization` passes through. A client key issued by this gateway is
never forwarded. Selector headers never decide authorization.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nexus.auth.client_keys import PREFIX, ClientKeyStore
from nexus.auth.credentials import OAUTH_BETA, Credential, CredentialError, CredentialStore, merge_beta
from nexus.auth.oauth import OAuthRefresher
from nexus.auth.projects import resolve_project
from nexus.errors import ProxyError
from nexus.settings import Settings

log = logging.getLogger("nexus.auth")
WWW_AUTHENTICATE = [("www-authenticate", 'Bearer realm="nexus"')]
_CALLER_AUTH = frozenset({"x-api-key", "authorization"})


@dataclass(slots=True)
class Authorization:
    project_id: str
    account_id: str | None
    headers: list[tuple[str, str]]
    credential: Credential | None


class RequestAuthorizer:
    def __init__(self, settings: Settings) -> None:
        self.store = CredentialStore(settings.credentials_dir)
        self.refresher = OAuthRefresher(self.store, settings.claude_oauth_token_url, settings.claude_oauth_client_id)
        self.client_keys: ClientKeyStore | None = None
        if settings.enable_client_auth:
            if not settings.api_key_salt:
                raise ValueError("ENABLE_CLIENT_AUTH needs API_KEY_SALT to be set")
            self.client_keys = ClientKeyStore(settings.credentials_dir, settings.api_key_salt)

    def announce(self) -> None:
        """One line at start-up when OAuth accounts are loaded (see docs/credentials.md for the policy)."""
        try:
            oauth = [c.name for c in self.store.all() if c.kind == "oauth"]
        except CredentialError as exc:
            log.error("credential file problem: %s", exc)
            return
        if oauth:
            log.warning(
                "OAuth accounts loaded (%s): subscription credentials are for their owner's own use; "
                "see docs/credentials.md",
                ", ".join(oauth),
            )

    async def authorize(self, header_items: list[tuple[str, str]], upstream: list[tuple[str, str]]) -> Authorization:
        headers = dict(header_items)
        key_project = None
        client_key_header = None
        if self.client_keys is not None:
            presented, client_key_header = _presented_key(headers)
            key = self.client_keys.verify(presented) if presented else None
            if key is None:
                raise ProxyError(
                    401,
                    "A valid client key is required (x-api-key or Authorization: Bearer).",
                    "authentication_error",
                    headers=WWW_AUTHENTICATE,
                )
            key_project = key.project
        project = resolve_project(headers, key_project)
        account = headers.get("x-train-account") or headers.get("msl-account")
        try:
            cred = self.store.for_account(account) if account else self.store.for_project(project)
        except CredentialError as exc:
            raise ProxyError(500, f"Credential configuration error: {exc}", "api_error") from None
        if account and cred is None:
            raise ProxyError(400, f"Unknown account {account!r}.", "invalid_request_error")
        out = [(k, v) for k, v in upstream if k != client_key_header]
        if cred is None:
            return Authorization(project, None, out, None)
        if cred.kind == "oauth":
            cred = await self.refresher.fresh(cred)
        return Authorization(project, cred.account_id, self.with_credential(out, cred), cred)

    @staticmethod
    def with_credential(upstream: list[tuple[str, str]], cred: Credential) -> list[tuple[str, str]]:
        out = [(k, v) for k, v in upstream if k not in _CALLER_AUTH and k != "anthropic-beta"]
        out += cred.auth_headers()
        beta = next((v for k, v in upstream if k == "anthropic-beta"), None)
        if cred.kind == "oauth":
            out.append(("anthropic-beta", merge_beta(beta, [OAUTH_BETA])))
        elif beta is not None:
            out.append(("anthropic-beta", beta))
        return out

    async def after_unauthorized(self, auth: Authorization) -> Authorization | None:
        """On an upstream 401 for an OAuth credential: refresh once and give the headers to retry with."""
        if auth.credential is None or auth.credential.kind != "oauth":
            return None
        cred = await self.refresher.fresh(auth.credential, force=True)
        return Authorization(auth.project_id, cred.account_id, self.with_credential(auth.headers, cred), cred)


def _presented_key(headers: dict[str, str]) -> tuple[str | None, str | None]:
    """The client key and the header it came in, checking x-api-key then Authorization: Bearer."""
    api_key = headers.get("x-api-key")
    if api_key and api_key.startswith(PREFIX):
        return api_key, "x-api-key"
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].startswith(PREFIX):
        return auth[7:], "authorization"
    return api_key or (auth[7:] if auth[:7].lower() == "bearer " else None), None
