"""What every process on the machine knows about an OAuth credential's refreshes: `<name>.credentials.status.json`.

The status file sits beside the credential and is only written under the credential's lock. It makes
two things machine-wide instead of per process: a failed refresh is remembered briefly (so N workers do
not each hammer a failing endpoint), and `invalid_grant` marks the account as needing a new login. Both
are tied to a fingerprint of the refresh token they concern, so a new login (a new refresh token)
clears them by itself. A fingerprint is a truncated SHA-256 of a high-entropy token: it tells two
tokens apart and cannot be turned back into one. `nexus oauth status` reads this file; no token is
ever written to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from nexus.auth.credentials import Credential
from nexus.auth.files import write_atomically

#: A failed refresh (other than invalid_grant) is not retried for this long, machine-wide.
FAILURE_TTL_S = 10.0
#: `nexus oauth status` calls a token "expiring" this long before its expiry.
EXPIRING_S = 300.0


def fingerprint(token: str | None) -> str | None:
    return hashlib.sha256(token.encode()).hexdigest()[:16] if token else None


def status_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".json") + ".status.json")


def load_status(path: Path) -> dict[str, Any]:
    with contextlib.suppress(FileNotFoundError, orjson.JSONDecodeError, TypeError, ValueError):
        data = orjson.loads(status_path(path).read_bytes())
        if isinstance(data, dict):
            return data
    return {}


def _update(path: Path, **fields: object) -> None:
    """Merge `fields` into the status file (the caller holds the credential's lock)."""
    write_atomically(status_path(path), {**load_status(path), **fields})


def record_success(path: Path, refresh_token: str | None) -> None:
    _update(
        path,
        last_refresh_at=time.time(),
        last_error=None,
        failed_at=None,
        needs_login=False,
        refresh_fingerprint=fingerprint(refresh_token),
    )


def record_failure(path: Path, refresh_token: str | None, error: str, *, invalid_grant: bool) -> None:
    _update(
        path,
        last_error=error,
        failed_at=time.time(),
        needs_login=invalid_grant,
        refresh_fingerprint=fingerprint(refresh_token),
    )


def record_login(path: Path, refresh_token: str | None) -> None:
    _update(
        path,
        last_login_at=time.time(),
        last_error=None,
        failed_at=None,
        needs_login=False,
        refresh_fingerprint=fingerprint(refresh_token),
    )


def needs_login(status: dict[str, Any], refresh_token: str | None) -> bool:
    """True when this very refresh token was refused (`invalid_grant`); a new login has a new one."""
    if not refresh_token:
        return False  # nothing was refused; a token without a refresh token is judged by its expiry
    return bool(status.get("needs_login")) and status.get("refresh_fingerprint") == fingerprint(refresh_token)


def recent_failure(status: dict[str, Any], refresh_token: str | None, now: float | None = None) -> str | None:
    """The last error when a refresh with this token failed less than FAILURE_TTL_S ago, else None."""
    failed_at = status.get("failed_at")
    if not isinstance(failed_at, int | float) or status.get("refresh_fingerprint") != fingerprint(refresh_token):
        return None
    if (now or time.time()) - failed_at >= FAILURE_TTL_S:
        return None
    return str(status.get("last_error") or "refresh failed")


@dataclass(frozen=True, slots=True)
class Health:
    """One line of `nexus oauth status`."""

    state: str  # valid | expiring | expired | needs login
    expires_at_ms: int | None
    last_refresh_at: float | None
    last_login_at: float | None
    last_error: str | None


def health(cred: Credential, now: float | None = None) -> Health:
    status = load_status(cred.path)
    now = now or time.time()
    expired = cred.expires_at_ms is not None and cred.expires_at_ms / 1000 <= now
    if needs_login(status, cred.refresh_token) or (expired and not cred.refresh_token):
        state = "needs login"
    elif expired:
        state = "expired"
    elif cred.expires_at_ms is not None and cred.expires_at_ms / 1000 - now < EXPIRING_S:
        state = "expiring"
    else:
        state = "valid"
    stale = status.get("refresh_fingerprint") != fingerprint(cred.refresh_token)
    return Health(
        state=state,
        expires_at_ms=cred.expires_at_ms,
        last_refresh_at=status.get("last_refresh_at"),
        last_login_at=status.get("last_login_at"),
        last_error=None if stale else status.get("last_error"),
    )
