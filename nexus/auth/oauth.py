"""OAuth access tokens kept fresh in the proxy: at most one refresh per credential at a time, machine-wide.

Refresh tokens are single-use and rotate, so two refreshes of one credential spend one token twice and
the loser gets `invalid_grant`. Inside a worker, concurrent requests for a credential wait on one
`asyncio.Lock` and then find the token already fresh; across workers and processes, the refresh itself
runs under the credential's file lock (`nexus.auth.refresh`), in a thread so the event loop keeps
serving while another process holds the lock.

Refreshes happen before expiry (60 s margin) and once after an upstream 401. A failed refresh is
remembered briefly (here and, for other processes, in the status file) so a broken account does not
hammer the endpoint; `invalid_grant` marks the account as needing login until its refresh token
changes (a new login). When a proactive refresh fails but the access token has not actually expired
yet, the request still goes out with it: the margin is ours, not the API's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from nexus.auth import errors
from nexus.auth.credentials import Credential, CredentialError, CredentialStore
from nexus.auth.oauth_status import FAILURE_TTL_S, fingerprint
from nexus.auth.refresh import refresh_credential
from nexus.auth.token_endpoint import OAuthError, TokenEndpoint
from nexus.errors import ProxyError
from nexus.observability import metrics

log = logging.getLogger("nexus.auth")
REFRESH_MARGIN_MS = 60_000


@dataclass(frozen=True, slots=True)
class _Failure:
    refresh_fingerprint: str | None
    at: float  # monotonic
    reason: str
    invalid_grant: bool


class OAuthRefresher:
    def __init__(self, store: CredentialStore, endpoint: TokenEndpoint) -> None:
        self.store = store
        self.endpoint = endpoint
        self.refreshes = 0
        self._locks: dict[Path, asyncio.Lock] = {}
        self._failures: dict[Path, _Failure] = {}

    @staticmethod
    def due(cred: Credential, now_ms: int | None = None) -> bool:
        if cred.expires_at_ms is None:
            return False
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        return cred.expires_at_ms - now_ms <= REFRESH_MARGIN_MS

    async def fresh(self, cred: Credential, *, force: bool = False) -> Credential:
        """A credential whose access token is usable: `cred` itself, or refreshed (forced after a 401)."""
        if not force and not self.due(cred):
            return cred
        if (known := self._known_failure(cred)) is not None:
            return self._fallback(cred, known, force)
        async with self._locks.setdefault(cred.path, asyncio.Lock()):
            current = self._reload(cred)
            if current.access_token != cred.access_token and not self.due(current):
                return current  # refreshed by another request (or process) while we waited
            if (known := self._known_failure(current)) is not None:
                return self._fallback(current, known, force)
            return await self._refresh(current, force)

    async def _refresh(self, cred: Credential, force: bool) -> Credential:
        rejected = cred.access_token

        def needed(on_disk: Credential) -> bool:
            # after a 401: unless someone already replaced the rejected token; else: while still due
            return on_disk.access_token == rejected if force else self.due(on_disk)

        where = self.store.where(cred.path)
        try:
            refreshed, did = await asyncio.to_thread(refresh_credential, cred.path, self.endpoint, needed, where=where)
        except OAuthError as exc:
            metrics.oauth_refresh("failure")
            failure = _Failure(fingerprint(cred.refresh_token), time.monotonic(), str(exc), exc.invalid_grant)
            self._failures[cred.path] = failure
            log.warning("OAuth refresh failed for %s: %s", where, exc)
            return self._fallback(cred, failure, force)
        except CredentialError as exc:
            raise errors.configuration_error(exc) from None
        except FileNotFoundError:
            raise errors.configuration_error(CredentialError(f"{where}: removed during a refresh")) from None
        except OSError as exc:  # e.g. a read-only directory: no lock file, no rotated tokens
            problem = CredentialError(f"{where}: cannot be refreshed ({exc.strerror})")
            raise errors.configuration_error(problem) from None
        finally:
            self.store.invalidate(cred.path)
        self._failures.pop(cred.path, None)
        if did:
            metrics.oauth_refresh("success")
            self.refreshes += 1
            log.info("OAuth token refreshed for %s", where)
        return refreshed

    def _reload(self, cred: Credential) -> Credential:
        self.store.invalidate(cred.path)
        try:
            return self.store.load(cred.path) or cred
        except CredentialError as exc:
            raise errors.configuration_error(exc) from None

    def _known_failure(self, cred: Credential) -> _Failure | None:
        failure = self._failures.get(cred.path)
        if failure is None or failure.refresh_fingerprint != fingerprint(cred.refresh_token):
            return None  # never failed, or a new login replaced the refresh token since
        if failure.invalid_grant or time.monotonic() - failure.at < FAILURE_TTL_S:
            return failure
        return None

    @staticmethod
    def _fallback(cred: Credential, failure: _Failure, force: bool) -> Credential:
        """Use the old token while it is still valid (not after a 401), else answer the failure."""
        if not force and cred.expires_at_ms is not None and cred.expires_at_ms > time.time() * 1000:
            return cred
        error: ProxyError = (
            errors.needs_login(cred) if failure.invalid_grant else errors.refresh_failed(cred, failure.reason)
        )
        raise error
