"""Writing secret files safely, and the machine-wide lock that serialises changes to one credential.

A credential file is read by every worker and process on the machine while it may be rewritten (a
refresh, a login), so a reader must see the old content or the new, never half of either: writes go
to a private temp file in the same directory, are flushed, then renamed over the target. Files are
created 0600 and their directories 0700, because they hold tokens.

Refresh tokens are single-use, so two writers working from the same file would spend one token twice.
`credential_lock` takes an exclusive `flock` on `<file>.lock` beside the credential: it excludes every
thread and process of the machine (each `open` gets its own lock), and the kernel drops it when its
holder dies, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from nexus.home import private_dir


def ensure_private_dir(directory: Path) -> None:
    """Create `directory` (and parents) if needed; a directory we create is readable by its owner only."""
    private_dir(directory)


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` with `data` as JSON, 0600, so a concurrent reader sees the old or the new file."""
    ensure_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:  # mkstemp creates the file 0600
            handle.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable, so a power cut cannot bring back a spent refresh token."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def credential_lock(path: Path) -> Iterator[None]:
    """Hold the machine-wide exclusive lock of the credential at `path` (blocks until it is free)."""
    ensure_private_dir(path.parent)
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
