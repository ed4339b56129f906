"""Finding 9 of "Safe on a network", the rest: a second instance on a busy port, private state
directories, aborted uploads that flooded the log, selectors that fell back to `default` silently."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from nexus.home import private_dir
from nexus.storage.spool import Spool
from tests.auth_helpers import proxy_env
from tests.harness.servers import run_proxy
from tests.helpers import health


def test_a_second_instance_on_a_busy_port_fails_naming_the_port(upstream_url: str, tmp_path: Path) -> None:
    with run_proxy(proxy_env(upstream_url, tmp_path)) as url:
        port = url.rsplit(":", 1)[1]
        env = {**os.environ, **proxy_env(upstream_url, tmp_path), "HOST": "127.0.0.1", "PORT": port}
        done = subprocess.run(
            [sys.executable, "-m", "nexus.cli", "proxy"], env=env, capture_output=True, text=True, timeout=30
        )
        assert done.returncode != 0
        assert f"port {port}" in done.stderr and "PORT" in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) <= 2
        assert health(url)["status"] in ("healthy", "degraded")  # the first one still serves


def test_state_directories_are_private(tmp_path: Path) -> None:
    home = tmp_path / "a" / "home"
    Spool(home / "spool", 1 << 20).append(b"batch")
    for path in (tmp_path / "a", home, home / "spool"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    old = os.umask(0)
    try:
        assert stat.S_IMODE(private_dir(tmp_path / "b" / "c").stat().st_mode) == 0o700
    finally:
        os.umask(old)


def _raw(url: str, data: bytes, *, close_after_s: float | None = None) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        if close_after_s is not None:
            time.sleep(close_after_s)
            return b""
        return sock.recv(65536)


def test_aborted_uploads_are_counted_not_logged_as_tracebacks(upstream_url: str, tmp_path: Path) -> None:
    log = tmp_path / "proxy.log"
    with run_proxy(proxy_env(upstream_url, tmp_path), output=log) as url:
        head = b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n"
        for _ in range(5):
            _raw(url, head + b'content-length: 1000\r\n\r\n{"model":', close_after_s=0.1)
        time.sleep(0.5)
        stats = health(url)["stats"]
    assert stats["aborted_uploads"] == 5
    text = log.read_text()
    assert "Traceback" not in text and "ProtocolClosed" not in text, text


def test_selector_headers_that_are_not_ascii_are_refused(upstream_url: str, tmp_path: Path) -> None:
    body = b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}'
    with run_proxy(proxy_env(upstream_url, tmp_path)) as url:
        for header in (b"train-id: caf\xc3\xa9", b"x-train-account: \xe9t\xe9", b"msl-project-id: \xff"):
            request = (
                b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n"
                b"anthropic-version: 2023-06-01\r\nx-api-key: sk-ant-api03-x\r\n" + header + b"\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
            )
            answer = _raw(url, request)
            assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
            assert b"only ASCII" in answer
