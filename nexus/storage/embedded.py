"""An embedded PostgreSQL for `nexus serve` without `DATABASE_URL`, and for the test suite.

Uses the `pgserver` package (PostgreSQL binaries shipped on PyPI): it listens on a unix socket inside
its data directory, so it needs no free port and is reachable only from this machine. Its build has no
lz4, which the migrations tolerate.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from nexus.home import home_mode, private_dir

log = logging.getLogger("nexus.storage")


def start_embedded(data_dir: Path, database: str = "nexus") -> tuple[str, Callable[[], None]]:
    """Start (or reuse) a server with its data in `data_dir`; return the URL of `database` and a stop function."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver

        private_dir(data_dir.parent, home_mode())
        data_dir.mkdir(exist_ok=True)
        server = pgserver.get_server(data_dir, cleanup_mode="stop")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    return server.get_uri(database), server.cleanup


@contextmanager
def database_url_or_embedded(url: str | None, home: Path, say: Callable[[str], None]) -> Iterator[str]:
    """`url`, or (when it is None) the embedded database under `home`, started for the block and
    stopped after it: what a one-off command (`nexus import-reference`, `nexus demo-data`) writes to."""
    if url is not None:
        yield url
        return
    say(f"using the embedded database under {home}")
    embedded_url, stop = start_embedded(home / "postgres")
    try:
        yield embedded_url
    finally:
        stop()
