"""`GET /client-setup/{filename}`: files that point a client machine at this gateway.

Files come from `CLIENT_SETUP_DIR` (as the reference system served its `client-setup/` folder), plus
two generated when the folder has no file of that name:

- `claude-settings.json`: Claude Code settings (`~/.claude/settings.json`, or a project's
  `.claude/settings.json`) whose `env.ANTHROPIC_BASE_URL` is this gateway; with `ENABLE_CLIENT_AUTH`
  also an `apiKeyHelper` that reads the user's client key from `$NEXUS_CLIENT_KEY` (a key is never in
  the file: it is served without authentication).
- `mcp.json` (with `MCP_ENABLED`): an MCP configuration naming this gateway's `/mcp` as the server
  `nexus` (`claude --mcp-config mcp.json`, or a project's `.mcp.json`).

The gateway's URL is `CLIENT_SETUP_BASE_URL`, else the scheme and `Host` the request came with (then
the answer is not cached: another client may have reached the gateway by another name).

A name is served only if it is a plain file name: letters, digits, `.`, `_`, `-`, starting with a
letter or digit, no `..`, at most 128 characters. A `/`, a `\\`, a `%` (whatever it encodes), a dot
file or a NUL never match, the file is opened relative to the folder without following a symbolic
link, and only a regular file of at most `MAX_BYTES` is sent. Anything else is 404 with the same
message, so a probe learns nothing about what exists.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from typing import Any

import orjson

from nexus.errors import ProxyError
from nexus.settings import Settings

PREFIX = "/client-setup/"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_BYTES = 1024 * 1024
SETTINGS_FILE = "claude-settings.json"
MCP_FILE = "mcp.json"
#: `host[:port]` as a client may write it (names, IPv4, bracketed IPv6).
_AUTHORITY = re.compile(r"^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")
CONTENT_TYPES = {
    ".json": "application/json; charset=utf-8",
    ".js": "application/javascript; charset=utf-8",
    ".sh": "text/x-shellscript; charset=utf-8",
}


class ClientSetup:
    def __init__(self, settings: Settings) -> None:
        self.directory = settings.client_setup_dir
        self.base_url = settings.client_setup_base_url
        self.client_auth = settings.enable_client_auth
        self.mcp = settings.mcp_enabled
        self.port = settings.port
        generated: dict[str, Callable[[str], dict[str, Any]]] = {SETTINGS_FILE: self.claude_settings}
        if self.mcp:
            generated[MCP_FILE] = self.mcp_config
        self.generated = generated

    def handle(self, scope: Any, proto: Any, request_id: str) -> None:
        name = scope.path[len(PREFIX) :]
        if not is_safe_name(name):
            raise not_found()
        headers = [("x-request-id", request_id), ("x-content-type-options", "nosniff")]
        data = self._read(name)
        cache = "public, max-age=3600"
        if data is None:
            make = self.generated.get(name)
            if make is None:
                raise not_found()
            base = self.base_url
            if base is None:
                base, cache = self._request_base(scope), "no-store"
            data = orjson.dumps(make(base), option=orjson.OPT_INDENT_2) + b"\n"
        suffix = os.path.splitext(name)[1].lower()
        content_type = CONTENT_TYPES.get(suffix, "text/plain; charset=utf-8")
        proto.response_bytes(200, [("content-type", content_type), ("cache-control", cache), *headers], data)

    def claude_settings(self, base: str) -> dict[str, Any]:
        out: dict[str, Any] = {"env": {"ANTHROPIC_BASE_URL": base}}
        if self.client_auth:
            out["apiKeyHelper"] = "printenv NEXUS_CLIENT_KEY"
        return out

    def mcp_config(self, base: str) -> dict[str, Any]:
        server: dict[str, Any] = {"type": "http", "url": f"{base}/mcp"}
        if self.client_auth:
            server["headers"] = {"x-api-key": "${NEXUS_CLIENT_KEY}"}
        return {"mcpServers": {"nexus": server}}

    def _read(self, name: str) -> bytes | None:
        """The file's bytes, or None when there is no regular file of that name directly in the folder."""
        try:
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return None
        try:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
            except OSError:
                return None
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_BYTES:
                    return None
                with os.fdopen(fd, "rb", closefd=False) as f:
                    data = f.read(MAX_BYTES + 1)
            finally:
                os.close(fd)
        finally:
            os.close(dir_fd)
        return data if len(data) <= MAX_BYTES else None

    def _request_base(self, scope: Any) -> str:
        authority = scope.headers.get("host") or ""
        if not _AUTHORITY.fullmatch(authority):
            authority = f"localhost:{self.port}"
        scheme = "https" if getattr(scope, "scheme", "http") == "https" else "http"
        return f"{scheme}://{authority}"


def is_safe_name(name: str) -> bool:
    return bool(SAFE_NAME.fullmatch(name)) and ".." not in name


def not_found() -> ProxyError:
    return ProxyError(404, "No such client setup file.", "not_found_error")
