"""`GET /client-setup/{filename}`: files from CLIENT_SETUP_DIR, generated settings, every path trick refused."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from nexus.proxy.client_setup import ClientSetup, is_safe_name
from nexus.settings import Settings
from tests.harness.servers import run_proxy

SECRET = "not-for-clients-8c1d"


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("client-setup")
    folder = root / "client-setup"
    folder.mkdir()
    (folder / "install.sh").write_text("#!/bin/sh\necho hello\n")
    (folder / "team.json").write_text('{"team": true}\n')
    (folder / "README").write_text("read me\n")
    (folder / ".credentials.json").write_text(SECRET)
    (folder / "sub").mkdir()
    (folder / "sub" / "inner.json").write_text(SECRET)
    (root / "outside.json").write_text(SECRET)
    (folder / "escape.json").symlink_to(root / "outside.json")
    os.mkfifo(folder / "fifo.json")  # opening it must not block the worker
    (folder / "big.txt").write_bytes(b"x" * (1024 * 1024 + 1))
    return folder


@pytest.fixture(scope="module")
def proxy(setup_dir: Path) -> Iterator[str]:
    env = {"CLAUDE_API_BASE_URL": "http://127.0.0.1:9", "STORAGE_ENABLED": "false", "CLIENT_SETUP_DIR": str(setup_dir)}
    with run_proxy(env) as url:
        yield url


def raw_get(url: str, target: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET with the request target sent byte for byte (no client-side normalisation)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        head = f"GET {target} HTTP/1.1\r\nHost: {host or parts.netloc}\r\nConnection: close\r\n\r\n"
        sock.sendall(head.encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def test_files_are_served_with_their_content_types(proxy: str) -> None:
    for name, content_type, body in [
        ("install.sh", "text/x-shellscript; charset=utf-8", b"#!/bin/sh\necho hello\n"),
        ("team.json", "application/json; charset=utf-8", b'{"team": true}\n'),
        ("README", "text/plain; charset=utf-8", b"read me\n"),
    ]:
        status, headers, got = raw_get(proxy, f"/client-setup/{name}")
        assert (status, got) == (200, body)
        assert headers["content-type"] == content_type
        assert headers["cache-control"] == "public, max-age=3600"
        assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "target",
    [
        "/client-setup/.credentials.json",
        "/client-setup/escape.json",  # a symbolic link out of the folder
        "/client-setup/sub/inner.json",
        "/client-setup/sub",
        "/client-setup/fifo.json",
        "/client-setup/big.txt",
        "/client-setup/../README.md",
        "/client-setup/..%2f..%2fpyproject.toml",
        "/client-setup/%2e%2e%2fclient-setup%2fteam.json",
        "/client-setup/%2e%2e/outside.json",
        "/client-setup/..%5coutside.json",
        "/client-setup/%2ecredentials.json",
        "/client-setup/sub%2finner.json",
        "/client-setup/team.json%00.txt",
        "/client-setup/team.json/",
        "/client-setup/team.json%20",
        "/client-setup/",
        "/client-setup/..",
        "/client-setup/.",
        "/client-setup//etc/passwd",
        "/client-setup/%252e%252e%252foutside.json",
        "/client-setup/te%C3%A4m.json",
        "/client-setup/" + "a" * 200,
        "/client-setup/absent.json",
    ],
)
def test_path_tricks_are_404_and_reveal_nothing(proxy: str, target: str) -> None:
    status, _, body = raw_get(proxy, target)
    assert status == 404, (target, status)
    assert SECRET.encode() not in body
    error = orjson.loads(body)["error"]
    assert error == {"type": "not_found_error", "message": "No such client setup file."}


def test_the_generated_claude_settings_point_at_this_gateway(proxy: str) -> None:
    status, headers, body = raw_get(proxy, "/client-setup/claude-settings.json")
    assert status == 200 and headers["cache-control"] == "no-store"  # built from the Host: not for caches
    assert orjson.loads(body) == {"env": {"ANTHROPIC_BASE_URL": proxy}}
    _, _, body = raw_get(proxy, "/client-setup/claude-settings.json", host="gateway.internal:3000")
    assert orjson.loads(body)["env"]["ANTHROPIC_BASE_URL"] == "http://gateway.internal:3000"
    _, _, body = raw_get(proxy, "/client-setup/claude-settings.json", host="evil.example/<script>")
    assert orjson.loads(body)["env"]["ANTHROPIC_BASE_URL"].startswith("http://localhost:")
    assert raw_get(proxy, "/client-setup/mcp.json")[0] == 404  # MCP is not enabled here


class Proto:
    def __init__(self) -> None:
        self.sent: tuple[int, list[tuple[str, str]], bytes] | None = None

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.sent = (status, headers, body)


def fetch(setup: ClientSetup, name: str) -> tuple[dict[str, str], Any]:
    proto = Proto()
    scope = SimpleNamespace(path=f"/client-setup/{name}", headers={"host": "ignored:1"}, scheme="http")
    setup.handle(scope, proto, "req")
    assert proto.sent is not None and proto.sent[0] == 200
    return dict(proto.sent[1]), orjson.loads(proto.sent[2])


def test_with_a_base_url_and_client_keys_the_files_name_no_key(tmp_path: Path) -> None:
    settings = Settings(
        client_setup_dir=tmp_path,
        client_setup_base_url="https://nexus.example.com/",
        enable_client_auth=True,
        api_key_salt="s" * 32,
        mcp_enabled=True,
    )
    setup = ClientSetup(settings)
    headers, doc = fetch(setup, "claude-settings.json")
    assert doc == {
        "env": {"ANTHROPIC_BASE_URL": "https://nexus.example.com"},
        "apiKeyHelper": "printenv NEXUS_CLIENT_KEY",
    }
    assert headers["cache-control"] == "public, max-age=3600"
    _, doc = fetch(setup, "mcp.json")
    assert doc == {
        "mcpServers": {
            "nexus": {
                "type": "http",
                "url": "https://nexus.example.com/mcp",
                "headers": {"x-api-key": "${NEXUS_CLIENT_KEY}"},
            }
        }
    }
    (tmp_path / "claude-settings.json").write_text('{"env": {"ANTHROPIC_BASE_URL": "https://own"}}')
    assert fetch(setup, "claude-settings.json")[1] == {"env": {"ANTHROPIC_BASE_URL": "https://own"}}  # the folder wins


def test_safe_names() -> None:
    for good in ("a", "claude-settings.json", "x_1.sh", "README", "v1.2.txt"):
        assert is_safe_name(good), good
    for bad in ("", ".a", "..", "a..b", "a/b", "a\\b", "a%2fb", "a\n", "a\x00", "-a", "a b", "ä", "a" * 129):
        assert not is_safe_name(bad), repr(bad)
