"""What `nexus proxy` tunes in the interpreter before Granian forks the workers (they inherit it)."""

from __future__ import annotations

import gc
import sys

from nexus import cli


def test_the_workers_hand_the_gil_over_after_1_ms_and_collect_rarely() -> None:
    """A storage writer needing the GIL back after each libpq call waited up to CPython's 5 ms behind
    the busy event loop: batches took ~3x longer and rows backed up into the spool (cli.py)."""
    old_interval, old_threshold = sys.getswitchinterval(), gc.get_threshold()
    try:
        cli._tune_gc()
        assert sys.getswitchinterval() == cli.SWITCH_INTERVAL_S == 0.001
        assert gc.get_threshold() == (10_000, 50, 100)
    finally:
        sys.setswitchinterval(old_interval)
        gc.set_threshold(*old_threshold)
        gc.unfreeze()
