"""Client keys the reference system kept in files, accepted as they are.

Teams moving over have keys in two places: the `client_api_key` field of a project's credential file
(`CREDENTIALS_DIR/<project>.credentials.json`, the original layout), and per-project key files
(`TRAIN_CLIENT_KEYS_DIR/<project>.client-keys.json`: a JSON array of keys, or an object whose `keys`
or `client_api_keys` is one). Their clients keep working unchanged: with `ENABLE_CLIENT_AUTH=true` such
a key admits its request to the file's project, with or without `API_KEY_SALT`.

Only SHA-256 digests of the keys are kept in memory, and a presented key is compared with every one of
them with `hmac.compare_digest` (no early exit), so neither the answer's timing nor a memory dump gives
a key away. The files are re-read when they change (checked at most once a second), like credential
files. `nexus keys import` turns them into salted records (`nexus.auth.client_keys`) so the clear
keys can be removed from the files.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from nexus.auth.credentials import SUFFIX
from nexus.auth.files import credential_lock, write_atomically
from nexus.auth.names import safe_name

log = logging.getLogger("nexus.auth")
KEYS_SUFFIX = ".client-keys.json"
RECHECK_S = 1.0


@dataclass(frozen=True, slots=True)
class ReferenceKey:
    """One key found in a file: the project it admits, where it was found, and the key itself (only
    while importing; the in-memory index keeps the digest alone)."""

    project: str
    source: str
    key: str


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _keys_in(data: Any) -> list[str]:
    """The keys of a key file: a bare array, or an object with `keys` or `client_api_keys`."""
    if isinstance(data, dict):
        data = data.get("keys", data.get("client_api_keys"))
    if not isinstance(data, list):
        return []
    return [k.strip() for k in data if isinstance(k, str) and k.strip()]


def read_reference_keys(credentials_dir: Path, keys_dir: Path) -> tuple[list[ReferenceKey], list[str]]:
    """Every key in the reference system's files, and one line per file that could not be used (the
    line names the file, never a key)."""
    found: list[ReferenceKey] = []
    problems: list[str] = []
    sources: list[tuple[Path, str, bool]] = [
        (p, p.name.removesuffix(SUFFIX), False) for p in sorted(credentials_dir.glob(f"*{SUFFIX}"))
    ]
    sources += [(p, p.name.removesuffix(KEYS_SUFFIX), True) for p in sorted(keys_dir.glob(f"*{KEYS_SUFFIX}"))]
    for path, project, is_key_file in sources:
        try:
            data = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            if is_key_file:  # credential files report their own problems (nexus.auth.credentials)
                problems.append(f"{path.name}: cannot be read ({getattr(exc, 'strerror', None) or 'not valid JSON'})")
            continue
        if is_key_file:
            keys = _keys_in(data)
            if not keys:
                problems.append(f"{path.name}: no keys (a JSON array, or an object with `keys`)")
        else:
            value = data.get("client_api_key") if isinstance(data, dict) else None
            keys = [value.strip()] if isinstance(value, str) and value.strip() else []
        if keys and safe_name(project) is None:
            problems.append(f"{path.name}: {project[:64]!r} is not a usable project name; its keys are ignored")
            continue
        found += [ReferenceKey(project, path.name, key) for key in keys]
    return found, problems


_Stamp = tuple[tuple[str, int, int, int], ...]


class ReferenceKeyIndex:
    """Digests of the reference keys by project, re-read when a file changes."""

    def __init__(self, credentials_dir: Path, keys_dir: Path) -> None:
        self.credentials_dir = credentials_dir
        self.keys_dir = keys_dir
        self._checked = float("-inf")
        self._stamp: _Stamp | None = None
        self._entries: list[tuple[bytes, str]] = []

    def _current_stamp(self) -> _Stamp:
        paths = list(self.credentials_dir.glob(f"*{SUFFIX}")) + list(self.keys_dir.glob(f"*{KEYS_SUFFIX}"))
        out = []
        for path in sorted(paths):
            try:
                st = os.stat(path)
            except OSError:
                continue
            out.append((os.fspath(path), st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < RECHECK_S:
            return
        self._checked = now
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        keys, problems = read_reference_keys(self.credentials_dir, self.keys_dir)
        for line in problems:
            log.warning("reference key file problem: %s", line)
        entries: dict[bytes, str] = {}
        for found in keys:
            digest = _digest(found.key)
            if entries.setdefault(digest, found.project) != found.project:
                log.warning("a client key in %s is also another project's; the first file read wins", found.source)
        self._entries = list(entries.items())

    def __len__(self) -> int:
        self.refresh()
        return len(self._entries)

    def project_for(self, presented: str) -> str | None:
        """The project the presented key admits to, or None. Every digest is compared, whatever matches."""
        self.refresh()
        given = _digest(presented)
        project: str | None = None
        for digest, owner in self._entries:
            if hmac.compare_digest(digest, given):
                project = owner
        return project


def remove_reference_keys(credentials_dir: Path, keys_dir: Path, imported: list[ReferenceKey]) -> list[str]:
    """Take the imported keys out of the reference files (after `nexus keys import`): the
    `client_api_key` field of a credential file (every other field kept, under the credential's lock),
    the entries of a key file (the file is removed when none is left). One line per file changed."""
    by_source: dict[str, set[str]] = {}
    for ref in imported:
        by_source.setdefault(ref.source, set()).add(ref.key)
    lines: list[str] = []
    for source, keys in sorted(by_source.items()):
        if source.endswith(KEYS_SUFFIX):
            path = keys_dir / source
            data = orjson.loads(path.read_bytes())
            left = [k for k in _keys_in(data) if k not in keys]
            if not left:
                path.unlink()
                lines.append(f"removed {path} (every key imported)")
                continue
            if isinstance(data, dict):
                data["keys" if "keys" in data else "client_api_keys"] = left
            else:
                data = {"keys": left}
            write_atomically(path, data)
            lines.append(f"removed {len(keys)} imported key(s) from {path}")
        else:
            path = credentials_dir / source
            with credential_lock(path):
                data = orjson.loads(path.read_bytes())
                value = data.get("client_api_key") if isinstance(data, dict) else None
                if isinstance(value, str) and value.strip() in keys:
                    del data["client_api_key"]
                    write_atomically(path, data)
                    lines.append(f"removed client_api_key from {path}")
    return lines
