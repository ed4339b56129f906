"""Project and account names: what may reach a file path, and what may not."""

from __future__ import annotations

import re

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def safe_name(value: str | None) -> str | None:
    """`value` when it is a usable project or account name, else None (never a path: no `/`, no `..`)."""
    if not value:
        return None
    value = value.strip()
    if not _SAFE.match(value) or ".." in value:
        return None
    return value
