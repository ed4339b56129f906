"""The allocator settings a proxy worker inherits (nexus/allocator.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

GLIBC = sys.platform == "linux" and os.confstr("CS_GNU_LIBC_VERSION") is not None


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_applied_on_glibc_unless_the_operator_set_them() -> None:
    code = "from nexus.allocator import tune_allocator; print(','.join(tune_allocator()))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "MALLOC_MMAP_THRESHOLD_,MALLOC_ARENA_MAX"
    env["MALLOC_ARENA_MAX"] = "4"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "MALLOC_MMAP_THRESHOLD_"


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_a_freed_large_buffer_goes_back_to_the_system() -> None:
    """What the threshold is for: after a 16 MiB buffer was freed, 1 MiB buffers are mapped on their
    own and returned when freed, instead of staying in the heap (glibc's dynamic threshold)."""
    code = """
import sys
from nexus.allocator import tune_allocator
if sys.argv[1] == "tuned":
    tune_allocator()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 // (1 << 20)
big = bytearray(16 << 20); del big          # raises glibc's dynamic threshold to 16 MiB
held = [bytearray(1 << 20) for _ in range(200)]
held = held[::2]                            # every other one freed: holes no trim can return
print(rss())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    mib = {}
    for mode in ("default", "tuned"):
        out = subprocess.run([sys.executable, "-c", code, mode], env=env, capture_output=True, text=True, check=True)
        mib[mode] = int(out.stdout)
    assert mib["default"] - mib["tuned"] >= 80, mib  # ~100 MiB of freed buffers kept by default
