"""The MCP prompt server end to end: a real proxy process, the official MCP SDK's client, raw HTTP edges."""

from __future__ import annotations

import asyncio
import http.client
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from nexus.auth.client_keys import ClientKeyStore
from tests.harness.servers import run_proxy

pytestmark = pytest.mark.timeout(60)

SALT = "mcp-test-salt-6b1f0c9e4d2a7358"
REVIEW = """\
name: Code review
description: Review a file
template: |
  Review {{file}}{{#if focus}} for {{focus}}{{/if}}.
arguments:
  - name: file
    description: The file to review
    required: true
  - name: focus
    description: What to look at
"""


def base_env(prompts: Path, **extra: str) -> dict[str, str]:
    return {
        "CLAUDE_API_BASE_URL": "http://127.0.0.1:9",
        "STORAGE_ENABLED": "false",
        "MCP_ENABLED": "true",
        "MCP_PROMPTS_DIR": str(prompts),
        "MCP_MAX_REQUEST_SIZE": "4096",
        **extra,
    }


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mcp-prompts")
    (folder / "review.yaml").write_text(REVIEW)
    (folder / "hello.yml").write_text("description: Greet\ntemplate: 'Hello {{who}}!'\n")
    (folder / "broken.yaml").write_text("template: [")
    return folder


@pytest.fixture(scope="module")
def mcp_url(prompts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    creds = tmp_path_factory.mktemp("mcp-creds")
    with run_proxy(base_env(prompts, CREDENTIALS_DIR=str(creds))) as url:
        yield url


def request(
    url: str, method: str, path: str = "/mcp", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


JSON = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def post(url: str, message: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    body = message if isinstance(message, bytes) else orjson.dumps(message)
    status, got, data = request(url, "POST", body=body, headers={**JSON, **(headers or {})})
    return status, got, orjson.loads(data) if data and got.get("content-type") == "application/json" else data


# --- the official client -------------------------------------------------------------------------


async def test_the_sdk_client_lists_and_renders_prompts_and_sees_a_new_file(mcp_url: str, prompts: Path) -> None:
    async with Client(mcp_url + "/mcp") as client:  # mode "auto": its `server/discover` probe falls back
        listed = await client.list_prompts()
        assert [p.name for p in listed.prompts] == ["hello", "review"]  # broken.yaml is skipped
        review = next(p for p in listed.prompts if p.name == "review")
        assert review.title == "Code review" and review.description == "Review a file"
        assert review.arguments is not None
        assert [(a.name, a.required) for a in review.arguments] == [("file", True), ("focus", False)]

        got = await client.get_prompt("review", {"file": "app.py", "focus": "{{file}} <b>"})
        assert got.description == "Review a file"
        assert [m.role for m in got.messages] == ["user"]
        text = got.messages[0].content
        assert text.type == "text" and text.text == "Review app.py for {{file}} <b>.\n"

        with pytest.raises(MCPError) as info:
            await client.get_prompt("review", {})
        assert info.value.code == -32602 and "file" in str(info.value)
        with pytest.raises(MCPError) as info:
            await client.get_prompt("nope", {})
        assert info.value.code == -32602

        (prompts / "fresh.yaml").write_text("template: 'Brand new: {{topic}}'\n")
        try:
            names: list[str] = []
            for _ in range(50):
                names = [p.name for p in (await client.list_prompts()).prompts]
                if "fresh" in names:
                    break
                await asyncio.sleep(0.1)
            assert {"fresh", "hello", "review"} <= set(names)
            fresh = await client.get_prompt("fresh", {"topic": "MCP"})
            assert fresh.messages[0].content.text == "Brand new: MCP"  # type: ignore[union-attr]
        finally:
            (prompts / "fresh.yaml").unlink()


async def test_the_sdk_session_negotiates_a_handshake_version(mcp_url: str) -> None:
    async with streamable_http_client(mcp_url + "/mcp") as (read, write), ClientSession(read, write) as session:
        init = await session.initialize()
        assert init.protocol_version == "2025-11-25"
        assert init.server_info.name == "claude-nexus-mcp-server"
        assert init.capabilities.prompts is not None
        await session.send_ping()
        listed = await session.list_prompts()
        assert {"hello", "review"} <= {p.name for p in listed.prompts}


# --- HTTP edges ------------------------------------------------------------------------------------


def test_get_is_discovery_and_there_is_no_sse_stream_or_session_to_end(mcp_url: str) -> None:
    status, _, body = request(mcp_url, "GET")
    doc = orjson.loads(body)
    assert status == 200 and doc["name"] == "claude-nexus-mcp-server"
    assert doc["capabilities"] == {"prompts": {"listPrompts": True, "getPrompt": True}}
    for method, headers in (("GET", {"accept": "text/event-stream"}), ("DELETE", {"mcp-session-id": "x"})):
        status, got, body = request(mcp_url, method, headers=headers)
        assert status == 405 and got["allow"] == "GET, POST"
        assert orjson.loads(body)["error"]["code"] == -32600


def test_an_initialize_issues_no_session_and_answers_json_or_sse(mcp_url: str) -> None:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}
    status, headers, msg = post(mcp_url, init)
    assert status == 200 and msg["result"]["protocolVersion"] == "2025-06-18"
    assert "mcp-session-id" not in headers  # stateless: any worker answers any request
    status, headers, raw = post(mcp_url, init, {"accept": "text/event-stream"})
    assert status == 200 and headers["content-type"] == "text/event-stream"
    assert raw.startswith(b"event: message\ndata: ") and raw.endswith(b"\n\n")
    assert orjson.loads(raw.split(b"data: ", 1)[1])["result"]["protocolVersion"] == "2025-06-18"
    status, headers, raw = post(mcp_url, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert (status, raw) == (202, b"")


@pytest.mark.parametrize(
    ("body", "headers", "status", "needle"),
    [
        (b"{", {}, 400, "Parse error"),
        (b"[]", {}, 400, "batches"),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping"}', {"content-type": "text/plain"}, 415, "Content-Type"),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping"}', {"accept": "text/html"}, 406, "Accept"),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping"}', {"mcp-protocol-version": "1.0"}, 400, "MCP-Protocol-Version"),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":"' + b"x" * 5000 + b'"}', {}, 413, "limit"),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping"}', {"origin": "https://evil.example"}, 403, "origin"),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping"}', {"sec-fetch-site": "cross-site"}, 403, "browser"),
    ],
)
def test_hostile_requests_get_clear_json_rpc_errors(
    mcp_url: str, body: bytes, headers: dict[str, str], status: int, needle: str
) -> None:
    got_status, _, msg = post(mcp_url, body, headers)
    assert got_status == status, msg
    assert msg["jsonrpc"] == "2.0" and msg["error"]["code"] in (-32700, -32600)
    assert needle in msg["error"]["message"]
    assert request(mcp_url, "GET", "/health")[0] == 200  # and the worker is still there


