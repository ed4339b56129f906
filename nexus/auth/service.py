"""The one call the proxy makes per request: who is this for, and with which credential does it go up.

In: the request's headers. Out: the project, the account, and the exact header list to send
upstream. A proxy-held credential, when one applies, replaces whatever the caller sent; otherwise the
caller's own `x-api-key` / `Authorization` passes through. A client key issued by this gateway is
never forwarded, whether or not client authentication is on. Selector headers choose a project or an
account; they never authenticate anyone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import unquote

from nexus.auth import errors
from nexus.auth.client_keys import (
    PREFIX,
    ClientKeyRejected,
    ClientKeyStore,
    UnknownClientKey,
    carries_base64_key,
    carries_client_key,
    is_client_key,
)
from nexus.auth.credentials import OAUTH_BETA, Credential, CredentialError, CredentialStore, merge_beta
from nexus.auth.db_client_keys import DbClientKeyStore
from nexus.auth.db_store import DbCredentials
from nexus.auth.oauth import OAuthRefresher
from nexus.auth.projects import requested_account, resolve_project
from nexus.auth.reference_keys import ReferenceKeyIndex
from nexus.auth.sealing import load_box
from nexus.auth.token_endpoint import TokenEndpoint
from nexus.settings import Settings

log = logging.getLogger("nexus.auth")
_CALLER_AUTH = frozenset({"x-api-key", "authorization"})
#: Headers a client key may hide in as base64 (credentials and cookies).
_DEEP_CHECKED = _CALLER_AUTH | {"cookie"}
POLICY_NOTICE = (
    "OAuth accounts loaded ({names}): subscription credentials are for their owner's own use "
    "(Anthropic: each person uses their own subscription); see docs/credentials.md"
)


@dataclass(slots=True)
class Authorization:
    project_id: str
    account_id: str | None
    headers: list[tuple[str, str]]
    credential: Credential | None
    #: The secret part of the client key the request presented (to keep it out of anything forwarded).
    client_secret: str | None = None


class RequestAuthorizer:
    def __init__(self, settings: Settings) -> None:
        self.store = CredentialStore(settings.credentials_dir)
        endpoint = TokenEndpoint(settings.claude_oauth_token_url, settings.claude_oauth_client_id)
        self.refresher: OAuthRefresher | DbCredentials = OAuthRefresher(self.store, endpoint)
        #: Credentials in the database (shared by every instance), when this process has one.
        self.db: DbCredentials | None = None
        if settings.credentials_database:
            box = load_box(settings.nexus_secret_key, settings.nexus_home)
            self.db = DbCredentials(settings.credentials_database, box, self.store, endpoint)
            self.refresher = self.db
        self.client_auth = settings.enable_client_auth
        self.default_project = settings.default_project_id
        self.client_keys: ClientKeyStore | None = None
        self.reference_keys = ReferenceKeyIndex(settings.credentials_dir, settings.client_keys_dir)
        if settings.enable_client_auth and settings.api_key_salt:
            self.client_keys = client_key_store(settings)

    async def authorize(self, header_items: list[tuple[str, str]], upstream: list[tuple[str, str]]) -> Authorization:
        headers = dict(header_items)
        key_project = self._client_project(headers)
        project = resolve_project(headers, key_project, self.default_project)
        cred = await self._credential(headers, project)
        presented = presented_client_key(headers) if key_project is not None else None
        secret = _secret_part(presented)
        out = without_client_keys(upstream, secret)
        if cred is None:
            if key_project is not None and not any(k in _CALLER_AUTH for k, _ in out):
                raise errors.no_upstream_credential(project)  # the client key was all it sent
            return Authorization(project, None, out, None, secret)
        if cred.kind == "oauth":
            cred = await self.refresher.fresh(cred)
        return Authorization(project, cred.account_id, with_credential(out, cred), cred, secret)

    def _client_project(self, headers: dict[str, str]) -> str | None:
        """The project of the presented client key when client authentication is on (401 otherwise)."""
        if not self.client_auth:
            return None
        presented = presented_client_key(headers)
        if presented is None:
            raise errors.client_key_required("No client key was sent.", presented=False)
        refused: ClientKeyRejected = UnknownClientKey("The client key is not valid.")
        if self.client_keys is not None:
            try:
                return self.client_keys.check(presented).project
            except UnknownClientKey as exc:
                refused = exc  # perhaps a key the reference system kept in a file
            except ClientKeyRejected as exc:  # a record says revoked or expired: the files do not overrule it
                raise errors.client_key_required(str(exc)) from None
        project = self.reference_keys.project_for(presented)
        if project is None:
            raise errors.client_key_required(str(refused))
        return project

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
        if isinstance(self.client_keys, DbClientKeyStore):
            self.client_keys.close()

    async def _credential(self, headers: dict[str, str], project: str) -> Credential | None:
        account = requested_account(headers)
        try:
            if self.db is not None:
                cred = await self.db.get(account is not None, account or project)
            else:
                cred = self.store.for_account(account) if account else self.store.for_project(project)
        except CredentialError as exc:
            raise errors.configuration_error(exc) from None
        if account and cred is None:
            raise errors.unknown_account(account)
        return cred

    @staticmethod
    def refreshable(auth: Authorization) -> bool:
        """Whether an upstream 401 for this request may be cured by refreshing a proxy-held OAuth token."""
        return auth.credential is not None and auth.credential.kind == "oauth"

    async def after_unauthorized(self, auth: Authorization) -> Authorization:
        """After an upstream 401 for an OAuth credential: refresh once, and the headers to replay with."""
        assert auth.credential is not None
        cred = await self.refresher.fresh(auth.credential, force=True)
        return Authorization(
            auth.project_id, cred.account_id, with_credential(auth.headers, cred), cred, auth.client_secret
        )


def client_key_store(settings: Settings) -> ClientKeyStore:
    """Where client keys live: the database when this process has one (shared by every instance), else
    the files under CREDENTIALS_DIR/client-keys/. Needs API_KEY_SALT."""
    assert settings.api_key_salt is not None
    files = ClientKeyStore(settings.credentials_dir, settings.api_key_salt)
    if settings.credentials_database:
        return DbClientKeyStore(settings.credentials_database, files)
    return files


def _secret_part(presented: str | None) -> str | None:
    """What of a presented client key must never leave: past our prefix for our keys (the prefix alone
    is no secret), the whole of any other key (a reference key may have any form)."""
    if not presented:
        return None
    if presented.startswith(PREFIX):
        return presented[len(PREFIX) :] if len(presented) > len(PREFIX) + 8 else None
    return presented


def presented_client_key(headers: dict[str, str]) -> str | None:
    """The key a client presents: `x-api-key` first, then `Authorization` (`Bearer <key>` with any
    whitespace, or the bare key)."""
    candidates = [(headers.get("x-api-key") or "").strip(), _authorization_token(headers.get("authorization"))]
    for value in candidates:
        if is_client_key(value):
            return value
    return next((v for v in candidates if v), None)  # not one of ours: rejected, with the same message


def _authorization_token(value: str | None) -> str:
    parts = (value or "").split(None, 1)
    if len(parts) == 2 and parts[0].lower() == "bearer":
        return parts[1].strip()
    return parts[0] if len(parts) == 1 else ""


def without_client_keys(upstream: list[tuple[str, str]], secret: str | None = None) -> list[tuple[str, str]]:
    """The upstream headers minus every header that carries one of our client keys, in whatever form
    (`nexus.auth.client_keys.carries_client_key`), or the secret part of the key this request
    presented: a client key authorises a caller to this gateway and must never reach Anthropic.

    Most requests carry no `cnp_` and no `%` in any header: then only the base64 look into credential
    headers and cookies can find a key, and the other headers are not judged one by one (two checks per
    header were a tenth of Nexus's own Python per request)."""
    if not secret:
        text = "\0".join(map("\0".join, upstream))
        if "%" not in text and "cnp_" not in text.lower():  # so only base64 can hide one
            return [(k, v) for k, v in upstream if not (k in _DEEP_CHECKED and carries_base64_key(v))]
    return [
        (k, v)
        for k, v in upstream
        if not carries_client_key(v, deep=k in _CALLER_AUTH or k == "cookie")
        and not carries_client_key(k)
        and not (secret and (holds_secret(v, secret) or holds_secret(k, secret)))
    ]


def holds_secret(text: str, secret: str) -> bool:
    """`secret` in `text` in any case, or percent-encoded."""
    lowered = secret.lower()
    return lowered in text.lower() or ("%" in text and lowered in unquote(text).lower())


def with_credential(upstream: list[tuple[str, str]], cred: Credential) -> list[tuple[str, str]]:
    """Replace the caller's credential with `cred`; for OAuth, merge the OAuth beta into `anthropic-beta`."""
    out = [(k, v) for k, v in upstream if k not in _CALLER_AUTH and k != "anthropic-beta"]
    out += cred.auth_headers()
    betas = [v for k, v in upstream if k == "anthropic-beta"]
    beta = ",".join(betas) if betas else None
    if cred.kind == "oauth":
        out.append(("anthropic-beta", merge_beta(beta, [OAUTH_BETA])))
    elif beta is not None:
        out.append(("anthropic-beta", beta))
    return out


def startup_lines(settings: Settings, stored_oauth: list[str] | None = None) -> list[str]:
    """What start-up reports about credentials: one policy notice if OAuth accounts are loaded, and bad
    files. `stored_oauth`: the OAuth credentials the database holds, when credentials live there."""
    creds, problems = CredentialStore(settings.credentials_dir).all()
    lines = [f"credential file problem: {exc}" for exc in problems]
    oauth = [("accounts/" if c.is_account else "") + c.name for c in creds if c.kind == "oauth"]
    if stored_oauth is not None:
        oauth = stored_oauth
    if oauth:
        lines.append(POLICY_NOTICE.format(names=", ".join(oauth)))
    return lines
