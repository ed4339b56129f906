"""Which project a request belongs to.

Order: the project bound to an authenticated client key; else the `train-id` header (alias
`MSL-Project-Id`); else the `Host` domain (port kept for localhost and IP hosts, where it is what
tells two local deployments apart, dropped otherwise); else `default`. A header never overrides the
project of an authenticated key.
"""

from __future__ import annotations

import ipaddress

from nexus.auth.names import safe_name

DEFAULT_PROJECT = "default"


def host_project(host: str | None) -> str | None:
    if not host:
        return None
    host = host.strip().lower()
    if host.startswith("["):  # [v6-address]:port
        bare, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":")
    elif ":" in host:
        bare, port = host.rsplit(":", 1)
    else:
        bare, port = host, ""
    is_local = bare == "localhost" or _is_ip(bare)
    return safe_name(f"{bare}:{port}" if is_local and port else bare)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def resolve_project(headers: dict[str, str], key_project: str | None) -> str:
    if key_project:
        return key_project
    for name in ("train-id", "msl-project-id"):
        project = safe_name(headers.get(name))
        if project:
            return project
    return host_project(headers.get("host")) or DEFAULT_PROJECT
