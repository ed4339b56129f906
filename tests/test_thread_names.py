"""Nexus's threads carry their names to the operating system (`top -H`, perf, /proc)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from nexus.observability.threads import OS_NAME_BYTES, name_this_thread, os_name


def _comm() -> str:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


def test_the_os_name_drops_the_prefix_and_fits_the_kernels_limit() -> None:
    assert os_name("nexus-storage-writer") == b"storage-writer"
    assert os_name("nexus-storage-overflow") == b"storage-overflo"
    assert len(os_name("x" * 40)) == OS_NAME_BYTES
    assert os_name("nexus-ünïcode") == b"?n?code"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's thread names are Linux's")
def test_a_thread_is_named_for_the_kernel() -> None:
    seen: list[str] = []

    def run() -> None:
        before = _comm()
        assert name_this_thread()
        seen.extend([before, _comm()])

    t = threading.Thread(target=run, name="nexus-storage-writer")
    t.start()
    t.join()
    before, after = seen
    assert before != "storage-writer" and after == "storage-writer"
