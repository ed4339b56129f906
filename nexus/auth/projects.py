"""Which project a request belongs to, and which named account (if any) it asks for.

Project order: the project bound to an authenticated client key; else the `train-id` header (alias
`MSL-Project-Id`); else the `Host` domain (port kept for localhost and IP hosts, where it is what tells
two local deployments apart, dropped otherwise); else `default`. A header never overrides the project
of an authenticated key. A selector header that is present but not a safe name is refused with a 400
instead of being ignored: falling through to another project would bill the wrong account silently.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from nexus.auth import errors
from nexus.auth.credentials import CredentialError
from nexus.auth.names import safe_name

DEFAULT_PROJECT = "default"
PROJECT_HEADERS = ("train-id", "msl-project-id")
ACCOUNT_HEADERS = ("x-train-account", "msl-account")


def host_project(host: str | None) -> str | None:
    """The project named by a Host header, or None when it is absent or not a usable name."""
    if not host:
        return None
    return _host_project(host)


@lru_cache(maxsize=1024)  # a deployment sees few Host values; parsing an IP each time costs microseconds
def _host_project(host: str) -> str | None:
    host = host.strip().lower()
    if host.startswith("["):  # pragma: no mutate ([v6]:port: safe_name refuses '[' anyway; a fast path)
        return None
    bare, _, port = host.partition(":") if host.count(":") == 1 else (host, "", "")
    is_local = bare == "localhost" or _is_ip(bare)
    return safe_name(f"{bare}:{port}" if is_local and port else bare)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _selector(headers: dict[str, str], names: tuple[str, ...], what: str) -> str | None:
    """The first non-empty selector header's value, checked; None when none is sent."""
    for header in names:
        value = (headers.get(header) or "").strip()
        if not value:
            continue
        if safe_name(value) is None:
            raise errors.bad_selector(
                header, CredentialError(f"not a valid {what} name (letters, digits and . _ : -, 128 at most)")
            )
        return value
    return None


def resolve_project(headers: dict[str, str], key_project: str | None, default: str | None = None) -> str:
    """`default` (DEFAULT_PROJECT_ID) replaces the Host step when set, as in the reference's project era."""
    if key_project:
        return key_project
    selected = _selector(headers, PROJECT_HEADERS, "project")
    if selected:
        return selected
    if default:
        return default
    return host_project(headers.get("host")) or DEFAULT_PROJECT


def requested_account(headers: dict[str, str]) -> str | None:
    return _selector(headers, ACCOUNT_HEADERS, "account")
