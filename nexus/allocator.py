"""glibc's allocator, told once (before the workers fork) to give large buffers back to the system.

A proxy worker handles 50 KB bodies, COPY payloads of megabytes and spool files of up to 4 MiB from
several threads. With glibc's defaults, each thread that allocates gets an arena of its own, and the
threshold above which a buffer is mapped on its own (and unmapped when freed) rises to the size of the
largest buffer freed so far, up to 32 MiB: after the first big batch, every body and payload comes from
the arenas, and a freed one stays in the process (the resident size ratchets up with traffic peaks).
A fixed 64 KiB threshold and two arenas keep a worker's resident size close to what it holds: measured
under sustained load with the writer behind (docs/storage.md, "Memory"). An operator who sets
`MALLOC_MMAP_THRESHOLD_` or `MALLOC_ARENA_MAX` keeps theirs. Other C libraries: nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger("nexus")

#: mallopt() parameters (glibc's malloc.h).
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8
MMAP_THRESHOLD_BYTES = 64 * 1024
ARENAS = 2


def tune_allocator() -> list[str]:
    """Apply the settings above on glibc; the names of those applied (empty elsewhere)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return []
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return []
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = []
    for env, param, value in (
        ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        ("MALLOC_ARENA_MAX", M_ARENA_MAX, ARENAS),
    ):
        if env not in os.environ and mallopt(param, value) == 1:
            applied.append(env)
    log.debug("allocator: %s", ", ".join(applied) or "left as it is")
    return applied
