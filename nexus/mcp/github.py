"""Prompt files synced from a GitHub repository (`MCP_GITHUB_OWNER`, `MCP_GITHUB_REPO`, ...).

As in the reference system: at start and every `MCP_SYNC_INTERVAL` seconds, read the branch's head
commit; if it moved, list `MCP_GITHUB_PATH` at that commit and download its YAML files into
`MCP_PROMPTS_DIR`, replacing only the files it brings (local-only files stay), then reload.

What the repository sends is hostile like any input: only entries of type `file` whose own name is
a valid prompt file name (no `/`, no `..`, no dot files) are taken, each at most the registry's file
limit, and a file that does not parse as a prompt is not written (a broken commit never replaces a
working prompt). Files are written to a temporary name and renamed, so a reader sees the old file
or the new one. Every request goes to `MCP_GITHUB_API_URL` and nowhere else: redirects are not
followed (they could carry the token to another host) and the `download_url` GitHub offers is not
used. The token goes only into the `Authorization` header; errors and logs carry statuses, never it.

The client is blocking `urllib` run in a worker thread: a sync is a few small requests every few
minutes, not worth a second connection pool on the proxy's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from nexus.mcp.prompts import MAX_FILE_BYTES, MAX_FILES, PromptFileError, PromptRegistry, parse_prompt, prompt_name
from nexus.settings import Settings

log = logging.getLogger("nexus.mcp")
TIMEOUT_S = 20.0
MAX_LISTING_BYTES = 4 * 1024 * 1024


class GitHubError(Exception):
    """A sync step that failed; the message names the step and the status, never the token."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None  # the 3xx is raised as an HTTPError: the token never follows a redirect


_OPENER = urllib.request.build_opener(_NoRedirect)


@dataclass(frozen=True, slots=True)
class GitHubClient:
    """The three GitHub REST calls the sync needs, against `api_url` only."""

    api_url: str
    owner: str
    repo: str
    token: str | None = None
    timeout_s: float = TIMEOUT_S

    def head(self, branch: str) -> str:
        """The SHA of the branch's head commit."""
        doc = self._json(f"/branches/{quote(branch, safe='')}", "branch head")
        sha = (
            doc.get("commit", {}).get("sha") if isinstance(doc, dict) and isinstance(doc.get("commit"), dict) else None
        )
        if not isinstance(sha, str) or not sha.isalnum() or len(sha) > 64:
            raise GitHubError("branch head: no commit SHA in the answer")
        return sha

    def listing(self, path: str, ref: str) -> list[dict[str, Any]]:
        """The entries of the folder `path` at `ref`."""
        doc = self._json(f"/contents/{_path(path)}?ref={quote(ref, safe='')}", "folder listing")
        if not isinstance(doc, list):
            raise GitHubError(f"folder listing: {path!r} is not a folder")
        return [e for e in doc if isinstance(e, dict)]

    def raw(self, path: str, ref: str, limit: int) -> bytes:
        """A file's bytes at `ref` (at most `limit`)."""
        return self._get(
            f"/contents/{_path(path)}?ref={quote(ref, safe='')}", "application/vnd.github.raw", limit, "file"
        )

    def _json(self, suffix: str, step: str) -> Any:
        data = self._get(suffix, "application/vnd.github+json", MAX_LISTING_BYTES, step)
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise GitHubError(f"{step}: the answer is not JSON") from None

    def _get(self, suffix: str, accept: str, limit: int, step: str) -> bytes:
        url = f"{self.api_url}/repos/{quote(self.owner, safe='')}/{quote(self.repo, safe='')}{suffix}"
        headers = {"accept": accept, "user-agent": "nexus-mcp-sync", "x-github-api-version": "2022-11-28"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, headers=headers)  # noqa: S310 (a validated http(s) setting)
        try:
            with _OPENER.open(req, timeout=self.timeout_s) as resp:
                data: bytes = resp.read(limit + 1)
        except urllib.error.HTTPError as exc:
            raise GitHubError(f"{step}: GitHub answered {exc.code}") from None
        except (OSError, ValueError) as exc:
            raise GitHubError(f"{step}: GitHub unreachable ({exc.__class__.__name__})") from None
        if len(data) > limit:
            raise GitHubError(f"{step}: the answer is over {limit} bytes")
        return data


