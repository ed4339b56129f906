"""An append-only, checksummed, fsync'd spool on local disk: where batches wait while PostgreSQL can't
take them, so a database outage or a `kill -9` loses nothing.

A record is one batch exactly as it would be sent (the COPY payloads), framed as
`magic(4) | length(4) | crc32(4) | payload`. Writes append and fsync before returning. A torn tail (a
crash mid-append) fails its length or checksum and is dropped with a warning: it was never
acknowledged as written.

Every worker of a machine (PROXY_WORKERS) spools into files of its own in one directory, and any of
them replays any file, so claims must hold against each other (`replay`):

* A worker claims a file by renaming it to `spool-claimed-<pid>-...` (atomic: of two workers, one
  renames it, the other finds it gone and moves on), then holds an exclusive `flock` on it for as
  long as it replays it, and removes it (or rewrites what is left) before letting go.
* A claimed file whose lock is free was left by a replay that crashed (the kernel drops a dead
  process's locks) or stopped part-way: whoever locks it first replays it. One that is locked is
  being replayed by another worker and is not touched; one that vanished or was replaced while being
  locked was finished by another worker. Neither is an error.
* An append takes the same lock and checks that its file was not claimed meanwhile (renamed away
  between its open and its write); if it was, it appends to a new file. Without that, a batch written
  into a file another worker had already read was removed with it.

A crash mid-replay leaves the claimed file to be replayed again, which is harmless because every
insert is idempotent (`ON CONFLICT DO NOTHING` on the request id); short of a crash, no batch is sent
twice.
"""

from __future__ import annotations

import fcntl
import itertools
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
#: What a claimed file's name starts with (`Spool._claim`).
CLAIMED = "spool-claimed-"
#: An append that keeps finding its file claimed away gives up after this many tries (never seen: a
#: file is claimed at most once per replay).
APPEND_TRIES = 8
#: Numbers the claims of this process (with its pid, a claimed file's name is unique).
_claims = itertools.count()


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
            self._sized = (now, sum(st.st_size for _, st in self._files("spool-*")))
        return self._sized[1]

    def oldest_mtime(self) -> float | None:
        """When the oldest waiting spool file was last written (its rows are at least that old)."""
        times = [st.st_mtime for _, st in self._files("spool-*")]
        return min(times) if times else None

    def _files(self, pattern: str) -> list[tuple[Path, os.stat_result]]:
        """The files matching `pattern` and their stat; one another worker removed (replayed) or renamed
        (claimed) since the listing is left out, not an error."""
        found = []
        try:
            for path in self.directory.glob(pattern):
                try:
                    found.append((path, path.stat()))
                except FileNotFoundError:
                    continue
        except OSError:
            return []
        return found

    def append(self, payload: bytes | Sequence[bytes]) -> None:
        """Append one record durably (given whole or in parts, see `frames.write`); raise
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
            self._append(payload)
            if self._sized is not None:
                self._sized = (self._sized[0], self._sized[1] + frames.HEADER.size + size)

    def _append(self, payload: bytes | Sequence[bytes]) -> None:
        """Append one framed record to the active file and fsync it, under the file's lock: a file
        claimed (renamed) by a replaying worker between the open and the lock is not written to (that
        worker may have read it already); the record goes to a new file instead."""
        path = self.active_path
        for _ in range(APPEND_TRIES):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    # a claimer renamed the file and holds it for its replay: no need to wait for the end
                    # of that replay to find out; a new file is started below
                    if not _still_at(fd, path):
                        continue
                    fcntl.flock(fd, fcntl.LOCK_EX)
                if not _still_at(fd, path):
                    continue
                frames.write(fd, MAGIC, payload)
                os.fsync(fd)
                return
            finally:
                os.close(fd)
        raise OSError(f"spool file {path} was claimed {APPEND_TRIES} times during one append")

    def pending_files(self) -> list[Path]:
        """Spool files to replay, oldest first (claimed ones included: those another worker is
        replaying are skipped by `replay`). Only `.log` files: never a rewrite's temporary file."""
        if not self.directory.is_dir():
            return []
        files = [(st.st_mtime, p.name, p) for p, st in self._files("spool-*.log")]
        return [p for _, _, p in sorted(files)]

    def replay(self, send: Callable[[bytes], None], stop: Callable[[], bool] | None = None) -> int:
        """Send every spooled record in order; return how many were replayed.

        Stops at the first failure of `send` (the database is still away), or before a record when
        `stop()` says so (the writer's memory queue needs it): the rest stays spooled.
        """
        replayed = 0
        for path in self.pending_files():
            if stop is not None and stop():
                break
            claim = self._claim(path)
            if claim is None:
                continue  # another worker's now
            claimed, fd = claim
            try:  # the lock is held until the file is removed or rewritten: no other worker reads it
                with open(fd, "rb", closefd=False) as fh:  # the file locked, whatever its name is now
                    records = list(frames.stream(fh, MAGIC, claimed.name))
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
            finally:
                os.close(fd)
            replayed += done
        return replayed

    def _claim(self, path: Path) -> tuple[Path, int] | None:
        """Make `path` this worker's to replay: its (claimed) name and an open descriptor holding its
        lock; None when it is, or was meanwhile, another worker's (a replay under way, or done)."""
        target = path
        if not path.name.startswith(CLAIMED):
            # a name of its own (never one a rename would replace: the worker's next file of the same name
            # may be claimed while this one still waits, or is being replayed by another worker)
            token = f"{os.getpid()}-{next(_claims)}"
            target = path.with_name(f"{CLAIMED}{token}-{path.name.removeprefix('spool-')}")
            with self._lock:  # not while this process's own append to it is under way
                try:
                    os.rename(path, target)
                except FileNotFoundError:
                    return None  # another worker claimed it first
        try:
            fd = os.open(target, os.O_RDONLY)
        except FileNotFoundError:
            return None  # claimed from this name by another worker, and replayed already
        try:
            # Not waiting: the holder is another worker replaying the file, or (just after the rename
            # above) an append finishing, after which the file is an unlocked claimed file that the next
            # replay takes. Either way, it is not lost.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if not _still_at(fd, target):  # replayed and removed, or rewritten, while it was being opened
            os.close(fd)
            return None
        return target, fd

    @staticmethod
    def _rewrite(path: Path, remaining: list[bytes]) -> None:
        frames.rewrite(path, MAGIC, remaining)


def _still_at(fd: int, path: Path) -> bool:
    """Whether the file open as `fd` is still the one named `path` (not renamed away or replaced)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def read_records(path: Path) -> Iterator[bytes]:
    """The intact records of a spool file, in order; a torn or corrupt tail ends the file."""
    return frames.read(path, MAGIC)
