"""An append-only, checksummed, fsync'd spool on local disk: where batches wait while PostgreSQL can't
take them, so a database outage or a `kill -9` loses nothing.

A record is one batch exactly as it would be sent (the COPY payloads), framed as
`magic(4) | length(4) | crc32(4) | payload`. Writes append and fsync before returning. Replay claims a
file by renaming it (atomic, so two workers never replay the same file), sends its records in order,
and deletes it; a crash mid-replay leaves the claimed file to be replayed again at the next start,
which is harmless because every insert is idempotent (`ON CONFLICT DO NOTHING` on the request id).
A torn tail (a crash mid-append) fails its length or checksum and is dropped with a warning: it was
never acknowledged as written.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from nexus.home import private_dir
from nexus.storage import frames

log = logging.getLogger("nexus.storage")

MAGIC = b"NXS1"
HEADER = frames.HEADER


class SpoolFullError(OSError):
    """The spool reached its size bound; the batch could not be kept."""


#: A spool file is closed and a new one started past this size: a replay holds one file's records in
#: memory (16 MiB files were most of a worker's memory peak while it spooled and replayed under load).
FILE_MAX_BYTES = 4 << 20
#: How often the spool's size is summed from its files (between sums, this process's appends are added).
SIZE_EVERY_S = 1.0


class Spool:
    def __init__(self, directory: Path, max_bytes: int, file_max_bytes: int = FILE_MAX_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.file_max_bytes = file_max_bytes
        self._lock = threading.Lock()
        self._prefix = f"spool-{os.getpid()}-{threading.get_ident()}"
        self._seq = 0
        #: (when the directory was last summed, the sum plus what this process appended since)
        self._sized: tuple[float, int] | None = None

    @property
    def active_path(self) -> Path:
        return self.directory / f"{self._prefix}-{self._seq:06d}.log"

    def size(self) -> int:
        """Bytes waiting in all spool files of this directory (any process's): summed from the files at
        most every `SIZE_EVERY_S`, with this process's own appends added in between. A writer that spools
        every batch (a database slower than the traffic) listed and stat'ed the directory per batch; the
        bound may now be passed by what other workers spooled within that second."""
        now = time.monotonic()
        if self._sized is None or now - self._sized[0] > SIZE_EVERY_S:
            try:
                total = sum(p.stat().st_size for p in self.directory.glob("spool-*"))
            except OSError:
                total = 0
            self._sized = (now, total)
        return self._sized[1]

    def oldest_mtime(self) -> float | None:
        """When the oldest waiting spool file was last written (its rows are at least that old)."""
        try:
            times = [p.stat().st_mtime for p in self.directory.glob("spool-*")]
        except OSError:
            return None
        return min(times) if times else None

    def append(self, payload: bytes | Sequence[bytes]) -> None:
        """Append one record durably (given whole or in parts, see `frames.append`); raise
        `SpoolFullError` or `OSError` if it cannot be kept."""
        size = len(payload) if isinstance(payload, bytes | bytearray | memoryview) else sum(len(p) for p in payload)
        with self._lock:
            if self.size() + frames.HEADER.size + size > self.max_bytes:
                raise SpoolFullError(f"spool at {self.directory} is full ({self.max_bytes} bytes)")
            if not self.directory.is_dir():
                private_dir(self.directory)
            try:
                if self.active_path.stat().st_size + size > self.file_max_bytes:
                    self._seq += 1  # files stay small enough to replay from memory one at a time
            except FileNotFoundError:
                pass
            frames.append(self.active_path, MAGIC, payload)
            if self._sized is not None:
                self._sized = (self._sized[0], self._sized[1] + frames.HEADER.size + size)

    def pending_files(self) -> list[Path]:
        """Spool files to replay, oldest first (claimed ones from a crashed replay included)."""
        if not self.directory.is_dir():
            return []
        files = [p for p in self.directory.glob("spool-*") if p.is_file()]
        return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))

    def replay(self, send: Callable[[bytes], None], stop: Callable[[], bool] | None = None) -> int:
        """Send every spooled record in order; return how many were replayed.

        Stops at the first failure of `send` (the database is still away), or before a record when
        `stop()` says so (the writer's memory queue needs it): the rest stays spooled.
        """
        replayed = 0
        for path in self.pending_files():
            if stop is not None and stop():
                break
            claimed = path if path.name.startswith("spool-claimed-") else self._claim(path)
            if claimed is None:
                continue
            records = list(read_records(claimed))
            done = 0
            try:
                for payload in records:
                    if done and stop is not None and stop():
                        break
                    send(payload)
                    done += 1
            finally:
                if done == len(records):
                    claimed.unlink(missing_ok=True)
                elif done:
                    self._rewrite(claimed, records[done:])
                self._sized = None  # summed again when next asked
            replayed += done
        return replayed

    def _claim(self, path: Path) -> Path | None:
        with self._lock:
            target = path.with_name(f"spool-claimed-{os.getpid()}-{path.name.removeprefix('spool-')}")
            try:
                os.rename(path, target)
            except FileNotFoundError:
                return None  # another worker claimed it first
            return target

    @staticmethod
    def _rewrite(path: Path, remaining: list[bytes]) -> None:
        frames.rewrite(path, MAGIC, remaining)


def read_records(path: Path) -> Iterator[bytes]:
    """The intact records of a spool file, in order; a torn or corrupt tail ends the file."""
    return frames.read(path, MAGIC)
