"""What every end-to-end benchmark starts before Nexus: PostgreSQL (embedded, or the one given) and the
Rust mock upstream, and the settings a `nexus proxy` needs to use them. One place, so the harnesses
(overhead, targets, memprobe) measure the same stack."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness.procs import Proc, bench_database, server, upstream_command
from bench.harness.tools import build_loadgen


@dataclass(frozen=True)
class Stack:
    dsn: str
    #: The embedded PostgreSQL's postmaster (to pin its backends), None for a given database.
    postmaster: int | None
    upstream: Proc
    home: Path

    def proxy_env(self, workers: int, settings: Sequence[str] = ()) -> dict[str, str]:
        """A `nexus proxy`'s environment: this stack's upstream, database and home, `workers`
        workers, and `settings` (`KEY=VALUE`, from the command line) over them."""
        return {
            "CLAUDE_API_BASE_URL": self.upstream.url,
            "DATABASE_URL": self.dsn,
            "NEXUS_HOME": str(self.home),
            "PROXY_WORKERS": str(workers),
            **dict(kv.split("=", 1) for kv in settings),
        }


@contextmanager
def bench_stack(database_url: str | None, home: Path, layout: Any, upstream: str = "mock") -> Iterator[Stack]:
    """PostgreSQL and the upstream (`mock` or another `upstream_command` kind) on `layout`'s cores,
    stopped at the end."""
    with bench_database(database_url, home / "postgres", layout.database) as (dsn, postmaster):
        up_cmd, up_health = upstream_command(upstream, build_loadgen(), layout.upstream)
        with server(up_cmd, up_health) as up:
            yield Stack(dsn, postmaster, up, home)
