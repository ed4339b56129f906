"""Start-up checks of what a server needs from the machine: its port, and enough file descriptors.

Granian binds with `SO_REUSEPORT`, so a second instance on a busy port used to start silently and the
kernel split the traffic between the two (and their different settings). Binding a plain socket first
(no `SO_REUSEPORT`) fails while anything listens there, which turns that into one clear line naming
the port and the setting. Each open connection, slow ones included, holds a descriptor: the soft
limit is raised to the hard one so the proxy's request slots, not the descriptor table, are what runs
out first.
"""

from __future__ import annotations

import errno
import resource
import socket


class PortInUseError(RuntimeError):
    """The listen address is taken; the message names the port and the setting that chose it."""


def ensure_port_free(host: str, port: int, setting: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT leftover is not "in use"
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"port {port} on {host} is already in use (another Nexus or another program listens there): "
                    f"stop it or choose another port with {setting}"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise PortInUseError(f"cannot listen on {host}:{port}: no such local address ({setting})") from None
            raise PortInUseError(f"cannot listen on {host}:{port} ({setting}): {exc.strerror}") from None


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
        except (ValueError, OSError):
            return soft
    return soft
