"""Client keys issued by this gateway (`ENABLE_CLIENT_AUTH`), stored as salted digests only.

A key is `cnp_live_` + 32 random bytes (url-safe base64) and is shown once, at creation. Only
HMAC-SHA256(API_KEY_SALT, key) is kept, one small JSON file per key under
`CREDENTIALS_DIR/client-keys/`: the files cannot be turned back into keys, and without the salt they
do not even allow checking a guess. A presented key's record is found by a prefix of its digest (the
key id, safe to show) and the full digests are compared with `hmac.compare_digest`, in constant time.
Unlike the reference system, nothing is stored in clear and nothing is compared with `==`.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson

from nexus.auth.files import write_atomically

log = logging.getLogger("nexus.auth")
PREFIX = "cnp_live_"
#: Prefixes of keys this gateway issues (`cnp_test_` from the reference's generator): never sent upstream.
CLIENT_KEY_PREFIXES = ("cnp_live_", "cnp_test_")
_PREFIX_BYTES = tuple(prefix.encode() for prefix in CLIENT_KEY_PREFIXES)
assert len(_PREFIX_BYTES) == 2  # carries_base64_key checks both without a loop
ID_LENGTH = 16


class ClientKeyRejected(Exception):
    """A presented key that does not admit the request; the message says why, without the key."""


class UnknownClientKey(ClientKeyRejected):
    """No record holds the presented key (as opposed to a record that is revoked or expired)."""


@dataclass(frozen=True, slots=True)  # pragma: no mutate (slots save memory; frozen is tested)
class ClientKey:
    key_id: str
    project: str
    name: str | None
    preview: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def problem(self, now: float | None = None) -> str | None:
        """Why this key may not be used now, or None when it may."""
        if self.revoked_at is not None:
            return "The client key has been revoked."
        if self.expires_at is not None and (now or time.time()) >= self.expires_at:
            return "The client key has expired."
        return None


class ClientKeyStore:
    def __init__(self, credentials_dir: Path, salt: str) -> None:
        if not salt:
            raise ValueError("API_KEY_SALT is required for client keys")
        self.directory = credentials_dir / "client-keys"
        self._salt = salt.encode()

    def digest(self, key: str) -> str:
        return hmac.new(self._salt, key.encode(), hashlib.sha256).hexdigest()

    def _path(self, key_id: str) -> Path:
        if len(key_id) != ID_LENGTH or not all(c in "0123456789abcdef" for c in key_id):
            raise ValueError(f"invalid key id {key_id[:40]!r} (16 hexadecimal characters, as `nexus keys list` shows)")
        return self.directory / f"{key_id}.json"

    def create(self, project: str, name: str | None = None, expires_days: float | None = None) -> tuple[ClientKey, str]:
        """A new key for `project`: its record, and the key itself (to be shown once, never stored)."""
        key = PREFIX + secrets.token_urlsafe(32)
        record = new_record(key, self.digest(key), project, name, expires_days)
        write_atomically(self._path(record["id"]), record)
        return _from_record(record), key

    def import_key(self, key: str, project: str, name: str | None = None) -> tuple[ClientKey, bool]:
        """Store an existing key (one the reference system issued) as a salted record, like `create`;
        whether it was new. Importing the same key again changes nothing (its first project stays)."""
        record = imported_record(key, self.digest(key), project, name)
        existing = self._read(record["id"])
        if existing is not None and hmac.compare_digest(str(existing.get("digest", "")), record["digest"]):
            return _from_record(existing), False
        write_atomically(self._path(record["id"]), record)
        return _from_record(record), True

    def check(self, presented: str) -> ClientKey:
        """The key's record when `presented` admits a request; else `ClientKeyRejected` saying why."""
        digest = self.digest(presented)
        record = self._read(digest[:ID_LENGTH]) if presented.startswith(CLIENT_KEY_PREFIXES) else None
        return admit(digest, record)

    def list(self) -> list[ClientKey]:
        records = (self._read(p.stem) for p in sorted(self.directory.glob("*.json")) if len(p.stem) == ID_LENGTH)
        return sorted((_from_record(r) for r in records if r is not None), key=lambda k: k.created_at)

    def revoke(self, key_id: str) -> ClientKey | None:
        """Revoke a key by id (idempotent); None when there is no such key."""
        record = self._read(key_id)
        if record is None:
            return None
        if record.get("revoked_at") is None:
            record["revoked_at"] = time.time()
            write_atomically(self._path(key_id), record)
        return _from_record(record)

    def _read(self, key_id: str) -> dict[str, Any] | None:
        try:
            data = orjson.loads(self._path(key_id).read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError, ValueError):
            return None
        except OSError as exc:
            log.warning("client key file %s cannot be read (%s)", key_id, exc.strerror)
            return None
        if not isinstance(data, dict) or "digest" not in data or "project" not in data:
            return None
        data.setdefault("id", key_id)
        return data


