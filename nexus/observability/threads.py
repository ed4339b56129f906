"""Nexus's threads named for the operating system too, so `top -H`, `ps -L`, perf and /proc tell the
storage writer from the event loop.

CPython 3.11 keeps `threading.Thread.name` to itself: every thread of a worker shows as `python`. On
Linux the kernel keeps a 15-byte name per thread (`/proc/PID/task/TID/comm`), set here through glibc's
`pthread_setname_np` for the calling thread; elsewhere nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from functools import cache
from typing import Any

#: The kernel's limit for a thread's name, without the terminating NUL.
OS_NAME_BYTES = 15


@cache
def _setname() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.pthread_setname_np
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_ulong, ctypes.c_char_p], ctypes.c_int
    return fn


def os_name(name: str) -> bytes:
    """`name` as the kernel keeps it: a `nexus-` prefix dropped (every such thread is Nexus's), cut to 15 bytes."""
    return name.removeprefix("nexus-").encode("ascii", "replace")[:OS_NAME_BYTES]


def name_this_thread(name: str | None = None) -> bool:
    """Give the calling thread its name (by default its `threading` name) at the OS level; True if done."""
    fn = _setname()
    if fn is None:
        return False
    result: int = fn(threading.get_ident(), os_name(name or threading.current_thread().name))
    return result == 0
