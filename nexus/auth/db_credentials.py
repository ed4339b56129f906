"""Credentials in PostgreSQL (table `credentials`, migration 0015): the truth every instance shares.

Blocking psycopg on purpose, like `nexus.auth.refresh`: the proxy calls these in a worker thread, the
CLI directly. Every change of a row happens in one transaction holding the row's advisory lock
(`pg_advisory_xact_lock` on `nexus-credential:<kind>:<name>`) and the row lock, and bumps `version`:

- a refresh re-reads the row under the lock, calls the token endpoint only if the caller's condition
  still holds (another instance may have refreshed while we waited), and commits the rotated tokens
  before the new access token is returned to anyone; the others, waiting on the lock, then read the
  committed tokens. Refresh tokens are single-use: this is what keeps two machines from spending one.
- an import (from a file) never replaces newer OAuth tokens with older ones: a file whose `expiresAt`
  is not later than the database's keeps the database's tokens (its other fields are taken), and the
  caller is told the file is stale so it can be rewritten from the database.

Connections must be in autocommit mode: each change opens its own transaction (`conn.transaction()`),
which is what holds and then releases the transaction-scoped advisory lock.

The credential document (the file's JSON, unknown fields kept) is stored sealed with
`NEXUS_SECRET_KEY` (`nexus.auth.sealing`); the clear columns hold nothing secret.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg

from nexus.auth.credentials import SUFFIX, Credential, CredentialError, parse_credential
from nexus.auth.oauth_status import FAILURE_TTL_S, fingerprint
from nexus.auth.refresh import rotated
from nexus.auth.sealing import SealingError, SecretBox
from nexus.auth.token_endpoint import OAuthError, TokenEndpoint

PROJECT = "project"
ACCOUNT = "account"

_COLUMNS = (
    "kind, name, type, account_id, sealed, key_id, expires_at_ms, version, source, refresh_fingerprint, "
    "extract(epoch FROM last_refresh_at)::float8, extract(epoch FROM last_login_at)::float8, "
    "extract(epoch FROM failed_at)::float8, last_error, needs_login"
)


_INSERT = (
    "INSERT INTO credentials (kind, name, type, account_id, sealed, key_id, expires_at_ms, source, "
    "refresh_fingerprint, last_login_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, "
    "CASE WHEN %s THEN now() END) RETURNING "
)
_UPDATE = (
    "UPDATE credentials SET type = %s, account_id = %s, sealed = %s, key_id = %s, expires_at_ms = %s, "
    "source = coalesce(%s, source), version = version + 1, updated_at = now(), "
    "refresh_fingerprint = CASE WHEN %s THEN %s ELSE refresh_fingerprint END, "
    "last_refresh_at = CASE WHEN %s = 'refresh' THEN now() ELSE last_refresh_at END, "
    "last_login_at = CASE WHEN %s = 'login' THEN now() ELSE last_login_at END, "
    "failed_at = CASE WHEN %s THEN NULL ELSE failed_at END, "
    "last_error = CASE WHEN %s THEN NULL ELSE last_error END, "
    "needs_login = CASE WHEN %s THEN false ELSE needs_login END "
    "WHERE kind = %s AND name = %s AND version = %s RETURNING "
)


@dataclass(slots=True)
class Row:
    """One credential as stored, its document opened."""

    kind: str
    name: str
    type: str
    account_id: str
    raw: dict[str, Any]
    key_id: str
    expires_at_ms: int | None
    version: int
    source: str | None
    refresh_fingerprint: str | None
    last_refresh_at: float | None
    last_login_at: float | None
    failed_at: float | None
    last_error: str | None
    needs_login: bool

    @property
    def oauth(self) -> dict[str, Any]:
        found = self.raw.get("oauth")
        return found if isinstance(found, dict) else {}

    @property
    def access_token(self) -> str | None:
        return self.oauth.get("accessToken")

    @property
    def refresh_token(self) -> str | None:
        return self.oauth.get("refreshToken") or None

    @property
    def label(self) -> str:
        """How messages name it: like the file it would be (`accounts/x` or the project name)."""
        return f"accounts/{self.name}" if self.kind == ACCOUNT else self.name


@dataclass(frozen=True, slots=True)
class Imported:
    outcome: str  # imported | unchanged | updated | kept newer tokens | replaced by login
    row: Row
    #: The database holds newer tokens than the document imported: its file should be rewritten.
    file_stale: bool


def kind_of(is_account: bool) -> str:
    return ACCOUNT if is_account else PROJECT


def file_path(credentials_dir: Path, kind: str, name: str) -> Path:
    """Where this machine keeps (or would keep) the credential's file."""
    base = credentials_dir / "accounts" if kind == ACCOUNT else credentials_dir
    return base / f"{name}{SUFFIX}"


def to_credential(row: Row, credentials_dir: Path) -> Credential:
    cred = parse_credential(file_path(credentials_dir, row.kind, row.name), row.raw, f"{row.label} (database)")
    cred.version = row.version
    return cred


