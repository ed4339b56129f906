"""Liveness and readiness of a proxy worker, for orchestrators and load balancers.

Live (`GET /health/live`): the worker's event loop answers; nothing else is asked, so a database
outage never gets a healthy process restarted. Ready (`GET /health/ready`, and the status code of
`GET /health`): this worker can serve *and keep* requests: its storage writer reaches the database,
the database has every migration this version needs (the writer cannot store rows into an older
schema), the writer is not stuck, the credential files can all be read, and the worker is not
draining for shutdown. The checks read state the writer and the credential store already keep; a
probe never waits on the database itself, so a hung server cannot hang the probe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from nexus.auth.credentials import CredentialStore


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str

    def as_json(self) -> dict[str, object]:
        return {"ok": self.ok, "detail": self.detail}


def storage_checks(writer: Any) -> list[Check]:
    """Database, migrations and writer (a `StorageWriter`, or None when storage is off)."""
    if writer is None:
        off = Check("database", True, "storage disabled")
        return [off, Check("migrations", True, "storage disabled"), Check("writer", True, "storage disabled")]
    m = writer.metrics
    if m.database_ok:
        database = Check("database", True, "reachable")
    else:
        database = Check("database", False, "unreachable" + (f": {m.last_error}" if m.last_error else " (not yet)"))
    pending = m.migrations_pending
    if not m.migrations_checked:
        migrations = Check("migrations", False, "not checked yet (no database connection so far)")
    elif pending is None:
        migrations = Check("migrations", True, "not visible to this database role (nexus_migrations)")
    elif pending:
        migrations = Check("migrations", False, f"pending: {', '.join(pending)} (run `nexus migrate`)")
    else:
        migrations = Check("migrations", True, "current")
    stuck = writer.stuck_reason()
    return [database, migrations, Check("writer", stuck is None, stuck or "writing")]


def credentials_check(store: CredentialStore) -> Check:
    """The credentials directory can be read, and how many files in it load (cached by the store,
    re-read only when a file changed). A file that does not parse is named but does not make the
    worker unready: only its own project's requests fail, and every other project must keep flowing."""
    problem = credentials_dir_problem(store.directory)
    if problem is not None:
        return Check("credentials", False, problem)
    good, bad = store.all()
    detail = f"{len(good)} loaded"
    if bad:
        named = "; ".join(str(e) for e in bad[:3]) + (" ..." if len(bad) > 3 else "")
        detail += f", {len(bad)} unusable ({named})"
    return Check("credentials", True, detail)


def credentials_dir_problem(directory: os.PathLike[str] | str) -> str | None:
    """Why CREDENTIALS_DIR cannot be used, or None (a directory that does not exist is fine: no
    credentials, every caller's own key passes through)."""
    try:
        if not os.path.exists(directory):
            return None
        if not os.path.isdir(directory):
            return f"CREDENTIALS_DIR {os.fspath(directory)} is not a directory"
        os.listdir(directory)
    except OSError as exc:
        return f"CREDENTIALS_DIR {os.fspath(directory)} cannot be read ({exc.strerror})"
    return None


def readiness(writer: Any, store: CredentialStore, draining: bool) -> tuple[bool, dict[str, Any]]:
    """Whether the worker is ready, and the body that says which check failed."""
    checks = [*storage_checks(writer), credentials_check(store)]
    checks.append(Check("shutdown", not draining, "draining: shutting down" if draining else "serving"))
    failed = [c.name for c in checks if not c.ok]
    body = {
        "status": "ready" if not failed else "not_ready",
        "failed": failed,
        "checks": {c.name: c.as_json() for c in checks},
    }
    return not failed, body
