"""Start-up warnings about the environment: reference variables Nexus ignores, and likely typos.

Before this, about 65 variables of the reference system were ignored without a word, and so was a
misspelt Nexus setting (`STORAGE_BATCH_SIZ=500` left the default in place). Now each one set gets one
line naming what to use instead. Values are never shown: some of these variables hold secrets.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping

from nexus.compat.reference_env import ALIASES, REFERENCE_VARS, handled_elsewhere

#: Set in the environment once the warnings were printed, so `nexus serve`'s children stay quiet.
CHECKED_MARKER = "NEXUS_ENVIRONMENT_CHECKED"
#: `NEXUS_*` names Nexus itself (or its tests and images) uses that are not settings.
INTERNAL = frozenset({CHECKED_MARKER, "NEXUS_SERVICE", "NEXUS_IMAGE", "NEXUS_ENV_FILE"})
INTERNAL_PREFIXES = ("NEXUS_TEST_",)
#: Name prefixes other software owns even where they resemble a Nexus setting (`OTEL_*` configures
#: the OpenTelemetry SDK, `PROMETHEUS_*` its client, `POSTGRES_*` the database image).
FOREIGN_PREFIXES = ("OTEL_", "PROMETHEUS_", "POSTGRES_", "PG", "PYTHON", "LC_", "GRANIAN_", "ROBYN_")
#: How alike a name must be to a setting's to be reported as a typo of it (difflib's ratio).
TYPO_CUTOFF = 0.85


def setting_names() -> list[str]:
    from nexus.settings import Settings

    return [name.upper() for name in Settings.model_fields]


def environment_warnings(env: Mapping[str, str], settings: Iterable[str] | None = None) -> list[str]:
    """One line per variable set in `env` that Nexus will not use as its owner expects."""
    known = list(settings if settings is not None else setting_names())
    known_set = set(known)
    lines: list[str] = []
    for name in sorted(env):
        if name in known_set:
            continue
        row = REFERENCE_VARS.get(name)
        if row is not None:
            if row.status == "unsupported":
                lines.append(f"{name} (from the reference system) is not supported; instead: {_plain(row.nexus)}")
            elif row.status == "alias":
                lines.extend(_shadowed(name, env))
            continue
        if handled_elsewhere(name) or name in INTERNAL or name.startswith(INTERNAL_PREFIXES):
            continue
        if name.startswith("NEXUS_"):
            bare = name.removeprefix("NEXUS_")
            guess = bare if bare in known_set else _closest(bare, known) or _closest(name, known)
            hint = f"did you mean {guess}?" if guess else "see `nexus config` for the settings"
            lines.append(f"{name} is not a Nexus setting (settings have no NEXUS_ prefix but NEXUS_HOME): {hint}")
            continue
        if name.startswith(FOREIGN_PREFIXES) or "_" not in name or not name.isupper():
            continue
        guess = _closest(name, known)
        if guess is not None:
            lines.append(f"{name} is not a Nexus setting and is ignored: did you mean {guess}?")
    return lines


def _shadowed(name: str, env: Mapping[str, str]) -> list[str]:
    """A reference alias set beside the Nexus setting it maps to: the Nexus one wins, say so."""
    for field, sources in ALIASES.items():
        if any(source == name for source, _ in sources) and field.upper() in env:
            return [f"{name} (from the reference system) is ignored: {field.upper()} is set and wins"]
    if name.startswith("DB_") and name != "DB_POOL_SIZE" and "DATABASE_URL" in env:
        return [f"{name} (from the reference system) is ignored: DATABASE_URL is set and wins"]
    return []


def _closest(name: str, known: list[str]) -> str | None:
    found = difflib.get_close_matches(name, known, n=1, cutoff=TYPO_CUTOFF)
    return found[0] if found else None


def _plain(text: str) -> str:
    return text.replace("`", "")


def warn_once() -> list[str]:
    """The warnings for this process's environment, unless a parent (`nexus serve`) printed them
    already; marks the environment so the processes it starts do not repeat them."""
    if os.environ.get(CHECKED_MARKER):
        return []
    os.environ[CHECKED_MARKER] = "1"
    return environment_warnings(os.environ)


def dashboard_port_warning(env: Mapping[str, str]) -> str | None:
    """`nexus dashboard` with the reference dashboard's environment: that service listened on `PORT`,
    Nexus's dashboard on `DASHBOARD_PORT` (`PORT` is the proxy's). Said when they differ, not changed:
    a shared environment file's `PORT` is the proxy's, and the dashboard must not take it."""
    given = (env.get("PORT") or "").strip()
    if not given or env.get("DASHBOARD_PORT") or given == "3001":
        return None
    return (
        "PORT is the proxy's port in Nexus: `nexus dashboard` listens on DASHBOARD_PORT (3001); "
        f"set DASHBOARD_PORT={given} to keep the reference dashboard's port"
    )
