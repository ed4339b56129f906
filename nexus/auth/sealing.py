"""Secrets at rest in the database, sealed with `NEXUS_SECRET_KEY` (Fernet: AES-128-CBC + HMAC-SHA256).

Why Fernet through `cryptography`'s `MultiFernet`: it authenticates as well as encrypts (a row edited in
the database fails to open instead of yielding garbage tokens), and a list of keys gives rotation for
free: the first key seals, every key opens, and `MultiFernet.rotate` re-seals a row under the first key.
So rotating is: put the new key first in `NEXUS_SECRET_KEY` (comma-separated, old keys after it) on
every instance, run `nexus credentials rotate-key`, then drop the old key.

Each sealed row also records a key id (a short SHA-256 prefix of the key: it identifies the key and
gives nothing of it away), so an instance that lacks the key can say which key it needs instead of
answering "invalid token".

With `NEXUS_SECRET_KEY` unset, a single machine keeps working with no setup: a key is generated once
into `NEXUS_HOME/secret.key` (0600) and used from then on. Every instance that shares the database must
share the key, so several machines must set `NEXUS_SECRET_KEY` to the same value (docs/scaling.md).

`cryptography` is imported when a value is first sealed or opened, not with this module: every proxy
worker with a database loads the box, and most never open a credential, while the library's Rust
extension is ~6 MiB of each worker's resident size (docs/storage.md, "Memory"). A key is checked
when the box is made all the same, the way Fernet checks it (32 url-safe base64-encoded bytes).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nexus.home import private_dir

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

KEY_FILE = "secret.key"
#: url-safe base64 to the standard alphabet, for `binascii`'s strict decoder.
_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _fernet_key(key: bytes) -> bool:
    """Whether `Fernet(key)` accepts it, without importing `cryptography`: 32 bytes in url-safe base64
    (padding optional, whitespace ignored; `tests/test_sealing_import.py` compares the two)."""
    text = key.translate(None, b" \t\n\r\x0c") if isinstance(key, bytes) else b""
    if b"+" in text or b"/" in text:
        return False
    if not text.endswith(b"="):
        text += b"=" * (-len(text) % 4)
    try:
        return len(binascii.a2b_base64(text.translate(_URLSAFE), strict_mode=True)) == 32
    except (binascii.Error, ValueError):
        return False


class SealingError(ValueError):
    """A key that is not usable, or a sealed value this instance cannot open (the message says why)."""


def key_id(key: bytes) -> str:
    """A short, public name for a key: which one sealed a row, without revealing it."""
    return hashlib.sha256(key.strip()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class SecretBox:
    """Seals with the first key, opens with any of them."""

    keys: tuple[bytes, ...]
    source: str  # "NEXUS_SECRET_KEY" or the key file's path: how messages name where the key came from

    def __post_init__(self) -> None:
        if not self.keys:
            raise SealingError("no secret key")
        for i, key in enumerate(self.keys):
            if not _fernet_key(key):
                raise SealingError(
                    f"{self.source}: key {i + 1} is not a Fernet key (32 url-safe base64-encoded bytes; "
                    "make one with `nexus credentials new-key`)"
                ) from None

    @property
    def _fernet(self) -> MultiFernet:
        from cryptography.fernet import Fernet, MultiFernet

        return MultiFernet([Fernet(k) for k in self.keys])

    @property
    def key_id(self) -> str:
        """The id of the key that seals now."""
        return key_id(self.keys[0])

    @property
    def key_ids(self) -> list[str]:
        return [key_id(k) for k in self.keys]

    def seal(self, plaintext: bytes) -> bytes:
        return self._fernet.encrypt(plaintext)

    def open(self, sealed: bytes, sealed_with: str | None = None) -> bytes:
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(bytes(sealed))
        except InvalidToken:
            which = f"key {sealed_with}" if sealed_with else "a key"
            raise SealingError(
                f"a credential in the database was sealed with {which} that this instance does not have "
                f"(this instance has {', '.join(self.key_ids)} from {self.source}): every instance sharing "
                "DATABASE_URL must have the same NEXUS_SECRET_KEY"
            ) from None

    def rotate(self, sealed: bytes) -> bytes:
        """`sealed` re-sealed under the first key (it must open with one of the keys)."""
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.rotate(bytes(sealed))
        except InvalidToken:
            raise SealingError("a credential cannot be re-sealed: none of the keys opens it") from None


def new_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()  # what Fernet.generate_key() makes


def parse_keys(value: str) -> tuple[bytes, ...]:
    return tuple(k.strip().encode() for k in value.split(",") if k.strip())


def load_box(secret_key: str | None, nexus_home: Path) -> SecretBox:
    """The box of `NEXUS_SECRET_KEY` when set; else the key in `NEXUS_HOME/secret.key`, made on first use."""
    if secret_key:
        return SecretBox(parse_keys(secret_key), "NEXUS_SECRET_KEY")
    path = nexus_home / KEY_FILE
    return SecretBox(parse_keys(_key_file(path)), str(path))


def _key_file(path: Path) -> str:
    """Read the key file, creating it (0600) if absent. Written to a temp file then hard-linked into
    place, so two processes starting at once agree on one key and neither reads a half-written file."""
    try:
        return path.read_text()
    except FileNotFoundError:
        pass
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(new_key() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return path.read_text()
