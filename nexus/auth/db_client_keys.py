"""Client keys in the database (table `client_keys`, migration 0015): salted digests, shared by every instance.

The same records as the files under `CREDENTIALS_DIR/client-keys/` (`nexus.auth.client_keys`), with the
same interface, so the proxy and the MCP endpoint do not care where keys live. A key created or revoked
with `nexus keys` on any machine admits or refuses requests on every instance.

Files keep working: they are imported at start-up, and a presented key the database does not know is
looked up in this machine's files too (a `nexus keys create` run without DATABASE_URL on a single
machine) and imported when found. A revocation recorded in either place wins.

`check` runs on the proxy's event loop, like the file reads it replaces: one indexed lookup by key id,
cached for `RECHECK_S` per key (so a revocation takes effect within a second on every instance). A
database that cannot be reached leaves the files alone to decide, as before.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from typing import Any

import psycopg

from nexus.auth.client_keys import (
    CLIENT_KEY_PREFIXES,
    ID_LENGTH,
    PREFIX,
    ClientKey,
    ClientKeyStore,
    _from_record,
    admit,
    imported_record,
    new_record,
)
from nexus.auth.credentials import RECHECK_S, _bounded_put

log = logging.getLogger("nexus.auth")
_FIELDS = ("key_id", "digest", "project", "name", "preview", "created_at", "expires_at", "revoked_at")
_SELECT = "SELECT key_id, digest, project, name, preview, created_at, expires_at, revoked_at FROM client_keys"
_INSERT = (
    "INSERT INTO client_keys (key_id, digest, project, name, preview, created_at, expires_at, revoked_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (key_id) DO NOTHING"
)
_REVOKE = "UPDATE client_keys SET revoked_at = coalesce(revoked_at, %s) WHERE key_id = %s"
DB_RETRY_S = 5.0


def _record(values: tuple[Any, ...]) -> dict[str, Any]:
    record = dict(zip(_FIELDS, values, strict=True))
    record["id"] = record.pop("key_id")
    return record


class DbClientKeyStore(ClientKeyStore):
    """`ClientKeyStore` whose records live in the database; `files` is this machine's directory of them."""

    def __init__(self, dsn: str, files: ClientKeyStore) -> None:
        self.dsn = dsn
        self.files = files
        self.directory = files.directory
        self._salt = files._salt
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._down_until = 0.0

    # --- the connection --------------------------------------------------------------------------
    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(  # on the event loop: short limits on connecting and on a query
                    self.dsn, autocommit=True, connect_timeout=2, options="-c statement_timeout=2000"
                )
            try:
                cur = self._conn.execute(sql, params)  # type: ignore[arg-type]
                return cur.fetchall() if cur.description is not None else []
            except psycopg.OperationalError:
                self._conn.close()
                self._conn = None
                raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- records ---------------------------------------------------------------------------------
    def _read(self, key_id: str) -> dict[str, Any] | None:
        """The record of `key_id`: the database's, else this machine's file (imported on sight)."""
        self._path(key_id)  # checks the id's form
        now = time.monotonic()
        if now < self._down_until:
            return self.files._read(key_id)
        try:
            rows = self._execute(_SELECT + " WHERE key_id = %s", (key_id,))
            record = _record(rows[0]) if rows else None
            from_file = self.files._read(key_id)
            if from_file is not None and record is None:
                self._insert(from_file)
                record = from_file
            elif from_file is not None and record is not None:
                if from_file.get("revoked_at") is not None and record.get("revoked_at") is None:
                    self._execute(
                        "UPDATE client_keys SET revoked_at = %s WHERE key_id = %s", (from_file["revoked_at"], key_id)
                    )
                    record["revoked_at"] = from_file["revoked_at"]
            return record
        except psycopg.Error as exc:
            log.warning("client keys database unreachable (%s); using this machine's files", exc.__class__.__name__)
            self._down_until = now + DB_RETRY_S
            return self.files._read(key_id)

    def _insert(self, record: dict[str, Any]) -> None:
        self._execute(
            _INSERT,
            (record["id"], record["digest"], record["project"], record.get("name"), record.get("preview", ""),
             record.get("created_at", time.time()), record.get("expires_at"), record.get("revoked_at")),
        )  # fmt: skip

    def _cached(self, key_id: str) -> dict[str, Any] | None:
        now = time.monotonic()
        hit = self._cache.get(key_id)
        if hit is not None and now - hit[0] < RECHECK_S:
            return hit[1]
        record = self._read(key_id)
        _bounded_put(self._cache, key_id, (now, record))
        return record

    # --- the interface of ClientKeyStore ---------------------------------------------------------
    def check(self, presented: str) -> ClientKey:
        digest = self.digest(presented)
        record = self._cached(digest[:ID_LENGTH]) if presented.startswith(CLIENT_KEY_PREFIXES) else None
        return admit(digest, record)

    def create(self, project: str, name: str | None = None, expires_days: float | None = None) -> tuple[ClientKey, str]:
        key = PREFIX + secrets.token_urlsafe(32)
        record = new_record(key, self.digest(key), project, name, expires_days)
        self._insert(record)
        return _from_record(record), key

    def import_key(self, key: str, project: str, name: str | None = None) -> tuple[ClientKey, bool]:
        record = imported_record(key, self.digest(key), project, name)
        existing = self._read(record["id"])
        if existing is not None and hmac.compare_digest(str(existing.get("digest", "")), record["digest"]):
            return _from_record(existing), False
        self._insert(record)
        return _from_record(record), True

    def list(self) -> list[ClientKey]:
        self.import_files()
        return [_from_record(_record(r)) for r in self._execute(_SELECT + " ORDER BY created_at")]

    def revoke(self, key_id: str) -> ClientKey | None:
        if self._read(key_id) is None:
            return None
        self._execute(
            "UPDATE client_keys SET revoked_at = coalesce(revoked_at, %s) WHERE key_id = %s", (time.time(), key_id)
        )
        self._cache.pop(key_id, None)
        return _from_record(_record(self._execute(_SELECT + " WHERE key_id = %s", (key_id,))[0]))

    def import_files(self) -> int:
        """Import every key file of this machine (start-up, `nexus keys list`); how many were new."""
        new = 0
        for key in self.files.list():
            record = self.files._read(key.key_id)
            if record is not None and not self._execute(_SELECT + " WHERE key_id = %s", (key.key_id,)):
                self._insert(record)
                new += 1
            elif key.revoked_at is not None:
                self._execute(_REVOKE, (key.revoked_at, key.key_id))
        return new
