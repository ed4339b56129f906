"""Prompt sync from GitHub, against a local fake of GitHub's REST API (and the proxy using it)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from mcp import Client

from nexus.mcp.github import GitHubClient, GitHubError, GitHubSync
from nexus.mcp.prompts import MAX_FILE_BYTES, PromptRegistry
from tests.harness.servers import run_proxy

TOKEN = "ghp_testtoken_0123456789abcdefghij"
GOOD = b"description: From GitHub\ntemplate: 'Synced {{thing}}'\n"


@dataclass
class FakeGitHub:
    sha: str = "a" * 40
    files: dict[str, bytes] = field(default_factory=dict)
    extra_entries: list[dict[str, Any]] = field(default_factory=list)
    redirect_to: str | None = None
    branch_status: int = 200
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def entries(self) -> list[dict[str, Any]]:
        out = [{"name": n, "path": f"prompts/{n}", "type": "file", "size": len(b)} for n, b in self.files.items()]
        return out + self.extra_entries


def serve(fake: FakeGitHub) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            fake.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            parts = urlsplit(self.path)
            ref = parse_qs(parts.query).get("ref", [None])[0]
            prefix = "/repos/acme/team-prompts"
            if parts.path == f"{prefix}/branches/main":
                if fake.branch_status != 200:
                    return self.reply(fake.branch_status, b'{"message":"Not Found"}')
                return self.reply(200, orjson.dumps({"name": "main", "commit": {"sha": fake.sha}}))
            if ref != fake.sha:
                return self.reply(404, b'{"message":"No commit found for the ref"}')
            if parts.path == f"{prefix}/contents/prompts":
                return self.reply(200, orjson.dumps(fake.entries()))
            name = parts.path.removeprefix(f"{prefix}/contents/prompts/")
            if name == "moved.yaml" and fake.redirect_to:
                self.send_response(302)
                self.send_header("location", fake.redirect_to + "/stolen")
                self.end_headers()
                return None
            if name in fake.files and self.headers.get("accept") == "application/vnd.github.raw":
                return self.reply(200, fake.files[name], "application/vnd.github.raw")
            return self.reply(404, b'{"message":"Not Found"}')

        def reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def github() -> Iterator[tuple[FakeGitHub, str]]:
    fake = FakeGitHub()
    server, url = serve(fake)
    yield fake, url
    server.shutdown()
    server.server_close()


def make_sync(url: str, folder: Path, registry: PromptRegistry | None = None) -> GitHubSync:
    return GitHubSync(GitHubClient(url, "acme", "team-prompts", TOKEN), "main", "prompts/", folder, registry, 300)


def test_sync_writes_valid_prompt_files_only_and_keeps_local_ones(
    github: tuple[FakeGitHub, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = github
    fake.files = {
        "synced.yaml": GOOD,
        "local.yaml": b"template: 'from the repo'\n",
        "broken.yaml": b"template: [",
        "notes.md": b"# not a prompt",
        ".hidden.yaml": GOOD,
        "bad name.yaml": GOOD,
    }
    fake.extra_entries = [
        {"name": "../escape.yaml", "type": "file", "size": 10},
        {"name": "sub", "type": "dir", "size": 0},
        {"name": "big.yaml", "type": "file", "size": MAX_FILE_BYTES + 1},
    ]
    (tmp_path / "local.yaml").write_text("template: 'edited here'\n")
    (tmp_path / "mine.yaml").write_text("template: 'only here'\n")
    registry = PromptRegistry(tmp_path, watch=False)
    sync = make_sync(url, tmp_path, registry)
    with caplog.at_level(logging.DEBUG, logger="nexus"):
        assert sync.sync_once() is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local.yaml", "mine.yaml", "synced.yaml"]
    assert (tmp_path / "local.yaml").read_text() == "template: 'from the repo'\n"  # replaced by the repo's
    assert (tmp_path / "mine.yaml").read_text() == "template: 'only here'\n"  # local-only: kept
    assert not (tmp_path.parent / "escape.yaml").exists()
    assert sync.status.state == "success" and sync.status.sha == fake.sha
    assert sorted(sync.status.files) == ["local.yaml", "synced.yaml"]
    assert set(sync.status.skipped) == {"broken.yaml", "big.yaml"}
    # the token went in the Authorization header of every request, to the configured host only
    assert fake.seen and all(h.get("authorization") == f"Bearer {TOKEN}" for _, h in fake.seen)
    assert not any("../" in path or "big.yaml" in path for path, _ in fake.seen)
    assert TOKEN not in caplog.text
    registry.refresh()
    assert sorted(registry.prompts()) == ["local", "mine", "synced"]

    requests = len(fake.seen)
    assert sync.sync_once() is False  # the head did not move: only the branch is read
    assert len(fake.seen) == requests + 1


def test_a_redirect_is_not_followed_and_errors_name_no_token(
    github: tuple[FakeGitHub, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = github
    thief = FakeGitHub()
    thief_server, thief_url = serve(thief)
    try:
        fake.files = {"moved.yaml": GOOD}
        fake.redirect_to = thief_url
        sync = make_sync(url, tmp_path)
        with caplog.at_level(logging.DEBUG, logger="nexus"), pytest.raises(GitHubError, match="answered 302"):
            sync.sync_once()
        assert thief.seen == []  # the token never left for the other host
        assert sync.status.state == "error" and TOKEN not in str(sync.status.last_error)
        assert TOKEN not in caplog.text
    finally:
        thief_server.shutdown()
        thief_server.server_close()


def test_a_missing_branch_is_an_error_status(github: tuple[FakeGitHub, str], tmp_path: Path) -> None:
    fake, url = github
    fake.branch_status = 404
    sync = make_sync(url, tmp_path)
    with pytest.raises(GitHubError, match="branch head: GitHub answered 404"):
        sync.sync_once()
    assert sync.status.state == "error" and list(tmp_path.iterdir()) == []


def test_an_unreachable_github_is_an_error_not_a_crash(tmp_path: Path) -> None:
    sync = make_sync("http://127.0.0.1:9", tmp_path)
    with pytest.raises(GitHubError, match="unreachable"):
        sync.sync_once()


async def test_the_proxy_serves_prompts_synced_at_start(github: tuple[FakeGitHub, str], tmp_path: Path) -> None:
    fake, url = github
    fake.files = {"from-repo.yaml": GOOD}
    env = {
        "CLAUDE_API_BASE_URL": "http://127.0.0.1:9",
        "STORAGE_ENABLED": "false",
        "MCP_ENABLED": "true",
        "MCP_PROMPTS_DIR": str(tmp_path / "prompts"),
        "MCP_GITHUB_OWNER": "acme",
        "MCP_GITHUB_REPO": "team-prompts",
        "MCP_GITHUB_TOKEN": TOKEN,
        "MCP_GITHUB_API_URL": url,
    }
    with run_proxy(env) as proxy:
        names: list[str] = []
        async with Client(proxy + "/mcp") as client:
            for _ in range(50):
                names = [p.name for p in (await client.list_prompts()).prompts]
                if names:
                    break
                await asyncio.sleep(0.1)
            assert names == ["from-repo"]
            got = await client.get_prompt("from-repo", {"thing": "prompts"})
            assert got.messages[0].content.text == "Synced prompts"  # type: ignore[union-attr]


def test_sync_now_through_the_api(github: tuple[FakeGitHub, str], tmp_path: Path) -> None:
    import http.client

    fake, url = github
    fake.files = {"first.yaml": GOOD}
    env = {
        "CLAUDE_API_BASE_URL": "http://127.0.0.1:9",
        "STORAGE_ENABLED": "false",
        "MCP_ENABLED": "true",
        "MCP_WATCH_FILES": "false",
        "MCP_PROMPTS_DIR": str(tmp_path),
        "MCP_GITHUB_OWNER": "acme",
        "MCP_GITHUB_REPO": "team-prompts",
        "MCP_GITHUB_API_URL": url,
    }

    def call(method: str, path: str) -> tuple[int, Any]:
        parts = urlsplit(proxy)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, orjson.loads(resp.read())
        finally:
            conn.close()

    with run_proxy(env) as proxy:
        for _ in range(50):
            if call("GET", "/api/mcp/sync/status")[1]["sync_status"] == "success":
                break
            time.sleep(0.1)
        fake.sha, fake.files = "b" * 40, {"first.yaml": GOOD, "second.yaml": b"template: 'two'\n"}
        status, doc = call("POST", "/api/mcp/sync")
        assert status == 200 and doc["changed"] is True
        assert doc["status"]["last_commit_sha"] == "b" * 40 and doc["status"]["repository"] == "acme/team-prompts"
        _, listed = call("GET", "/api/mcp/prompts")
        assert [p["name"] for p in listed["prompts"]] == ["first", "second"]  # reloaded without watching
        fake.branch_status = 500
        status, doc = call("POST", "/api/mcp/sync")
        assert status == 502 and "branch head: GitHub answered 500" in doc["error"]["message"]
        assert call("GET", "/api/mcp/sync/status")[1]["sync_status"] == "error"
