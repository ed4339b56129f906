"""Client keys issued by this gateway (`ENABLE_CLIENT_AUTH`).

A key is `cnp_live_` + 32 random bytes (url-safe base64) and is shown once. Only
HMAC-SHA256(API_KEY_SALT, key) is stored, so the files cannot be turned back into keys, and a
stolen directory without the salt is useless for guessing. A key file is found by a prefix of its
digest and the full digests are compared with `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from nexus.auth.credentials import write_atomically

PREFIX = "cnp_live_"


@dataclass(frozen=True, slots=True)
class ClientKey:
    key_id: str
    project: str
    name: str | None
    preview: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def usable(self, now: float | None = None) -> bool:
        now = now or time.time()
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


class ClientKeyStore:
    def __init__(self, directory: Path, salt: str) -> None:
        self.directory = directory / "client-keys"
        self._salt = salt.encode()

    def digest(self, key: str) -> str:
        return hmac.new(self._salt, key.encode(), hashlib.sha256).hexdigest()

    def _path(self, key_id: str) -> Path:
        if not key_id.isalnum():
            raise ValueError(f"invalid key id {key_id!r}")
        return self.directory / f"{key_id}.json"

    def create(self, project: str, name: str | None = None, expires_days: float | None = None) -> tuple[ClientKey, str]:
        key = PREFIX + secrets.token_urlsafe(32)
        digest = self.digest(key)
        now = time.time()
        record = {
            "id": digest[:16],
            "digest": digest,
            "project": project,
            "name": name,
            "preview": key[:13] + "…",
            "created_at": now,
            "expires_at": now + expires_days * 86400 if expires_days else None,
            "revoked_at": None,
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        write_atomically(self._path(record["id"]), record)
        return self._from(record), key

    def verify(self, presented: str) -> ClientKey | None:
        """The key's record when `presented` is a valid, unrevoked, unexpired key; else None."""
        if not presented.startswith(PREFIX):
            return None
        digest = self.digest(presented)
        try:
            record = orjson.loads(self._path(digest[:16]).read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            hmac.compare_digest(digest, digest)  # same work either way
            return None
        if not hmac.compare_digest(str(record.get("digest", "")), digest):
            return None
        key = self._from(record)
        return key if key.usable() else None

    def list(self) -> list[ClientKey]:
        return [self._from(orjson.loads(p.read_bytes())) for p in sorted(self.directory.glob("*.json"))]

    def revoke(self, key_id: str) -> bool:
        path = self._path(key_id)
        if not path.exists():
            return False
        record = orjson.loads(path.read_bytes())
        record["revoked_at"] = time.time()
        write_atomically(path, record)
        return True

    @staticmethod
    def _from(record: dict[str, Any]) -> ClientKey:
        return ClientKey(
            record["id"],
            record["project"],
            record.get("name"),
            record["preview"],
            record["created_at"],
            record.get("expires_at"),
            record.get("revoked_at"),
        )
