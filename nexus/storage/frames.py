"""Append-only record files on local disk: `magic(4) | length(4) | crc32(4) | payload`, fsync'd.

Shared by the spool (batches waiting for the database) and the quarantine files (rows the database
refused). A torn tail, from a crash mid-append, fails its length or checksum and ends the file: it was
never acknowledged as written.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger("nexus.storage")

HEADER = struct.Struct(">4sII")


def frame(magic: bytes, payload: bytes) -> bytes:
    return HEADER.pack(magic, len(payload), zlib.crc32(payload)) + payload


def append(path: Path, magic: bytes, payload: bytes) -> None:
    """Append one record and fsync before returning; the file is created 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, frame(magic, payload))
        os.fsync(fd)
    finally:
        os.close(fd)


def rewrite(path: Path, magic: bytes, payloads: Iterable[bytes]) -> None:
    """Replace `path` atomically with these records."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        for payload in payloads:
            fh.write(frame(magic, payload))
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read(path: Path, magic: bytes) -> Iterator[bytes]:
    """The intact records of a file, in order; a torn or corrupt tail ends the file (logged)."""
    return records(path.read_bytes(), magic, path.name)


def records(data: bytes, magic: bytes, name: str) -> Iterator[bytes]:
    """The intact records of a file's contents `data`, in order (`read`; `name` is for the log)."""
    offset = 0
    while offset + HEADER.size <= len(data):
        found, length, crc = HEADER.unpack_from(data, offset)
        start = offset + HEADER.size
        payload = data[start : start + length]
        if found != magic or len(payload) != length or zlib.crc32(payload) != crc:
            log.warning("%s: dropping a torn or corrupt record at byte %d", name, offset)
            return
        yield payload
        offset = start + length
    if offset != len(data):
        log.warning("%s: dropping %d trailing bytes of a torn record", name, len(data) - offset)