def test_unknown_methods_are_method_not_found(mcp_url: str) -> None:
    status, _, msg = post(mcp_url, {"jsonrpc": "2.0", "id": "t", "method": "tools/call", "params": {"name": "x"}})
    assert status == 200 and msg == {
        "jsonrpc": "2.0",
        "id": "t",
        "error": {"code": -32601, "message": "Method not found: tools/call"},
    }


def test_the_descriptor_and_the_generated_mcp_config_name_the_endpoint(mcp_url: str) -> None:
    status, _, body = request(mcp_url, "GET", "/")
    assert status == 200 and "mcp" in orjson.loads(body)["endpoints"]
    status, headers, body = request(mcp_url, "GET", "/client-setup/mcp.json")
    assert status == 200 and headers["cache-control"] == "no-store"
    assert orjson.loads(body) == {"mcpServers": {"nexus": {"type": "http", "url": mcp_url + "/mcp"}}}


# --- client keys -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(prompts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    creds = tmp_path_factory.mktemp("mcp-keyed")
    _, key = ClientKeyStore(creds, SALT).create("team", "alice")
    env = base_env(prompts, CREDENTIALS_DIR=str(creds), ENABLE_CLIENT_AUTH="true", API_KEY_SALT=SALT)
    with run_proxy(env) as url:
        yield url, key


async def test_with_client_auth_a_valid_key_is_required(keyed: tuple[str, str]) -> None:
    url, key = keyed
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    for headers in ({}, {"x-api-key": "cnp_live_" + "A" * 43}, {"authorization": "Bearer not-a-key"}):
        status, got, msg = post(url, ping, headers)
        assert status == 401 and got["www-authenticate"].startswith("Bearer"), msg
        assert msg["error"]["code"] == -32600 and key not in str(msg)
    assert request(url, "GET")[0] == 401  # discovery too
    assert post(url, ping, {"authorization": f"Bearer {key}"})[0] == 200

    async with create_mcp_http_client(headers={"x-api-key": key}) as http:
        async with Client(streamable_http_client(url + "/mcp", http_client=http)) as client:  # type: ignore[arg-type]
            listed = await client.list_prompts()
    assert {"hello", "review"} <= {p.name for p in listed.prompts}


