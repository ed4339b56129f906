"""One OAuth refresh of one credential file, under its machine-wide lock (blocking; run it in a thread).

Every path that spends a refresh token comes through here: the proxy before expiry and after an
upstream 401, and `nexus oauth refresh`. Under the lock the file is read again, because another
process may have refreshed it while we waited; the endpoint is called only if the caller's condition
still holds; the rotated tokens are written atomically (unknown fields kept) before anyone can use
them, and the outcome is recorded in the status file, all before the lock is released.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nexus.auth import oauth_status
from nexus.auth.credentials import Credential, CredentialError, parse_credential, read_credential
from nexus.auth.files import credential_lock, write_atomically
from nexus.auth.token_endpoint import OAuthError, TokenAnswer, TokenEndpoint

log = logging.getLogger("nexus.auth")


def refresh_credential(
    path: Path,
    endpoint: TokenEndpoint,
    needed: Callable[[Credential], bool],
    *,
    where: str | None = None,
    honour_failures: bool = True,
) -> tuple[Credential, bool]:
    """The credential after the refresh (or as found, if `needed` says it no longer is), and whether we refreshed.

    `honour_failures` respects the machine-wide memory of recent failures and of `invalid_grant`;
    an operator's explicit `nexus oauth refresh` passes False to try regardless.
    """
    with credential_lock(path):
        current = read_credential(path, where)
        if current.kind != "oauth":
            raise CredentialError(f"{where or path.name}: not an OAuth credential (type is {current.kind!r})")
        if not needed(current):
            return current, False
        token = current.refresh_token
        if not token:
            raise OAuthError("the credential has no refresh token", invalid_grant=True)
        if honour_failures:
            _raise_if_known_to_fail(path, token)
        try:
            answer = endpoint.refresh(token)
        except OAuthError as exc:
            _record(oauth_status.record_failure, path, token, str(exc), invalid_grant=exc.invalid_grant)
            raise
        data = rotated(current.raw, answer, token)
        try:
            write_atomically(path, data)  # on disk before anyone uses the new token
        except OSError as exc:
            raise OAuthError(f"the rotated tokens could not be saved ({exc.strerror})") from None
        _record(oauth_status.record_success, path, data["oauth"]["refreshToken"])
        return parse_credential(path, data, where), True


def _raise_if_known_to_fail(path: Path, token: str) -> None:
    status = oauth_status.load_status(path)
    if oauth_status.needs_login(status, token):
        raise OAuthError("this refresh token was already refused (invalid_grant)", invalid_grant=True)
    if (error := oauth_status.recent_failure(status, token)) is not None:
        raise OAuthError(f"{error}; not retried for {oauth_status.FAILURE_TTL_S:g} s")


def rotated(raw: dict[str, Any], answer: TokenAnswer, old_refresh: str | None) -> dict[str, Any]:
    """The file's content with the new tokens; every other field, known or not, kept as it was."""
    oauth = dict(raw.get("oauth") or {})
    oauth["accessToken"] = answer.access_token
    oauth["refreshToken"] = answer.refresh_token or old_refresh  # the endpoint may keep the old one
    oauth["expiresAt"] = answer.expires_at_ms
    if answer.scopes is not None:
        oauth["scopes"] = answer.scopes
    return {**raw, "oauth": oauth}


def _record(fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """Status is advisory: failing to write it must not fail a refresh whose tokens are already saved."""
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        log.warning("could not write the OAuth status file beside %s (%s)", args[0].name, exc.strerror)
