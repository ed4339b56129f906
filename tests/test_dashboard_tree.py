"""The conversation page's tree, branch transcript and time line, on recorded Claude Code traffic stored
through the real proxy and writer (tests/fixtures/claude_code), read from a real dashboard process."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any
from urllib.parse import quote

import orjson
import psycopg
import pytest

from nexus.conversations.replay import load_recording
from tests.conftest import with_database
from tests.harness.control import FakeControl
from tests.harness.servers import run_dashboard, run_proxy
from tests.helpers import FAST, wait_for
from tests.test_dashboard import call
from tests.test_linking_fixtures import FIXTURES, send
from tests.usage_rows import insert_row

#: A fork (two branches), a sub-agent, two sub-agents at once and a compaction, each a recorded session.
SCENARIOS = ("fork_twice", "subagent_foreground", "subagents_background", "compact")
HOSTILE = '</script><script>alert("x")</script><svg onload=alert(1)>]]><!-- & {{7*7}} \u2028'
HOSTILE_MODEL = "claude-sonnet-4-6</text><script>alert(2)</script>"


@pytest.fixture(scope="module")
def stored(upstream_url: str, database_admin_url: str, migrated_template: str, tmp_path_factory: Any) -> Iterator[Any]:
    """The three scenarios (each its own project) and a hostile exchange, stored through one proxy;
    then a dashboard on that database."""
    name = f"nexus_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"')
    db = with_database(database_admin_url, name)
    fake = FakeControl(upstream_url)
    fake.reset()
    env = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "DATABASE_URL": db,
        "NEXUS_HOME": str(tmp_path_factory.mktemp("home")),
        "UPSTREAM_MAX_ATTEMPTS": "1",
        **FAST,
    }
    try:
        sent = 0
        with run_proxy(env) as url:
            for scenario in SCENARIOS:
                for rec in load_recording(FIXTURES / scenario):
                    if rec.path.split("?")[0] == "/v1/messages":
                        fake.replies({"status": rec.status, "body": rec.response})
                    status, _ = send(url, rec.method, rec.path, {**rec.headers, "train-id": scenario}, rec.body)
                    assert status == rec.status
                    sent += 1
            reply = {
                "id": "msg_hostile",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-6",
                "content": [
                    {"type": "thinking", "thinking": "thinking " + HOSTILE, "signature": "sig"},
                    {"type": "text", "text": "answer " + HOSTILE},
                    {"type": "tool_use", "id": "toolu_1", "name": "Bash" + HOSTILE, "input": {"command": HOSTILE}},
                ],
                "stop_reason": "tool_use",
                "usage": {"input_tokens": 12, "output_tokens": 34},
            }
            fake.replies({"status": 200, "body": reply})
            body = {"model": HOSTILE_MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": HOSTILE}]}
            headers = {"content-type": "application/json", "x-api-key": "sk-ant-api03-x", "train-id": "hostile"}
            status, _ = send(url, "POST", "/v1/messages", headers, orjson.dumps(body))
            assert status == 200
            sent += 1

            def all_stored() -> bool:
                with psycopg.connect(db) as conn:
                    row = conn.execute("SELECT count(*) FROM api_requests").fetchone()
                return row is not None and row[0] == sent

            wait_for(all_stored, 20, "every request stored")
        fake.reset()
        with run_dashboard({"DATABASE_URL": db}) as dashboard:
            yield dashboard, db
    finally:
        with psycopg.connect(database_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def conversation_of(db: str, project: str) -> tuple[str, list[dict[str, Any]]]:
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT request_id::text, conversation_id::text, branch_id, parent_request_id::text, first_byte_ms "
            "FROM api_requests WHERE project_id = %s AND conversation_id IS NOT NULL ORDER BY timestamp",
            (project,),
        ).fetchall()
    conversations = {r[1] for r in rows}
    assert len(conversations) == 1, (project, conversations)
    keys = ("request_id", "conversation_id", "branch_id", "parent_request_id", "first_byte_ms")
    return rows[0][1], [dict(zip(keys, r, strict=True)) for r in rows]


def svg_of(page: str) -> str:
    found = re.search(r'<svg class="tree".*?</svg>', page, re.S)
    assert found is not None
    return found.group(0)


@pytest.mark.parametrize(
    ("scenario", "kinds"),
    [
        ("fork_twice", {"continuation": 2, "branch": 2}),
        ("subagent_foreground", {"continuation": 3, "subagent": 1}),
        ("subagents_background", {"continuation": 4, "subagent": 2}),
        ("compact", {"continuation": 4, "compaction": 1}),
    ],
)
def test_tree_has_one_node_per_request_and_edges_by_kind(
    stored: tuple[str, str], scenario: str, kinds: dict[str, int]
) -> None:
    dashboard, db = stored
    conversation, rows = conversation_of(db, scenario)
    page = call(dashboard, f"/conversations/{conversation}")
    assert page.status == 200
    svg = svg_of(page.text)
    nodes = re.findall(r'<a class="node" href="/requests/([0-9a-f-]+)"', svg)
    assert sorted(nodes) == sorted(r["request_id"] for r in rows)  # one node per request, each a link
    assert f'data-nodes="{len(rows)}"' in svg
    edges = re.findall(r'data-kind="(\w+)" data-from="([0-9a-f-]+)" data-to="([0-9a-f-]+)"', svg)
    found: dict[str, int] = {}
    for kind, _, _ in edges:
        found[kind] = found.get(kind, 0) + 1
    assert found == kinds
    parents = {r["request_id"]: r["parent_request_id"] for r in rows}
    assert all(parents[to] == frm for _, frm, to in edges)  # each edge is a stored parent link
    assert sum(p is not None for p in parents.values()) == len(edges)
    assert 'class="node ok"' in svg  # coloured by status


def test_fork_branch_transcript_and_time_line(stored: tuple[str, str]) -> None:
    dashboard, db = stored
    conversation, rows = conversation_of(db, "fork_twice")
    branches = [b for b in dict.fromkeys(r["branch_id"] for r in rows) if b != "main"]
    assert len(branches) == 2
    fork = branches[0]
    mine = [r for r in rows if r["branch_id"] == fork]
    page = call(dashboard, f"/conversations/{conversation}?branch={quote(fork)}").text
    assert f"<h2>Branch {fork} " in page
    transcript = page[page.index('id="transcript"') :]
    last = mine[-1]["request_id"]
    assert f'<a href="/requests/{last}">' in transcript  # the branch's last request, read as a chat
    recording = {rec.file: rec for rec in load_recording(FIXTURES / "fork_twice")}
    reply = recording["0005-messages.json"].response["content"]
    said = next(b["text"] for b in reply if b.get("type") == "text")
    assert said.split("\n")[0] in unescape(transcript)  # the fork's own reply ends it
    assert '<div class="msg user">' in transcript and '<div class="msg assistant answer">' in transcript
    timeline = page[page.index('<svg class="timeline"') : page.index('id="transcript"')]
    bars = re.findall(r'data-request-id="([0-9a-f-]+)" data-duration-ms="(\d*)" data-first-byte-ms="(\d*)"', timeline)
    assert [b[0] for b in bars] == [r["request_id"] for r in mine]
    stored_ttfb = {r["request_id"]: r["first_byte_ms"] for r in mine}
    assert all(b[2] == ("" if stored_ttfb[b[0]] is None else str(stored_ttfb[b[0]])) for b in bars)
    assert any(b[2] for b in bars)  # the proxy stores a first byte for answered requests
    default = call(dashboard, f"/conversations/{conversation}").text
    assert "<h2>Branch main " in default
    assert call(dashboard, f"/conversations/{conversation}?branch=no-such&tree_from=-3").status == 200


def test_hostile_text_is_escaped_in_tree_and_transcript(stored: tuple[str, str]) -> None:
    dashboard, db = stored
    conversation, _ = conversation_of(db, "hostile")
    page = call(dashboard, f"/conversations/{conversation}").text
    assert "<script>alert" not in page and "<svg onload" not in page and "</text><script>" not in page
    assert "&lt;/script&gt;&lt;script&gt;alert(" in page
    svg = svg_of(page)
    assert "&lt;/text&gt;&lt;script&gt;alert(2)" in svg  # the model name, as text in the node label
    transcript = page[page.index('id="transcript"') :]
    assert transcript.count("&lt;svg onload=alert(1)&gt;") >= 4  # prompt, thinking, reply, tool input
    assert '<details class="thinking"><summary>thinking</summary>' in transcript  # thinking collapsed
    assert "tool use: Bash&lt;/script&gt;" in transcript


def test_tree_pages_through_a_large_conversation(migrated_db: str) -> None:
    """A conversation of 1,000 requests: the tree draws a page of them, with links to the rest."""
    conversation = str(uuid.uuid4())
    start = datetime.now(UTC) - timedelta(hours=2)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        ids = [insert_row(conn, start + timedelta(seconds=i), project="big", conversation=conversation)
               for i in range(1000)]  # fmt: skip
        conn.execute(
            "INSERT INTO conversations (conversation_id, project_id, first_at, last_at, request_count) "
            "VALUES (%s, 'big', %s, %s, 1000)",
            (conversation, start, start + timedelta(seconds=999)),
        )
    with run_dashboard({"DATABASE_URL": migrated_db}) as url:
        first = call(url, f"/conversations/{conversation}")
        assert first.status == 200 and 'data-nodes="400"' in first.text
        assert "requests 1\u2013400 of 1,000" in first.text and "tree_from=400" in first.text
        last = call(url, f"/conversations/{conversation}?tree_from=800").text
        assert 'data-nodes="200"' in last and ids[-1] in svg_of(last) and ids[0] not in svg_of(last)