def _path(path: str) -> str:
    return quote(path.strip("/"), safe="/")


@dataclass(slots=True)
class SyncStatus:
    state: str = "never_synced"  # syncing | success | error | never_synced (the reference's names)
    last_sync: float | None = None
    last_error: str | None = None
    sha: str | None = None
    files: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class GitHubSync:
    client: GitHubClient
    branch: str
    path: str
    directory: Path
    registry: PromptRegistry | None
    interval_s: float
    status: SyncStatus = field(default_factory=SyncStatus)
    #: One sync at a time per worker (the timer's and a `POST /api/mcp/sync`).
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sync_once(self) -> bool:
        """One sync (blocking). True when files were written."""
        with self._lock:
            return self._locked_sync()

    def _locked_sync(self) -> bool:
        self.status.state = "syncing"
        try:
            written = self._sync()
        except GitHubError as exc:
            self.status.state, self.status.last_error = "error", str(exc)
            log.warning("mcp: prompt sync from GitHub failed: %s", exc)
            raise
        self.status.state, self.status.last_error, self.status.last_sync = "success", None, time.time()
        return written

    def _sync(self) -> bool:
        sha = self.client.head(self.branch)
        if sha == self.status.sha:
            return False
        entries = self.client.listing(self.path, sha)
        written: list[str] = []
        skipped: dict[str, str] = {}
        for entry in entries[:MAX_FILES]:
            name = entry.get("name")
            if entry.get("type") != "file" or not isinstance(name, str) or name.startswith("."):
                continue
            stem = prompt_name(name)
            if stem is None:
                continue
            size = entry.get("size")
            if isinstance(size, int) and size > MAX_FILE_BYTES:
                skipped[name] = f"{size} bytes; the limit is {MAX_FILE_BYTES}"
                continue
            data = self.client.raw(f"{self.path.strip('/')}/{name}", sha, MAX_FILE_BYTES)
            try:
                parse_prompt(stem, data)
            except PromptFileError as exc:
                skipped[name] = str(exc)
                log.warning("mcp: synced prompt file %s not written: %s", name, exc)
                continue
            _write_file(self.directory / name, data)
            written.append(name)
        self.status.sha, self.status.files, self.status.skipped = sha, written, skipped
        log.info("mcp: synced %d prompt file(s) from GitHub at %s", len(written), sha[:12])
        return bool(written)

    async def run_forever(self) -> None:
        """Sync now and every `interval_s`; the registry is reloaded on the loop after files changed."""
        while True:
            try:
                if await asyncio.to_thread(self.sync_once) and self.registry is not None:
                    self.registry.refresh()
            except GitHubError:
                pass  # logged and kept in the status; the next round tries again
            except Exception:
                log.exception("mcp: prompt sync failed")
            await asyncio.sleep(self.interval_s)


def _write_file(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def build_sync(settings: Settings, registry: PromptRegistry | None) -> GitHubSync | None:
    """The sync when `MCP_GITHUB_OWNER` and `MCP_GITHUB_REPO` are set (a token is needed for private ones)."""
    if not (settings.mcp_github_owner and settings.mcp_github_repo):
        return None
    client = GitHubClient(
        settings.mcp_github_api_url, settings.mcp_github_owner, settings.mcp_github_repo, settings.mcp_github_token
    )
    return GitHubSync(
        client,
        settings.mcp_github_branch,
        settings.mcp_github_path,
        settings.mcp_prompts_dir,
        registry,
        float(settings.mcp_sync_interval),
    )
