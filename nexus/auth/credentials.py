"""Upstream credentials held by the proxy, in files compatible with the reference system's.

`CREDENTIALS_DIR/<project>.credentials.json` per project and `CREDENTIALS_DIR/accounts/<account>.credentials.json`
for named accounts. Files are validated with errors naming the file and the field (never a value: a
misplaced token must not end up in an error message), re-read when they change on disk (checked at most
once a second per file, so the hot path costs a dict lookup), and never reachable outside the
directory: names are checked before they become paths.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from nexus.auth.names import safe_name

OAUTH_BETA = "oauth-2025-04-20"
RECHECK_S = 1.0
SUFFIX = ".credentials.json"


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
    #: The database row's version when the credential came from the database (None: from a file).
    version: int | None = None

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(SUFFIX)

    @property
    def is_account(self) -> bool:
        """Named accounts live in `accounts/`; everything else is a project's own credential."""
        return self.path.parent.name == "accounts"

    def auth_headers(self) -> list[tuple[str, str]]:
        if self.kind == "api_key":
            return [("x-api-key", self.api_key or "")]
        return [("authorization", f"Bearer {self.access_token}")]


def parse_credential(path: Path, data: Any, where: str | None = None) -> Credential:
    """Validate one credential file's JSON; `where` is how errors name the file."""
    where = where or path.name
    if not isinstance(data, dict):
        raise CredentialError(f"{where}: must be a JSON object")
    kind = _string(data, "type", where, "type")
    account_id = data.get("accountId")
    if account_id is not None and not isinstance(account_id, str):
        raise CredentialError(f"{where}: field 'accountId' must be a string")
    account_id = account_id or path.name.removesuffix(SUFFIX)
    if kind == "api_key":
        return Credential(path, "api_key", account_id, api_key=_string(data, "api_key", where, "api_key"), raw=data)
    if kind != "oauth":
        raise CredentialError(f'{where}: field \'type\' must be "api_key" or "oauth"')
    oauth = data.get("oauth")
    if not isinstance(oauth, dict):
        raise CredentialError(f"{where}: field 'oauth' is required (an object)")
    access = _string(oauth, "accessToken", where, "oauth.accessToken")
    refresh = oauth.get("refreshToken")
    if refresh is not None and not isinstance(refresh, str):
        raise CredentialError(f"{where}: field 'oauth.refreshToken' must be a string")
    expires = oauth.get("expiresAt")
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int | float)):
        raise CredentialError(f"{where}: field 'oauth.expiresAt' must be a number (epoch milliseconds)")
    if oauth.get("scopes") is not None and not isinstance(oauth["scopes"], list):
        raise CredentialError(f"{where}: field 'oauth.scopes' must be a list")
    if oauth.get("isMax") is not None and not isinstance(oauth["isMax"], bool):
        raise CredentialError(f"{where}: field 'oauth.isMax' must be true or false")
    return Credential(
        path,
        "oauth",
        account_id,
        access_token=access,
        refresh_token=refresh or None,
        expires_at_ms=int(expires) if expires is not None else None,
        raw=data,
    )


def _string(obj: dict[str, Any], key: str, where: str, label: str) -> str:
    value = obj.get(key)
    if value is None or value == "":
        raise CredentialError(f"{where}: field {label!r} is required")
    if not isinstance(value, str):
        raise CredentialError(f"{where}: field {label!r} must be a string")
    return value


def read_credential(path: Path, where: str | None = None) -> Credential:
    """Read and validate a credential file now (no cache); JSON errors name the file and position."""
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise CredentialError(f"{where or path.name}: not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    return parse_credential(path, data, where)


_Stamp = tuple[int, int, int]  # inode, mtime ns, size: a rename or rewrite changes at least one


class CredentialStore:
    """Credential files by project or account name, cached per file and re-read when they change.

    Both caches are bounded (and simply emptied when full): project names come from client headers,
    and a client sending endless distinct names must not grow the proxy's memory without limit.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # file path -> (last checked, stamp, credential or the error that file gave, or None if absent)
        self._cache: dict[str, tuple[float, _Stamp | None, Credential | CredentialError | None]] = {}
        self._paths: dict[tuple[bool, str], Path] = {}  # (is account, name) -> path, to skip Path building

    def project_path(self, project: str) -> Path:
        return self.directory / f"{_checked(project, 'project')}{SUFFIX}"

    def account_path(self, account: str) -> Path:
        return self.directory / "accounts" / f"{_checked(account, 'account')}{SUFFIX}"

    def for_project(self, project: str) -> Credential | None:
        return self.load(self._path(False, project))

    def for_account(self, account: str) -> Credential | None:
        return self.load(self._path(True, account))

    def _path(self, is_account: bool, name: str) -> Path:
        path = self._paths.get((is_account, name))
        if path is None:
            path = self.account_path(name) if is_account else self.project_path(name)
            _bounded_put(self._paths, (is_account, name), path)
        return path

    def paths(self) -> list[Path]:
        """Every credential file: projects first, then named accounts, each sorted by name."""
        return sorted(self.directory.glob(f"*{SUFFIX}")) + sorted((self.directory / "accounts").glob(f"*{SUFFIX}"))

    def all(self) -> tuple[list[Credential], list[CredentialError]]:
        """Every usable credential, and the problems of the files that are not usable."""
        good: list[Credential] = []
        bad: list[CredentialError] = []
        for path in self.paths():
            try:
                if (cred := self.load(path)) is not None:
                    good.append(cred)
            except CredentialError as exc:
                bad.append(exc)
        return good, bad

    def where(self, path: Path) -> str:
        """How messages name a file: relative to the credentials directory."""
        try:
            return str(path.relative_to(self.directory))
        except ValueError:
            return path.name

    def invalidate(self, path: Path) -> None:
        self._cache.pop(os.fspath(path), None)

    def load(self, path: Path) -> Credential | None:
        """The credential in `path` (None when absent), re-read when the file changed on disk."""
        now = time.monotonic()
        key = os.fspath(path)
        cached = self._cache.get(key)
        if cached is None or now - cached[0] >= RECHECK_S:
            stamp = _stamp(path)
            if cached is None or cached[1] != stamp:
                cached = (now, stamp, self._parse(path) if stamp else None)
            else:
                cached = (now, stamp, cached[2])
            _bounded_put(self._cache, key, cached)
        if isinstance(cached[2], CredentialError):
            raise cached[2]
        return cached[2]

    def _parse(self, path: Path) -> Credential | CredentialError | None:
        try:
            return read_credential(path, self.where(path))
        except CredentialError as exc:
            return exc
        except FileNotFoundError:
            return None  # removed between the stat and the read
        except OSError as exc:
            return CredentialError(f"{self.where(path)}: cannot be read ({exc.strerror})")


MAX_CACHED = 4096


def _bounded_put(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= MAX_CACHED and key not in cache:
        cache.clear()
    cache[key] = value


def _checked(name: str, what: str) -> str:
    safe = safe_name(name)
    if safe is None:
        raise CredentialError(
            f"invalid {what} name {name[:64]!r}: use letters, digits and . _ : - (no '/', no '..', 128 at most)"
        )
    return safe


def _stamp(path: Path) -> _Stamp | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


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
