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
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("nexus.storage")

HEADER = struct.Struct(">4sII")


def frame(magic: bytes, payload: bytes) -> bytes:
    return HEADER.pack(magic, len(payload), zlib.crc32(payload)) + payload


def append(path: Path, magic: bytes, payload: bytes | Sequence[bytes]) -> None:
    """Append one record and fsync before returning; the file is created 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        write(fd, magic, payload)
        os.fsync(fd)
    finally:
        os.close(fd)


def write(fd: int, magic: bytes, payload: bytes | Sequence[bytes]) -> None:
    """Write one record to `fd` (not synced). `payload` may be given in parts (a batch's frame header
    and its two COPY payloads): they are written as one record with `writev`, without being joined
    first, since joining and framing copied megabytes per spooled batch three times over (a worker's
    memory peak under overflow, docs/storage.md "Memory")."""
    parts = [payload] if isinstance(payload, bytes | bytearray | memoryview) else list(payload)
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    views = [memoryview(HEADER.pack(magic, sum(len(p) for p in parts), crc))]
    views += [memoryview(p).cast("B") for p in parts if len(p)]
    while views:  # writev may write less than asked (a signal, a nearly full disk): go on from there
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


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
    with open(path, "rb") as fh:
        yield from stream(fh, magic, path.name)


def stream(fh: BinaryIO, magic: bytes, name: str) -> Iterator[bytes]:
    """The intact records read from `fh`, in order, one at a time (`name` is for the log): a caller
    that handles one record at a time holds one (a spool file is megabytes: read whole, it was held
    twice, as the file and as its records)."""
    offset = 0
    while True:
        head = fh.read(HEADER.size)
        if len(head) < HEADER.size:
            if head:
                log.warning("%s: dropping %d trailing bytes of a torn record", name, len(head))
            return
        found, length, crc = HEADER.unpack(head)
        payload = fh.read(length) if found == magic else b""
        if found != magic or len(payload) != length or zlib.crc32(payload) != crc:
            log.warning("%s: dropping a torn or corrupt record at byte %d", name, offset)
            return
        yield payload
        offset += HEADER.size + length


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