def admit(digest: str, record: dict[str, Any] | None) -> ClientKey:
    """The rule both stores (files, database) apply to a presented key's digest and the record found
    by its id: the key when it admits a request, else `ClientKeyRejected` saying why."""
    stored = str(record.get("digest", "")) if record else "0" * len(digest)  # pragma: no mutate (timing only)
    # the comparison runs whether or not a record was found, so timing tells nothing either way
    if not hmac.compare_digest(stored, digest) or record is None:
        raise UnknownClientKey("The client key is not valid.")
    key = _from_record(record)
    if (problem := key.problem()) is not None:
        raise ClientKeyRejected(problem)
    return key


def new_record(key: str, digest: str, project: str, name: str | None, expires_days: float | None) -> dict[str, Any]:
    """The stored record of a key issued now (never the key itself: its salted digest and a preview)."""
    now = time.time()
    return {
        "id": digest[:ID_LENGTH],
        "digest": digest,
        "project": project,
        "name": name,
        "preview": f"{PREFIX}****{key[-4:]}",
        "created_at": now,
        "expires_at": now + expires_days * 86400 if expires_days is not None else None,
        "revoked_at": None,
    }


def imported_record(key: str, digest: str, project: str, name: str | None) -> dict[str, Any]:
    """The stored record of an existing key (one the reference system issued); ValueError for any
    other kind of key."""
    if not key.startswith(CLIENT_KEY_PREFIXES):
        raise ValueError("only cnp_live_ / cnp_test_ keys can be imported")
    return {
        "id": digest[:ID_LENGTH],
        "digest": digest,
        "project": project,
        "name": name,
        "preview": f"{key[: len(PREFIX)]}****{key[-4:]}",
        "created_at": time.time(),
        "expires_at": None,
        "revoked_at": None,
    }


def _from_record(record: dict[str, Any]) -> ClientKey:
    return ClientKey(
        key_id=record["id"],
        project=record["project"],
        name=record.get("name"),
        preview=record.get("preview", ""),
        created_at=record.get("created_at", 0.0),
        expires_at=record.get("expires_at"),
        revoked_at=record.get("revoked_at"),
    )


def is_client_key(value: str | None) -> bool:
    return value is not None and value.startswith(CLIENT_KEY_PREFIXES)


#: A client key anywhere in a text (any case): what `redact_client_keys` replaces.
_KEY_IN_TEXT = re.compile(r"cnp_(?:live|test)_[A-Za-z0-9_\-]*", re.IGNORECASE)
#: What separates base64 tokens in credential headers and cookies (`a=b; c=d`, `Basic x, y`).
_TOKEN_SEPARATORS = re.compile(r"[\s=;,]+")
#: The URL-safe base64 alphabet mapped to the standard one (what `base64.urlsafe_b64decode` does).
_URLSAFE = bytes.maketrans(b"-_", b"+/")


def carries_client_key(value: str, *, deep: bool = False) -> bool:
    """Whether a header name or value holds one of our client keys: as it is, in any case, after a
    scheme, percent-encoded, or (`deep`, for credential headers and cookies) inside base64. A client
    that re-encodes its own key some other way (the body, hex) is not protected from itself."""
    lowered = value.lower()
    if "cnp_" in lowered and any(prefix in lowered for prefix in CLIENT_KEY_PREFIXES):
        return True
    if "%" in value and any(prefix in unquote(value).lower() for prefix in CLIENT_KEY_PREFIXES):
        return True
    return deep and carries_base64_key(value)


def carries_base64_key(value: str) -> bool:
    """Whether a credential header or cookie holds one of our client keys inside base64 (the `deep`
    part of `carries_client_key`)."""
    for token in _TOKEN_SEPARATORS.split(value):
        if len(token) >= 12:
            decoded = _unbase64(token).lower()
            if _PREFIX_BYTES[0] in decoded or _PREFIX_BYTES[1] in decoded:
                return True
    return False


def redact_client_keys(text: str) -> str:
    """`text` with every client key in it (as it is or percent-encoded) replaced by its prefix and `[redacted]`."""
    if "%" in text:  # judged (and stored) decoded, so no mix of plain and encoded parts hides one
        text = unquote(text)
    return _KEY_IN_TEXT.sub(lambda m: m.group(0)[:9] + "[redacted]", text) if "cnp_" in text.lower() else text


def _unbase64(token: str) -> bytes:
    """Either base64 alphabet (the URL-safe one maps `-_` and keeps `+/`), padding optional: the
    lenient decoder ignores padding beyond what is needed. (`base64.urlsafe_b64decode` without its
    Python layers: this runs on every request's credential headers.)"""
    try:
        return binascii.a2b_base64(token.encode("ascii").translate(_URLSAFE) + b"==")
    except (ValueError, binascii.Error):  # not ASCII (UnicodeEncodeError is a ValueError), or not base64
        return b""
