"""Upstream credentials held by the proxy, in files compatible with the reference system's.

`CREDENTIALS_DIR/<project>.credentials.json` per project and `CREDENTIALS_DIR/accounts/<account>.credentials.json`
for named accounts. Files are validated with errors naming the file and the field, re-read when they
change on disk (checked at most once a second per file, so the hot path costs a dict lookup), and
never reachable outside the directory: names are checked before they become paths.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from nexus.auth.names import safe_name

log = logging.getLogger("nexus.auth")
OAUTH_BETA = "oauth-2025-04-20"
RECHECK_S = 1.0


class CredentialError(ValueError):
    """A credential file that cannot be used, with the file and field named."""


@dataclass(slots=True)
class Credential:
    path: Path
    kind: str  # "api_key" or "oauth"
    account_id: str
    api_key: str | None = None
    access_token: str | None = None
    refresh_token: str | None = None
    expires_at_ms: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".credentials.json")

    def auth_headers(self) -> list[tuple[str, str]]:
        if self.kind == "api_key":
            return [("x-api-key", self.api_key or "")]
        return [("authorization", f"Bearer {self.access_token}")]


def parse_credential(path: Path, data: Any) -> Credential:
    where = path.name

    def need(obj: Any, key: str, label: str) -> Any:
        if not isinstance(obj, dict) or not obj.get(key):
            raise CredentialError(f"{where}: field {label!r} is required")
        return obj[key]

    if not isinstance(data, dict):
        raise CredentialError(f"{where}: must be a JSON object")
    kind = need(data, "type", "type")
    account_id = str(data.get("accountId") or path.name.removesuffix(".credentials.json"))
    if kind == "api_key":
        key = need(data, "api_key", "api_key")
        if not isinstance(key, str):
            raise CredentialError(f"{where}: field 'api_key' must be a string")
        return Credential(path, "api_key", account_id, api_key=key, raw=data)
    if kind == "oauth":
        oauth = need(data, "oauth", "oauth")
        access = need(oauth, "accessToken", "oauth.accessToken")
        refresh = oauth.get("refreshToken")
        expires = oauth.get("expiresAt")
        if expires is not None and not isinstance(expires, int | float):
            raise CredentialError(f"{where}: field 'oauth.expiresAt' must be epoch milliseconds")
        return Credential(
            path,
            "oauth",
            account_id,
            access_token=access,
            refresh_token=refresh,
            expires_at_ms=int(expires) if expires is not None else None,
            raw=data,
        )
    raise CredentialError(f"{where}: field 'type' must be 'api_key' or 'oauth', got {kind!r}")


class CredentialStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # path -> (last checked, mtime, credential or the error that file gave)
        self._cache: dict[Path, tuple[float, float, Credential | CredentialError | None]] = {}

    def for_project(self, project: str) -> Credential | None:
        name = safe_name(project)
        return self.load(self.directory / f"{name}.credentials.json") if name else None

    def for_account(self, account: str) -> Credential | None:
        name = safe_name(account)
        if name is None:
            raise CredentialError(f"invalid account name {account!r}")
        return self.load(self.directory / "accounts" / f"{name}.credentials.json")

    def all(self) -> list[Credential]:
        paths = sorted(self.directory.glob("*.credentials.json")) + sorted(
            (self.directory / "accounts").glob("*.credentials.json")
        )
        return [c for p in paths if (c := self.load(p)) is not None]

    def invalidate(self, path: Path) -> None:
        self._cache.pop(path, None)

    def load(self, path: Path) -> Credential | None:
        now = time.monotonic()
        cached = self._cache.get(path)
        if cached is None or now - cached[0] >= RECHECK_S:
            try:
                mtime = os.stat(path).st_mtime
            except FileNotFoundError:
                mtime = 0.0
            if cached is None or cached[1] != mtime:
                cached = (now, mtime, self._parse(path) if mtime else None)
            else:
                cached = (now, mtime, cached[2])
            self._cache[path] = cached
        if isinstance(cached[2], CredentialError):
            raise cached[2]
        return cached[2]

    @staticmethod
    def _parse(path: Path) -> Credential | CredentialError:
        try:
            return parse_credential(path, orjson.loads(path.read_bytes()))
        except orjson.JSONDecodeError as exc:
            return CredentialError(f"{path.name}: not valid JSON ({exc.msg})")
        except CredentialError as exc:
            return exc


def merge_beta(client_value: str | None, extra: list[str]) -> str:
    """The client's `anthropic-beta` list with `extra` appended: union, no duplicates, client order kept."""
    seen: list[str] = []
    for item in (client_value or "").split(","):
        item = item.strip()
        if item and item not in seen:
            seen.append(item)
    for item in extra:
        if item not in seen:
            seen.append(item)
    return ",".join(seen)


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Replace a credential file so a reader sees the old or the new content, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, orjson.dumps(data, option=orjson.OPT_INDENT_2))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
