"""The addresses Nexus prints and shows: one a browser or client on this machine can actually open.

A wildcard or loopback bind (`0.0.0.0`, `::`, `127.0.0.1`, `::1`) is shown as `localhost`: the
dashboard answers `http://0.0.0.0:3001` with 403 (its loopback check sees no loopback client there),
and some browsers refuse the address outright. Any other IPv6 address is bracketed.
"""

from __future__ import annotations

LOCAL_BINDS = frozenset({"0.0.0.0", "::", "127.0.0.1", "::1", "", "localhost"})


def shown_url(host: str, port: int) -> str:
    """`http://host:port` as a person should type it."""
    shown = "localhost" if host in LOCAL_BINDS else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}"
