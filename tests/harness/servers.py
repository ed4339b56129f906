"""Starting real proxy, dashboard and fake-upstream processes for tests and benchmarks, and stopping them cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was healthy")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (loopback only)
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} not healthy within {timeout_s}s")


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM to the main process only (Granian forwards it), then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def spawn_proxy(
    env: Mapping[str, str], *, workers: int = 1, output: Path | None = None, ready: bool = True
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `nexus proxy` on a free loopback port in its own process group; return it and its URL.

    Its own group lets a test `kill -9` the whole proxy (main process and workers) at once. With
    `output`, the proxy's stdout and stderr (its logs) are appended to that file. It is waited for
    until ready (`/health` answers 200: its database reached), or with `ready=False` only until it
    serves (`/health/live`), for a proxy started while its database is away.
    """
    port = free_port()
    full_env = {**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(port), "PROXY_WORKERS": str(workers)}
    sink = open(output, "ab") if output is not None else None  # the child keeps its own copy
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nexus.cli", "proxy"],
            env=full_env,
            start_new_session=True,
            stdout=sink,
            stderr=subprocess.STDOUT if sink is not None else None,
        )
    finally:
        if sink is not None:
            sink.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url + ("/health" if ready else "/health/live"), proc)
    except BaseException:
        stop(proc)
        raise
    return proc, url


@contextmanager
def run_proxy(
    env: Mapping[str, str], *, workers: int = 1, output: Path | None = None, ready: bool = True
) -> Iterator[str]:
    """Run `nexus proxy` on a free loopback port with `env` added; yield its base URL."""
    proc, url = spawn_proxy(env, workers=workers, output=output, ready=ready)
    try:
        yield url
    finally:
        stop(proc)


def wait_until_answering(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> int:
    """Wait until `url` answers at all (any status); return the status."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (loopback only)
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout_s}s")


@contextmanager
def run_dashboard(env: Mapping[str, str], *, require_healthy: bool = True) -> Iterator[str]:
    """Run `nexus dashboard` on a free loopback port with `env` added; yield its base URL."""
    port = free_port()
    full_env = {**os.environ, **env, "DASHBOARD_HOST": "127.0.0.1", "DASHBOARD_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "nexus.cli", "dashboard"], env=full_env)
    url = f"http://127.0.0.1:{port}"
    try:
        if require_healthy:
            wait_until_healthy(url + "/health", proc)
        else:
            wait_until_answering(url + "/health", proc)
        yield url
    finally:
        stop(proc)


@contextmanager
def run_fake_upstream(
    *, event_delay_ms: float = 0, text_tokens: int = 12, record_bodies: bool = True, record_dir: str | None = None
) -> Iterator[str]:
    """Run the fake Anthropic API on a free loopback port; yield its base URL.

    With `record_dir`, every API request is written there (see `nexus.fake_upstream.scripted`).
    """
    port = free_port()
    cmd = [sys.executable, "-m", "nexus.fake_upstream", "--port", str(port)]
    cmd += ["--event-delay-ms", str(event_delay_ms), "--text-tokens", str(text_tokens)]
    if not record_bodies:
        cmd.append("--no-record-bodies")
    if record_dir:
        cmd += ["--record-dir", record_dir]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url + "/_fake/health", proc)
        yield url
    finally:
        stop(proc)
