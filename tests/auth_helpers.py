"""Helpers for the auth tests: credential files, raw HTTP requests with any Host, proxy environments."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from nexus.auth.files import write_atomically
from tests.conftest import FAST_RETRIES
from tests.helpers import wait_for

__all__ = ["wait_for"]

MODEL = "claude-sonnet-4-6"
BODY = orjson.dumps({"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
BASE_HEADERS = {"content-type": "application/json", "anthropic-version": "2023-06-01"}


def proxy_env(upstream_url: str, creds: Path, **extra: str) -> dict[str, str]:
    return {
        "CLAUDE_API_BASE_URL": upstream_url,
        "CLAUDE_OAUTH_TOKEN_URL": upstream_url + "/v1/oauth/token",
        "CLAUDE_OAUTH_AUTHORIZE_URL": upstream_url + "/oauth/authorize",
        "CREDENTIALS_DIR": str(creds),
        "STORAGE_ENABLED": "false",
        **FAST_RETRIES,
        **extra,
    }


def cred_path(creds: Path, name: str, *, account: bool = False) -> Path:
    return (creds / "accounts" if account else creds) / f"{name}.credentials.json"


def write_api_key(creds: Path, name: str, key: str, *, account: bool = False, **extra: Any) -> Path:
    path = cred_path(creds, name, account=account)
    write_atomically(path, {"type": "api_key", "accountId": f"acc_{name}", "api_key": key, **extra})
    return path


def write_oauth(
    creds: Path,
    name: str,
    access: str,
    refresh: str | None,
    expires_at_ms: int,
    *,
    account: bool = False,
    **extra: Any,
) -> Path:
    path = cred_path(creds, name, account=account)
    oauth = {"accessToken": access, "refreshToken": refresh, "expiresAt": expires_at_ms, "scopes": [], "isMax": True}
    write_atomically(path, {"type": "oauth", "accountId": f"acc_{name}", "oauth": oauth, **extra})
    return path


def now_ms(offset_s: float = 0) -> int:
    return int((time.time() + offset_s) * 1000)


def post(
    url: str, headers: dict[str, str] | None = None, body: bytes = BODY, path: str = "/v1/messages"
) -> tuple[int, dict[str, str], Any]:
    """POST with exactly these headers (a `Host` given here replaces the real one); parsed JSON (or SSE text)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={**BASE_HEADERS, **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    headers_out = {k.lower(): v for k, v in resp.getheaders()}
    if headers_out.get("content-type", "").startswith("text/event-stream"):
        return resp.status, headers_out, data.decode()
    return resp.status, headers_out, orjson.loads(data) if data else None


def assert_anthropic_error(status: int, body: Any, expected_status: int, error_type: str) -> str:
    """The proxy's error is in Anthropic's shape with the right status and type; returns its message."""
    assert status == expected_status, body
    assert body["type"] == "error" and body["error"]["type"] == error_type, body
    assert body["request_id"]
    return str(body["error"]["message"])


def run_login(env: dict[str, str], args: list[str], paste: Any = None) -> tuple[int, str, str, str]:
    """Run `nexus oauth login`; play the browser on the printed URL; paste `paste(code_and_state)`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexus.cli", "oauth", "login", *args],
        env={**os.environ, **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    url = ""
    while not url.startswith("http"):
        line = proc.stdout.readline()
        assert line, "login exited before printing the URL"
        url = line.strip()
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (loopback fake)
        shown = resp.read().decode()
    out, err = proc.communicate((paste(shown) if paste else shown) + "\n", timeout=30)
    return proc.returncode, url, out, err