def _lock(conn: psycopg.Connection[Any], kind: str, name: str) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"nexus-credential:{kind}:{name}",))


def _row(box: SecretBox, values: tuple[Any, ...]) -> Row:
    kind, name, type_, account_id, sealed, key_id, expires, version, source = values[:9]
    try:
        raw = orjson.loads(box.open(sealed, key_id))
    except SealingError as exc:
        raise CredentialError(f"{'accounts/' if kind == ACCOUNT else ''}{name} (database): {exc}") from None
    return Row(kind, name, type_, account_id, raw, key_id, expires, version, source, *values[9:])


def fetch(
    conn: psycopg.Connection[Any], box: SecretBox, kind: str, name: str, *, for_update: bool = False
) -> Row | None:
    sql = f"SELECT {_COLUMNS} FROM credentials WHERE kind = %s AND name = %s"  # noqa: S608 (constant columns)
    sql += " FOR UPDATE" if for_update else ""
    found = conn.execute(sql, (kind, name)).fetchone()  # type: ignore[arg-type]
    return _row(box, found) if found is not None else None


def all_rows(conn: psycopg.Connection[Any], box: SecretBox) -> list[Row]:
    """Every credential: projects first, then accounts, each by name."""
    sql = f"SELECT {_COLUMNS} FROM credentials ORDER BY kind DESC, name"  # noqa: S608 (constant columns)
    rows = conn.execute(sql).fetchall()  # type: ignore[arg-type]
    return [_row(box, r) for r in rows]


def _expiry(raw: dict[str, Any]) -> int:
    oauth = raw.get("oauth")
    value = oauth.get("expiresAt") if isinstance(oauth, dict) else None
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _tokens(raw: dict[str, Any]) -> tuple[Any, Any]:
    oauth = raw.get("oauth")
    return (oauth.get("accessToken"), oauth.get("refreshToken")) if isinstance(oauth, dict) else (None, None)


def older_tokens(file_raw: dict[str, Any], db_raw: dict[str, Any]) -> bool:
    """Whether a document's OAuth tokens are older than the database's (so must not replace them):
    both OAuth, different tokens, and the document's expiry no later than the database's. A refresh or
    a login always moves the expiry forward, so the later expiry is the newer token."""
    if file_raw.get("type") != "oauth" or db_raw.get("type") != "oauth":
        return False
    return _tokens(file_raw) != _tokens(db_raw) and _expiry(file_raw) <= _expiry(db_raw)


def with_tokens_of(file_raw: dict[str, Any], db_raw: dict[str, Any]) -> dict[str, Any]:
    """The document's fields, with the database's tokens (and their expiry and scopes)."""
    oauth = dict(file_raw.get("oauth") or {})
    for key in ("accessToken", "refreshToken", "expiresAt", "scopes"):
        if key in db_raw["oauth"]:
            oauth[key] = db_raw["oauth"][key]
    return {**file_raw, "oauth": oauth}


def import_document(
    conn: psycopg.Connection[Any],
    box: SecretBox,
    kind: str,
    name: str,
    raw: dict[str, Any],
    source: str | None,
    *,
    login: bool = False,
) -> Imported:
    """Store a credential document (a file's content, or a login's); `login` replaces the tokens whatever
    their age, since a new login is what the operator wants now."""
    where = f"{'accounts/' if kind == ACCOUNT else ''}{name}"
    parse_credential(Path(where), raw, where)  # the document must be a usable credential
    with conn.transaction():
        _lock(conn, kind, name)
        existing = fetch(conn, box, kind, name, for_update=True)
        if existing is None:
            row = _insert(conn, box, kind, name, raw, source, login=login)
            return Imported("imported", row, False)
        if existing.raw == raw:
            if login:
                row = _update(conn, box, existing, raw, source=source, event="login")
                return Imported("replaced by login", row, False)
            return Imported("unchanged", existing, False)
        if not login and older_tokens(raw, existing.raw):
            merged = with_tokens_of(raw, existing.raw)
            row = existing if merged == existing.raw else _update(conn, box, existing, merged, source=source)
            return Imported("kept newer tokens", row, True)
        event = "login" if login else ("import" if _tokens(raw) != _tokens(existing.raw) else None)
        row = _update(conn, box, existing, raw, source=source, event=event)
        return Imported("replaced by login" if login else "updated", row, False)


def _facts(raw: dict[str, Any]) -> tuple[str, str, int | None]:
    cred = parse_credential(Path("x"), raw, "x")
    return cred.kind, cred.account_id, cred.expires_at_ms


def _insert(
    conn: psycopg.Connection[Any],
    box: SecretBox,
    kind: str,
    name: str,
    raw: dict[str, Any],
    source: str | None,
    *,
    login: bool,
) -> Row:
    type_, account_id, expires = _facts(raw)
    refresh = _tokens(raw)[1]
    found = conn.execute(
        _INSERT + _COLUMNS,
        (kind, name, type_, account_id, box.seal(orjson.dumps(raw)), box.key_id, expires, source,
         fingerprint(refresh if isinstance(refresh, str) else None), login),
    ).fetchone()  # fmt: skip
    assert found is not None
    return _row(box, found)


