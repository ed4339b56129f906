"""`nexus serve`: the proxy and the dashboard (and, with AI_WORKER_ENABLED, the analysis worker) as child
processes, started and stopped together.

Each child runs in its own session, so a Ctrl-C in the terminal reaches only this supervisor, which
then sends SIGTERM to each child's main PID (never to a process group: Granian's shutdown can hang
when its workers are signalled directly). If either child dies, the other is stopped and `serve`
exits non-zero, so a container or service manager sees the failure and restarts the whole gateway.
On Linux the children also get SIGTERM if the supervisor itself is killed. Its first line says where the
data lives (NEXUS_HOME, the database: every checkout shares the default NEXUS_HOME, so its embedded
database), and its last line, when it stops, says so again.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nexus.observability.logs import emit
from nexus.proxy.drain import worker_kill_timeout_s
from nexus.settings import Settings

#: Longer than the proxy's own drain with the default settings (`worker_kill_timeout_s`, 60 s).
STOP_TIMEOUT_S = 65.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover (runs in the child between fork and exec)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass


def _spawn(command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "nexus.cli", command], env=env, start_new_session=True, preexec_fn=_die_with_parent
    )


def _say(message: str, level: str = "info") -> None:
    """One line of the supervisor's own, in the configured log format (LOG_FORMAT)."""
    emit(message, os.environ.get("LOG_FORMAT", "text").lower(), "nexus-serve", level)


def _migrate(url: str, pricing_file: Path | None) -> None:
    from nexus.storage.migrate import migrate

    try:
        applied = migrate(url, pricing_file)
    except Exception as exc:
        reason = " ".join(f"{exc.__class__.__name__}: {exc}".split())
        _say(f"warning: migrations not applied ({reason}); rows will be spooled", "warning")
        return
    if applied:
        _say(f"applied migrations: {', '.join(applied)}")


def _reap_group(proc: subprocess.Popen[bytes]) -> None:
    """A child that died (e.g. `kill -9`) may leave its workers behind in its session: end them."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


def stop_children(children: dict[str, subprocess.Popen[bytes]], timeout_s: float = STOP_TIMEOUT_S) -> None:
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the main PID only: it stops its own workers
        else:
            _reap_group(proc)
    deadline = time.monotonic() + timeout_s
    for name, proc in children.items():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _say(f"nexus serve: {name} did not stop in {timeout_s:g} s; killing it", "warning")
            proc.kill()
            proc.wait(5)


def where_data_lives(settings: Settings, embedded: bool) -> str:
    """Where this gateway keeps what it stores: NEXUS_HOME, and the database (the start and stop lines).

    Every checkout and install of Nexus run by the same user shares the default NEXUS_HOME, and so one
    embedded database: the lines say which one this is (set NEXUS_HOME to keep two apart)."""
    home = settings.nexus_home
    if embedded:
        return f"NEXUS_HOME={home}; database: embedded PostgreSQL with its data in {home / 'postgres'}"
    if settings.database_url is not None:
        from nexus.importing.source import source_name  # host:port/database, never the password

        return f"NEXUS_HOME={home}; database: {source_name(settings.database_url)} (DATABASE_URL)"
    return f"NEXUS_HOME={home}; no database (storage disabled)"


def serve_all(settings: Settings) -> int:
    """Run until SIGTERM / SIGINT (exit 0) or until a child dies (exit 1)."""
    env = dict(os.environ)
    url = settings.database_url
    stop_embedded = None
    embedded = settings.storage_enabled and url is None
    _say(f"nexus serve: {where_data_lives(settings, embedded)}")
    if embedded:
        from nexus.storage.embedded import start_embedded

        url, stop_embedded = start_embedded(settings.nexus_home / "postgres")
        env["DATABASE_URL"] = url
        if settings.link_shared == "auto" and settings.proxy_workers == 1:
            # one process uses this database: its memory sees every request, and nothing else will ever
            # read the shared tables (auto would be solo, but still write them)
            env["LINK_SHARED"] = "off"
    stopping: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        if url is not None:
            _migrate(url, settings.pricing_file)
        children["proxy"] = _spawn("proxy", env)
        if url is not None:
            children["dashboard"] = _spawn("dashboard", env)
            if settings.ai_worker_enabled:
                children["worker"] = _spawn("worker", env)  # AI analysis (docs/analysis.md)
        else:
            _say("nexus serve: storage is disabled and DATABASE_URL unset; no dashboard", "warning")
        pids = ", ".join(f"{name} pid {proc.pid}" for name, proc in children.items())
        _say(f"nexus serve: {pids}")
        while not stopping:
            dead = next(((n, p) for n, p in children.items() if p.poll() is not None), None)
            if dead is not None:
                _say(f"nexus serve: {dead[0]} exited with {dead[1].returncode}; stopping", "error")
                return 1
            time.sleep(0.2)
        return 0
    finally:
        stop_children(children, worker_kill_timeout_s(settings) + 5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stop_embedded is not None:
            stop_embedded()
        why = f" on {signal.Signals(stopping[0]).name}" if stopping else ""
        _say(f"nexus serve: stopped{why}; data kept: {where_data_lives(settings, embedded)}")
