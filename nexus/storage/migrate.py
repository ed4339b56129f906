"""Applying the numbered SQL migrations: idempotent, recorded, and safe from several processes.

Every process that starts (`nexus serve`, `nexus proxy`, `nexus migrate`) may call `migrate()`; an
advisory lock serialises them, the `nexus_migrations` table records what was applied with a checksum,
and each migration runs in its own transaction, so a failed one leaves nothing half-applied.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg

from nexus.storage.partitions import ensure_partitions

log = logging.getLogger("nexus.storage")

LOCK_KEY = 0x6E65787573  # "nexus"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("nexus.storage").joinpath("sql").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append(Migration(int(name[:4]), name.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def wait_for_database(dsn: str, seconds: float, interval: float = 1.0) -> None:
    """Return once `dsn` accepts a connection; re-raise the last error after `seconds`.

    A migration job started beside its database (compose, a Kubernetes Job) may run before the server
    accepts connections, and not every engine can hold it back until then.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            psycopg.connect(dsn, connect_timeout=max(1, int(interval * 2))).close()
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() + interval > deadline:
                raise
            log.info("database not reachable yet (%s); retrying", str(exc).strip().splitlines()[0])
            time.sleep(interval)


def migrate(dsn: str, pricing_file: Path | None = None) -> list[str]:
    """Apply pending migrations, make sure the coming days have partitions, and write the price table
    (shipped prices with `pricing_file` over them); return what was applied."""
    from nexus.pricing.sync import sync_prices
    from nexus.pricing.table import load

    prices = load(pricing_file)  # a bad price file fails before anything is written
    applied: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS nexus_migrations (version int PRIMARY KEY, name text NOT NULL, "
                "checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {v: c for v, c in conn.execute("SELECT version, checksum FROM nexus_migrations").fetchall()}
            for m in available_migrations():
                if m.version in done:
                    if done[m.version] != m.checksum:
                        log.warning("migration %s changed after it was applied; not re-applied", m.name)
                    continue
                with conn.transaction():
                    conn.execute(m.sql)  # type: ignore[arg-type]
                    conn.execute(
                        "INSERT INTO nexus_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (m.version, m.name, m.checksum),
                    )
                applied.append(m.name)
                log.info("applied migration %s", m.name)
            ensure_partitions(conn)
            sync_prices(conn, prices)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return applied


def pending_migrations(conn: psycopg.Connection) -> list[str] | None:
    """The migrations this database lacks (all of them before the first `migrate`), or None when this
    role may not read `nexus_migrations` (the least-privilege roles of 0002): readiness reports them,
    since the writer cannot store rows into a schema it does not match."""
    row = conn.execute(PENDING_CHECK_SQL).fetchone()
    if row is None or not row[0]:
        return [m.name for m in available_migrations()]
    if not row[1]:
        return None
    done = {int(v) for (v,) in conn.execute("SELECT version FROM nexus_migrations").fetchall()}
    return pending_names(done)


#: Whether `nexus_migrations` exists, and whether this role may read it.
PENDING_CHECK_SQL = (
    "SELECT to_regclass('nexus_migrations') IS NOT NULL, "
    "to_regclass('nexus_migrations') IS NOT NULL AND has_table_privilege('nexus_migrations', 'SELECT')"
)


def pending_names(done: set[int]) -> list[str]:
    return [m.name for m in available_migrations() if m.version not in done]
