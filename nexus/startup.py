"""Start-up checks: what would otherwise fail later, deep inside a worker, with a backtrace.

Each failure is one line that names the setting to change (`StartupError`), printed by the command
before anything starts: a listen port that is taken (`nexus.ports`), a credentials directory that is
not one or cannot be read, a `NEXUS_HOME` where the spool cannot be written. A database that is merely
unreachable is not a start-up failure: the proxy serves and spools, and `/health/ready` says so.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from nexus.ports import PortInUseError, ensure_port_free
from nexus.proxy.probes import credentials_dir_problem
from nexus.settings import Settings


class StartupError(RuntimeError):
    """One line: what is wrong and which setting decides it."""


def check_port(host: str, port: int, setting: str) -> None:
    try:
        ensure_port_free(host, port, setting)
    except PortInUseError as exc:
        raise StartupError(str(exc)) from None


def check_proxy(settings: Settings) -> None:
    """Everything the proxy needs from the machine besides its port."""
    problem = credentials_dir_problem(settings.credentials_dir)
    if problem is not None:
        raise StartupError(f"{problem}: point CREDENTIALS_DIR at a readable directory (or a path that does not exist)")
    if settings.storage_enabled and settings.database_url is not None:
        check_writable(settings.nexus_home, "NEXUS_HOME", "the spool that keeps rows while the database is away")
    check_client_auth(settings)
    check_secret_key(settings)


def check_secret_key(settings: Settings) -> None:
    """With credentials in the database and NEXUS_SECRET_KEY unset, the key file under NEXUS_HOME must be
    readable or creatable now, not in every worker's first request."""
    if not settings.credentials_database or settings.nexus_secret_key:
        return
    from nexus.auth.sealing import SealingError, load_box

    try:
        load_box(None, settings.nexus_home)
    except (OSError, SealingError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StartupError(
            f"NEXUS_SECRET_KEY is unset and {settings.nexus_home / 'secret.key'} cannot be used ({reason}): set "
            "NEXUS_SECRET_KEY (make one with `nexus credentials new-key`; the same on every instance)"
        ) from None


def check_client_auth(settings: Settings) -> None:
    """With client authentication on, someone must be able to get in: keys from `nexus keys create`
    need API_KEY_SALT; the reference system's keys in files need nothing."""
    if not settings.enable_client_auth or settings.api_key_salt:
        return
    from nexus.auth.reference_keys import read_reference_keys

    keys, _ = read_reference_keys(settings.credentials_dir, settings.client_keys_dir)
    if not keys:
        raise StartupError(
            "ENABLE_CLIENT_AUTH is true but no client could get in: set API_KEY_SALT (e.g. `openssl rand -hex 32`) "
            "for keys from `nexus keys create`, or keep the reference system's keys (client_api_key in credential "
            "files, or TRAIN_CLIENT_KEYS_DIR)"
        )


def check_writable(directory: Path, setting: str, why: str) -> None:
    """`directory` exists (or can be made) and a file can be written in it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".nexus-write-check-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise StartupError(f"{setting} {directory} is not writable ({reason}); it holds {why}") from None
