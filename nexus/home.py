"""Local state directories (NEXUS_HOME, the spool, credentials): private to the user who runs Nexus.

They hold stored prompts waiting to be written (the spool), the embedded database and credentials,
so every directory Nexus creates is 0700: readable by its owner only, whatever the umask. The one
exception is NEXUS_HOME itself when running as root with the embedded database: PostgreSQL then runs
as its own OS user (`pgserver`) and must be able to pass through NEXUS_HOME to its data directory,
so NEXUS_HOME is 0711 (others may traverse it, never list or read it).
"""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(directory: Path, mode: int = 0o700) -> Path:
    """Create `directory` and any missing parents with `mode`; return it."""
    missing = []
    path = directory
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for level in reversed(missing):
        try:
            level.mkdir(mode=mode)
        except FileExistsError:
            continue
        os.chmod(level, mode)  # mkdir's mode is filtered by the umask
    return directory


def home_mode() -> int:
    """The mode of NEXUS_HOME (see the module docstring)."""
    return 0o711 if hasattr(os, "geteuid") and os.geteuid() == 0 else 0o700
