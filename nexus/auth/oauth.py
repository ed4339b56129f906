"""OAuth access tokens kept fresh, with exactly one refresh per credential at a time machine-wide.

Refresh tokens are single-use and rotate: two processes refreshing with the same token means one of
them gets `invalid_grant` and, worse, may overwrite the file with a token that is already spent. So a
refresh takes an exclusive `flock` on a lock file beside the credential (shared by every worker and
process on the machine), re-reads the file under the lock (another process may have refreshed while
we waited), calls the token endpoint only if the token is still due, and writes the rotated tokens
atomically (temp file + rename, unknown fields kept) before anyone uses them. Inside a process,
concurrent requests for the same credential wait on one in-flight refresh. A failed refresh is
remembered briefly so a broken account does not hammer the endpoint; `invalid_grant` marks the
account as needing login until its file changes.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from nexus.auth.credentials import Credential, CredentialStore, parse_credential, write_atomically
from nexus.errors import ProxyError

log = logging.getLogger("nexus.auth")
REFRESH_MARGIN_MS = 60_000
FAILURE_TTL_S = 30.0


@dataclass(slots=True)
class RefreshState:
    last_refresh_at: float | None = None
    last_error: str | None = None
    failed_at: float | None = None
    needs_login: bool = False
    refreshes: int = 0
    failed_refresh_token: str | None = None  # a new file (new login) clears the failure


class OAuthRefresher:
    def __init__(self, store: CredentialStore, token_url: str, client_id: str) -> None:
        self.store = store
        self.token_url = token_url
        self.client_id = client_id
        self._locks: dict[Path, asyncio.Lock] = {}
        self.state: dict[Path, RefreshState] = {}

    def _state(self, path: Path) -> RefreshState:
        return self.state.setdefault(path, RefreshState())

    @staticmethod
    def due(cred: Credential, now_ms: int | None = None) -> bool:
        if cred.expires_at_ms is None:
            return False
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        return cred.expires_at_ms - now_ms <= REFRESH_MARGIN_MS

    async def fresh(self, cred: Credential, *, force: bool = False) -> Credential:
        """A credential whose access token is not about to expire (refreshing it if needed)."""
        if not force and not self.due(cred):
            return cred
        state = self._state(cred.path)
        if state.failed_refresh_token is not None and cred.refresh_token != state.failed_refresh_token:
            state.needs_login, state.failed_at, state.failed_refresh_token = False, None, None
        if state.needs_login:
            raise ProxyError(
                401, f"OAuth account {cred.name!r} needs a new login (nexus oauth login).", "authentication_error"
            )
        if state.failed_at is not None and time.monotonic() - state.failed_at < FAILURE_TTL_S:
            raise ProxyError(502, f"OAuth refresh for {cred.name!r} failed recently: {state.last_error}", "api_error")
        lock = self._locks.setdefault(cred.path, asyncio.Lock())
        stale_token = cred.access_token
        async with lock:
            self.store.invalidate(cred.path)
            current = self.store.load(cred.path) or cred
            if current.access_token != stale_token and not self.due(current):
                return current  # refreshed by another request while we waited
            try:
                refreshed = await asyncio.to_thread(self._refresh_locked, cred.path, stale_token if force else None)
            except OAuthError as exc:
                state.failed_at, state.last_error = time.monotonic(), str(exc)
                state.needs_login = exc.invalid_grant
                state.failed_refresh_token = cred.refresh_token
                save_status(cred.path, needs_login=exc.invalid_grant, last_error=str(exc))
                log.warning("OAuth refresh failed for %s: %s", cred.name, exc)
                status = 401 if exc.invalid_grant else 502
                raise ProxyError(
                    status,
                    f"OAuth refresh for {cred.name!r} failed: {exc}",
                    "authentication_error" if exc.invalid_grant else "api_error",
                ) from None
            state.failed_at, state.last_error = None, None
            state.last_refresh_at = time.time()
            state.refreshes += 1
            save_status(cred.path, needs_login=False, last_refresh_at=state.last_refresh_at)
            self.store.invalidate(cred.path)
            return refreshed

    def _refresh_locked(self, path: Path, rejected_token: str | None) -> Credential:
        """Runs in a thread: the file lock may block while another process refreshes."""
        lock_path = path.with_name(path.name + ".lock")
        with open(lock_path, "a+") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                data = orjson.loads(path.read_bytes())
                current = parse_credential(path, data)
                still_needed = self.due(current) if rejected_token is None else current.access_token == rejected_token
                if not still_needed:
                    return current  # another process refreshed while we waited for the lock
                if not current.refresh_token:
                    raise OAuthError("the credential has no refresh token", invalid_grant=True)
                answer = self._call_token_endpoint(current.refresh_token)
                oauth = dict(data["oauth"])
                oauth["accessToken"] = answer["access_token"]
                oauth["refreshToken"] = answer.get("refresh_token", current.refresh_token)
                oauth["expiresAt"] = int(time.time() * 1000) + int(answer.get("expires_in", 3600)) * 1000
                if "scope" in answer:
                    oauth["scopes"] = str(answer["scope"]).split()
                data = {**data, "oauth": oauth}
                write_atomically(path, data)  # on disk before anyone uses the new token
                return parse_credential(path, data)
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _call_token_endpoint(self, refresh_token: str) -> dict[str, Any]:
        body = orjson.dumps(
            {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": self.client_id}
        )
        req = urllib.request.Request(  # noqa: S310 (the token URL is a validated http(s) setting)
            self.token_url, data=body, method="POST", headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
                answer = orjson.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                detail = orjson.loads(exc.read())
            except orjson.JSONDecodeError:
                detail = {}
            error = detail.get("error") if isinstance(detail, dict) else None
            raise OAuthError(
                f"token endpoint answered {exc.code} ({error or 'no error code'})",
                invalid_grant=error == "invalid_grant",
            ) from None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise OAuthError(f"token endpoint unreachable ({exc.__class__.__name__})") from None
        if not isinstance(answer, dict) or "access_token" not in answer:
            raise OAuthError("token endpoint answer has no access_token")
        return answer


def status_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".json") + ".status.json")


def save_status(path: Path, **fields: object) -> None:
    """What `nexus oauth status` shows: last refresh, last error, whether a new login is needed."""
    target = status_path(path)
    try:
        current = orjson.loads(target.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        current = {}
    current.update(fields)
    try:
        write_atomically(target, current)
    except OSError as exc:
        log.warning("could not record OAuth status for %s: %s", path.name, exc)


def load_status(path: Path) -> dict[str, Any]:
    try:
        return dict(orjson.loads(status_path(path).read_bytes()))
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}


class OAuthError(Exception):
    def __init__(self, message: str, *, invalid_grant: bool = False) -> None:
        super().__init__(message)
        self.invalid_grant = invalid_grant
