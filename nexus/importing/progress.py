"""The import's progress on stderr: a `rich` bar on a terminal, a plain line now and then otherwise
(a log file or a CI job gets readable lines, not a bar redrawn with carriage returns)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

#: Seconds between two plain lines when stderr is not a terminal.
LINE_EVERY_S = 5.0


class Progress:
    def __init__(self, total: int, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.done = 0
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None
        self._last_line = float("-inf")
        self._line = ""  # the latest counts, printed at the end if the last line did not show them
        self._printed = -1
        if enabled and self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("importing requests"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._task = self._bar.add_task("requests", total=total or None, counts="")
            self._bar.start()

    def advance(self, rows: int, imported: int, skipped: int, failed: int) -> None:
        self.done += rows
        counts = f"imported {imported}, skipped {skipped}, failed {failed}"
        if self._bar is not None:
            self._bar.update(self._task, advance=rows, counts=counts)
            return
        self._line = f"import-reference: {self.done}/{self.total} requests read ({counts})"
        now = time.monotonic()
        if now - self._last_line >= LINE_EVERY_S:
            self._last_line = now
            self._print()

    def _print(self) -> None:
        if self.enabled and self._line and self._printed != self.done:
            self._printed = self.done
            print(self._line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        else:
            self._print()
