"""The proxy's view of credentials held in the database: one per worker, cached briefly, refreshed once.

Per request the proxy needs "the credential of project P" or "of account A". The answer is cached in
the worker for `RECHECK_S` (the files were re-checked as often), so the hot path is a dict lookup; a
miss reads the row in a worker thread, one read per name however many requests wait for it. A cached
credential is at most `RECHECK_S` behind the database, which is harmless: a token refreshed by another
instance leaves the old access token valid until its expiry, and a token that is due is always re-read
under the lock before anything is decided.

On the same look, the file of that name in this machine's `CREDENTIALS_DIR` (if any) is synced: a file
that changed on disk since this worker last looked is imported (older tokens never win), and a file
that the database has overtaken (a refresh elsewhere) is rewritten. An instance with no file serves
the database's credential all the same.

Refresh is single-flight at three levels: requests of one worker wait on an `asyncio.Lock`; workers and
instances wait on the row's advisory lock (`nexus.auth.db_credentials.refresh_row`), and whoever gets it
second finds the token already fresh and does not call the token endpoint.

When the database cannot be reached, the worker falls back to the files of this machine for reading
(an API key, or an OAuth access token while it is valid), but never refreshes from a file then:
another instance that reaches the database may be refreshing the same account (503 until it is back).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg_pool import ConnectionPool

from nexus.auth import errors, oauth_status
from nexus.auth.credentials import (
    RECHECK_S,
    Credential,
    CredentialError,
    CredentialStore,
    _bounded_put,
    _Stamp,
    _stamp,
)
from nexus.auth.db_credentials import ACCOUNT, PROJECT, Row, fetch, kind_of, known_failure, refresh_row, to_credential
from nexus.auth.db_files import import_file, write_back
from nexus.auth.oauth import REFRESH_MARGIN_MS
from nexus.auth.oauth_status import FAILURE_TTL_S, fingerprint
from nexus.auth.sealing import SecretBox
from nexus.auth.token_endpoint import OAuthError, TokenEndpoint
from nexus.errors import ProxyError
from nexus.observability import metrics

log = logging.getLogger("nexus.auth")
#: Longest statement (a refresh holds its transaction while the token endpoint answers, 30 s at most).
STATEMENT_TIMEOUT_MS = 45_000
#: Longest wait for a connection: past it the worker serves from its files (a database that is away
#: must not hold requests for the pool's default 30 s).
POOL_WAIT_S = 3.0
#: How long a worker keeps using the files alone after the database failed, before trying it again.
DB_RETRY_S = 5.0

_Key = tuple[str, str]  # (kind, name)


@dataclass(frozen=True, slots=True)
class _Failure:
    refresh_fingerprint: str | None
    at: float  # monotonic
    error: OAuthError


def connection_pool(dsn: str, max_size: int = 4) -> ConnectionPool:
    return ConnectionPool(
        dsn,
        min_size=1,
        max_size=max_size,
        open=False,
        timeout=POOL_WAIT_S,
        kwargs={
            "autocommit": True,
            "connect_timeout": 5,
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            "application_name": "nexus-credentials",
        },
        name="nexus-credentials",
    )


class DbCredentials:
    """Credentials by project or account name from the database, for one worker."""

    def __init__(self, dsn: str, box: SecretBox, store: CredentialStore, endpoint: TokenEndpoint) -> None:
        self.dsn = dsn
        self.box = box
        self.store = store  # this machine's files: synced with the database, and the fallback
        self.endpoint = endpoint
        self.refreshes = 0
        self._pool: ConnectionPool | None = None
        self._pool_lock = threading.Lock()
        self._cache: dict[_Key, tuple[float, Credential | None]] = {}
        self._inflight: dict[_Key, asyncio.Future[Credential | None]] = {}
        self._seen: dict[_Key, tuple[_Stamp | None, int]] = {}  # file stamp and row version at the last sync
        self._locks: dict[_Key, asyncio.Lock] = {}
        self._failures: dict[_Key, _Failure] = {}
        self._db_down_until = 0.0

    # --- connections ---------------------------------------------------------------------------
    def pool(self) -> ConnectionPool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = connection_pool(self.dsn)
                self._pool.open(wait=False)
            return self._pool

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    # --- reading -------------------------------------------------------------------------------
    async def get(self, is_account: bool, name: str) -> Credential | None:
        """The credential of a project or account, or None when neither database nor file has one."""
        key = (ACCOUNT if is_account else PROJECT, name)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < RECHECK_S:
            return cached[1]  # only names that passed the check below are ever cached
        path = self.store.account_path(name) if is_account else self.store.project_path(name)  # checks the name
        if now < self._db_down_until:
            return self.store.load(path)
        task = self._inflight.get(key)
        if task is None:  # one read per name however many requests ask; none of them can cancel it
            task = asyncio.ensure_future(self._fetch(key, path, now))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._done, key))
        return await asyncio.shield(task)

    async def _fetch(self, key: _Key, path: Path, now: float) -> Credential | None:
        try:
            cred = await asyncio.to_thread(self._load, key, path)
        except psycopg.Error as exc:
            self._db_down(exc)
            return self.store.load(path)  # CredentialError goes to the caller, as with files alone
        _bounded_put(self._cache, key, (now, cred))
        return cred

    def _done(self, key: _Key, task: asyncio.Future[Credential | None]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here: every caller that still waits gets it too

    def cached(self, is_account: bool, name: str) -> Credential | None:
        """The credential this worker last read for that name, without any I/O (None if it has none)."""
        found = self._cache.get((kind_of(is_account), name))
        return found[1] if found is not None else None

    def _db_down(self, exc: Exception) -> None:
        first_line = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        log.warning(
            "credentials database unreachable (%s); using this machine's files for %g s", first_line, DB_RETRY_S
        )
        self._db_down_until = time.monotonic() + DB_RETRY_S

    def _load(self, key: _Key, path: Path) -> Credential | None:
        """In a thread: sync the file with the database, then the row (or None)."""
        with self.pool().connection() as conn:
            row = self._sync_file(conn, key, path)
        return to_credential(row, self.store.directory) if row is not None else None

    def _sync_file(self, conn: psycopg.Connection[object], key: _Key, path: Path) -> Row | None:
        stamp = _stamp(path)
        seen = self._seen.get(key)
        if stamp is not None and (seen is None or seen[0] != stamp):
            imported = import_file(conn, self.box, path, self.store.where(path))  # type: ignore[arg-type]
            row = imported.row
            if imported.file_stale and _write_back(path, row.raw):
                stamp = _stamp(path)
            self._seen[key] = (stamp, row.version)
            return row
        found = fetch(conn, self.box, *key)  # type: ignore[arg-type]
        if found is not None and stamp is not None and seen is not None and seen[1] != found.version:
            if _write_back(path, found.raw):  # overtaken by the database (a refresh elsewhere)
                stamp = _stamp(path)
            self._seen[key] = (stamp, found.version)
        return found

    # --- refreshing ----------------------------------------------------------------------------
    @staticmethod
    def due(expires_at_ms: int | None, now_ms: int | None = None) -> bool:
        if expires_at_ms is None:
            return False
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        return expires_at_ms - now_ms <= REFRESH_MARGIN_MS

    async def fresh(self, cred: Credential, *, force: bool = False) -> Credential:
        """A credential whose access token is usable: `cred`, or refreshed (forced after a 401)."""
        if cred.version is None:  # read from a file while the database was away: never refreshed then
            return self._unrefreshed(cred, force)
        if not force and not self.due(cred.expires_at_ms):
            return cred
        key = (kind_of(cred.is_account), cred.name)
        if (known := self._known_failure(key, cred)) is not None:
            return self._fallback(cred, known, force)
        async with self._locks.setdefault(key, asyncio.Lock()):
            cached = self._cache.get(key)
            current = cached[1] if cached is not None and cached[1] is not None else cred
            if current.access_token != cred.access_token and not self.due(current.expires_at_ms):
                return current  # refreshed by another request of this worker while we waited
            if (known := self._known_failure(key, current)) is not None:
                return self._fallback(current, known, force)
            return await self._refresh(key, current, force)

    async def _refresh(self, key: _Key, cred: Credential, force: bool) -> Credential:
        rejected = cred.access_token

        def needed(row: Row) -> bool:
            # after a 401: unless someone already replaced the rejected token; else: while still due
            return row.access_token == rejected if force else self.due(row.oauth.get("expiresAt"))

        where = self.store.where(cred.path)
        try:
            refreshed, did = await asyncio.to_thread(self._refresh_sync, key, cred.path, needed)
        except OAuthError as exc:
            metrics.oauth_refresh("failure")
            failure = _Failure(fingerprint(cred.refresh_token), time.monotonic(), exc)
            self._failures[key] = failure
            log.warning("OAuth refresh failed for %s: %s", where, exc)
            return self._fallback(cred, failure, force)
        except CredentialError as exc:
            raise errors.configuration_error(exc) from None
        except psycopg.Error as exc:
            self._db_down(exc)
            raise ProxyError(503, "The credentials database is unreachable; try again shortly.", "api_error") from None
        self._failures.pop(key, None)
        _bounded_put(self._cache, key, (time.monotonic(), refreshed))
        if did:
            metrics.oauth_refresh("success")
            self.refreshes += 1
            log.info("OAuth token refreshed for %s", where)
        return refreshed

    def _refresh_sync(self, key: _Key, path: Path, needed: object) -> tuple[Credential, bool]:
        with self.pool().connection() as conn:
            row, did = refresh_row(conn, self.box, key[0], key[1], self.endpoint, needed)  # type: ignore[arg-type]
        if did:  # committed; now the file of this machine, if it keeps one, as before
            if _write_back(path, row.raw):  # and its status file, for `nexus oauth status` without a database
                with contextlib.suppress(OSError):
                    oauth_status.record_success(path, row.refresh_token)
            self._seen[key] = (_stamp(path), row.version)
        return to_credential(row, self.store.directory), did

    @staticmethod
    def _unrefreshed(cred: Credential, force: bool) -> Credential:
        """A file's OAuth credential while the database is away: its access token while it is valid, no
        refresh. Another instance that reaches the database may be refreshing the same account, and a
        refresh token spent twice is an account lost, so waiting for the database is the safe side."""
        if not force and (cred.expires_at_ms is None or cred.expires_at_ms > time.time() * 1000):
            return cred
        message = "The credentials database is unreachable, so the OAuth token cannot be refreshed safely; try again."
        raise ProxyError(503, message, "api_error")

    def _known_failure(self, key: _Key, cred: Credential) -> _Failure | None:
        failure = self._failures.get(key)
        if failure is None or failure.refresh_fingerprint != fingerprint(cred.refresh_token):
            return None
        if failure.error.invalid_grant or time.monotonic() - failure.at < FAILURE_TTL_S:
            return failure
        return None

    @staticmethod
    def _fallback(cred: Credential, failure: _Failure, force: bool) -> Credential:
        """Use the old token while it is still valid (not after a 401), else answer the failure."""
        if not force and cred.expires_at_ms is not None and cred.expires_at_ms > time.time() * 1000:
            return cred
        if failure.error.invalid_grant:
            raise errors.needs_login(cred)
        raise errors.refresh_failed(cred, str(failure.error))


def _write_back(path: Path, raw: dict[str, object]) -> bool:
    """`write_back`, where a file that cannot be written is a warning: the database holds the truth."""
    try:
        return write_back(path, raw)
    except OSError as exc:
        log.warning("newer tokens of %s not written back to its file (%s)", path.name, exc.strerror)
        return False


__all__ = ["DbCredentials", "connection_pool", "known_failure"]