def test_guessing_client_keys_on_mcp_is_throttled_like_on_v1(keyed: tuple[str, str]) -> None:
    url, key = keyed
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    statuses = [post(url, ping, {"x-api-key": f"cnp_live_{i:043d}"})[0] for i in range(12)]
    assert statuses[0] == 401 and statuses[-1] == 429
    status, headers, _ = post(url, ping, {"x-api-key": key})
    assert status == 429 and int(headers["retry-after"]) > 0  # the address is refused, whatever it sends now


def test_without_mcp_enabled_there_is_no_endpoint(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    env.pop("MCP_ENABLED")
    with run_proxy(env) as url:
        assert post(url, {"jsonrpc": "2.0", "id": 1, "method": "ping"})[0] == 404
        assert request(url, "GET", "/client-setup/mcp.json")[0] == 404


def test_copying_a_prompt_folder_in_is_seen(mcp_url: str, prompts: Path, tmp_path: Path) -> None:
    """A file written elsewhere and moved in (what editors and `git checkout` do) is picked up too."""
    staged = tmp_path / "moved.yaml"
    staged.write_text("template: moved {{x}}\n")
    shutil.move(str(staged), prompts / "moved.yaml")
    try:
        listed: list[str] = []
        for _ in range(50):
            _, _, msg = post(mcp_url, {"jsonrpc": "2.0", "id": 1, "method": "prompts/list"})
            listed = [p["name"] for p in msg["result"]["prompts"]]
            if "moved" in listed:
                break
            time.sleep(0.1)
        assert "moved" in listed
    finally:
        (prompts / "moved.yaml").unlink()


# --- /api/mcp/* ----------------------------------------------------------------------------------------


def api(url: str, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    status, _, body = request(url, method, path, headers=headers)
    return status, orjson.loads(body)


def test_the_rest_view_lists_searches_and_shows_prompts(mcp_url: str) -> None:
    status, doc = api(mcp_url, "GET", "/api/mcp/prompts")
    assert status == 200 and doc["page"] == 1 and doc["limit"] == 20
    assert {"hello", "review"} <= {p["promptId"] for p in doc["prompts"]}
    status, doc = api(mcp_url, "GET", "/api/mcp/prompts?search=REVIEW%20a")
    assert [p["name"] for p in doc["prompts"]] == ["review"] and doc["total"] == 1
    status, doc = api(mcp_url, "GET", "/api/mcp/prompts?limit=1&page=2&search=e")
    assert len(doc["prompts"]) == 1 and doc["total"] >= 2
    status, doc = api(mcp_url, "GET", "/api/mcp/prompts/review")
    assert status == 200 and doc["prompt"]["template"].startswith("Review {{file}}")
    assert doc["prompt"]["argumentsDeclared"] is True
    for path, want in [
        ("/api/mcp/prompts/nope", 404),
        ("/api/mcp/prompts?limit=0", 400),
        ("/api/mcp/prompts?page=x", 400),
        ("/api/mcp/nothing", 404),
    ]:
        status, doc = api(mcp_url, "GET", path)
        assert status == want and doc["type"] == "error", (path, doc)


def test_sync_without_a_repository_is_501_and_its_status_says_so(mcp_url: str) -> None:
    status, doc = api(mcp_url, "POST", "/api/mcp/sync")
    assert status == 501 and "not configured" in doc["error"]["message"]
    status, doc = api(mcp_url, "GET", "/api/mcp/sync/status")
    assert status == 200 and doc["sync_status"] == "not_configured" and doc["repository"] is None


def test_a_web_page_of_another_origin_cannot_start_a_sync(mcp_url: str) -> None:
    """`POST /api/mcp/sync` changes state (it spends the GitHub token's rate limit and rewrites prompt
    files), so like every other `/api/*` POST it is refused from a page of another origin; it was not."""
    for headers in ({"origin": "http://evil.example"}, {"sec-fetch-site": "cross-site"}):
        status, doc = api(mcp_url, "POST", "/api/mcp/sync", headers)
        assert status == 403 and doc["error"]["type"] == "permission_error", (headers, doc)
    assert api(mcp_url, "GET", "/api/mcp/prompts", {"sec-fetch-site": "cross-site"})[0] == 200  # reads stay open


def test_the_rest_view_follows_the_data_access_rule(mcp_url: str) -> None:
    status, doc = api(mcp_url, "GET", "/api/mcp/prompts", {"x-forwarded-for": "203.0.113.9"})
    assert status in (401, 403) and doc["type"] == "error"