def _update(
    conn: psycopg.Connection[Any],
    box: SecretBox,
    existing: Row,
    raw: dict[str, Any],
    *,
    source: str | None = None,
    event: str | None = None,
) -> Row:
    """Replace the document (version + 1). `event`: "refresh" or "login" record when; a new refresh
    token ("refresh", "login", "import") clears the memory of failures, which concerned the old one."""
    type_, account_id, expires = _facts(raw)
    refresh = _tokens(raw)[1]
    new_token = event is not None
    found = conn.execute(
        _UPDATE + _COLUMNS,
        (type_, account_id, box.seal(orjson.dumps(raw)), box.key_id, expires, source,
         new_token, fingerprint(refresh if isinstance(refresh, str) else None), event, event,
         new_token, new_token, new_token, existing.kind, existing.name, existing.version),
    ).fetchone()  # fmt: skip
    if found is None:  # cannot happen under the row lock; refuse rather than overwrite blindly
        raise CredentialError(f"{existing.label} (database): changed by someone else during the update")
    return _row(box, found)


def _record_failure(conn: psycopg.Connection[Any], row: Row, error: str, invalid_grant: bool) -> None:
    conn.execute(
        "UPDATE credentials SET failed_at = now(), last_error = %s, needs_login = %s, refresh_fingerprint = %s "
        "WHERE kind = %s AND name = %s",
        (error, invalid_grant, fingerprint(row.refresh_token), row.kind, row.name),
    )


def known_failure(row: Row, now: float | None = None) -> OAuthError | None:
    """The failure remembered for this row's refresh token: `invalid_grant` until a new token, any other
    for FAILURE_TTL_S (so N instances do not each hammer a failing endpoint)."""
    if not row.refresh_token or row.refresh_fingerprint != fingerprint(row.refresh_token):
        return None
    if row.needs_login:
        return OAuthError("this refresh token was already refused (invalid_grant)", invalid_grant=True)
    if row.failed_at is not None and (now or time.time()) - row.failed_at < FAILURE_TTL_S:
        return OAuthError(f"{row.last_error or 'refresh failed'}; not retried for {FAILURE_TTL_S:g} s")
    return None


def refresh_row(
    conn: psycopg.Connection[Any],
    box: SecretBox,
    kind: str,
    name: str,
    endpoint: TokenEndpoint,
    needed: Callable[[Row], bool],
    *,
    honour_failures: bool = True,
) -> tuple[Row, bool]:
    """The row after a refresh (or as found, when `needed` no longer holds under the lock), and whether
    this call refreshed. The rotated tokens are committed before this returns."""
    failure: OAuthError | None = None
    with conn.transaction():
        _lock(conn, kind, name)
        row = fetch(conn, box, kind, name, for_update=True)
        label = f"{'accounts/' if kind == ACCOUNT else ''}{name}"
        if row is None:
            raise CredentialError(f"{label} (database): no such credential")
        if row.type != "oauth":
            raise CredentialError(f"{label} (database): not an OAuth credential (type is {row.type!r})")
        if not needed(row):
            return row, False
        token = row.refresh_token
        if not token:
            raise OAuthError("the credential has no refresh token", invalid_grant=True)
        if honour_failures and (known := known_failure(row)) is not None:
            raise known
        try:
            answer = endpoint.refresh(token)
        except OAuthError as exc:
            _record_failure(conn, row, str(exc), exc.invalid_grant)
            failure = exc
        else:
            row = _update(conn, box, row, rotated(row.raw, answer, token), event="refresh")
    if failure is not None:
        raise failure  # after the failure is committed, for the other instances to see
    return row, True


def remove(conn: psycopg.Connection[Any], kind: str, name: str) -> bool:
    with conn.transaction():
        _lock(conn, kind, name)
        return conn.execute("DELETE FROM credentials WHERE kind = %s AND name = %s", (kind, name)).rowcount > 0


def reseal_all(conn: psycopg.Connection[Any], box: SecretBox) -> int:
    """Re-seal every row under the first key of `box` (key rotation); the number of rows re-sealed."""
    done = 0
    for kind, name in conn.execute("SELECT kind, name FROM credentials WHERE key_id <> %s", (box.key_id,)).fetchall():
        with conn.transaction():
            _lock(conn, kind, name)
            found = conn.execute(
                "SELECT sealed FROM credentials WHERE kind = %s AND name = %s FOR UPDATE", (kind, name)
            ).fetchone()
            if found is None:
                continue
            try:
                resealed = box.rotate(found[0])
            except SealingError as exc:
                raise SealingError(f"{'accounts/' if kind == ACCOUNT else ''}{name}: {exc}") from None
            conn.execute(
                "UPDATE credentials SET sealed = %s, key_id = %s, version = version + 1, updated_at = now() "
                "WHERE kind = %s AND name = %s",
                (resealed, box.key_id, kind, name),
            )
            done += 1
    return done
