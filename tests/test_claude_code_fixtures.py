"""The recorded Claude Code / SDK fixtures: well-formed, redacted, and their expected links consistent.

These fixtures are the linker's ground truth, so they are checked against what they claim without any
linker: every request file has the replay format, no credential survives, `expected.jsonl` covers
every file and points only at earlier files, and each expected edge is visible in the recorded bodies
(a child re-sends its parent's reply; a sub-agent's first prompt is its spawning Agent call's
`input.prompt`; a retry re-sends the failed body; a post-compaction request carries the summary).
"""

from __future__ import annotations

import http.client
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from nexus._core import SseObserver
from nexus.fake_upstream.scripted import REDACTED_API_KEY, REDACTED_BEARER
from tests.harness.control import FakeControl

ROOT = Path(__file__).resolve().parent / "fixtures" / "claude_code"
SCENARIOS = sorted(p.name for p in ROOT.iterdir() if (p / "expected.jsonl").exists())
REQUIRED = {
    "multi_turn_continue_resume",
    "tool_loop",
    "subagent_foreground",
    "subagents_background",
    "retry_529",
    "fork_twice",
    "compact",
    "compact_merged",
    "python_sdk",
    "interactive_title",
}
RECORD_KEYS = {"timestamp", "method", "path", "headers", "body", "response"}
EXPECTED_KEYS = {"file", "conversation", "branch", "parent_file", "is_subtask", "parent_task_file", "request_type"}
REQUEST_TYPES = {"main", "subagent", "compaction", "auxiliary", "count_tokens"}
CLAUDE_CODE_VERSION = "2.1.332"
SECRET = re.compile(r"sk-ant-[A-Za-z0-9_-]+")
COMPACTION_PROMPT = "Your task is to create a detailed summary of the conversation so far"
CONTINUED = "This session is being continued from a previous conversation"


def request_files(scenario: str) -> list[Path]:
    return sorted(ROOT.joinpath(scenario).glob("[0-9][0-9][0-9][0-9]-*.json"))


def load(scenario: str) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    records = {p.name: json.loads(p.read_text()) for p in request_files(scenario)}
    lines = ROOT.joinpath(scenario, "expected.jsonl").read_text().splitlines()
    return records, [json.loads(line) for line in lines]


def texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text"]


def signature(content: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """What of a reply must come back in the next request: block types, texts and tool ids.

    Not the whole block: Claude Code re-sends tool inputs with defaults filled in (Edit gains
    `"replace_all": false`), and moves `cache_control` about.
    """
    return [(b["type"], b.get("text") or b.get("id") or b.get("signature") or "") for b in content]


def test_all_required_scenarios_are_recorded() -> None:
    assert set(SCENARIOS) >= REQUIRED
    assert ROOT.joinpath("README.md").exists()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_request_files_have_the_replay_format_and_no_credentials(scenario: str) -> None:
    files = request_files(scenario)
    assert [int(p.name[:4]) for p in files] == list(range(1, len(files) + 1))
    stamps = []
    for path in files:
        raw = path.read_text()
        assert set(SECRET.findall(raw)) <= {REDACTED_API_KEY, REDACTED_BEARER.removeprefix("Bearer ")}, path.name
        rec = json.loads(raw)
        assert set(rec) == RECORD_KEYS, path.name
        stamps.append(datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")))
        assert rec["method"] in {"GET", "POST", "HEAD"} and rec["path"].startswith("/")
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in rec["headers"].items())
        for name, fake in (("x-api-key", REDACTED_API_KEY), ("authorization", REDACTED_BEARER)):
            assert rec["headers"].get(name, fake) == fake, (path.name, name)
        assert set(rec["response"]) == {"status", "body"} and isinstance(rec["response"]["status"], int)
        if rec["method"] == "POST":
            assert isinstance(rec["body"], dict) and rec["body"].get("messages")
        if rec["response"]["status"] == 200 and rec["path"].startswith("/v1/messages?") | (
            rec["path"] == "/v1/messages"
        ):
            assert rec["response"]["body"]["type"] == "message"
    assert stamps == sorted(stamps)
    md = ROOT.joinpath(scenario, "scenario.md").read_text()
    assert ROOT.joinpath(scenario, "script.json").exists()
    if any("claude-cli/" in json.loads(p.read_text())["headers"].get("user-agent", "") for p in files):
        assert CLAUDE_CODE_VERSION in md


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_expected_covers_every_file_and_points_backwards(scenario: str) -> None:
    records, expected = load(scenario)
    assert [e["file"] for e in expected] == list(records)
    seen: dict[str, dict[str, Any]] = {}
    for e in expected:
        assert set(e) == EXPECTED_KEYS, e
        assert e["request_type"] in REQUEST_TYPES
        for ref in ("parent_file", "parent_task_file"):
            assert e[ref] is None or e[ref] in seen, (e["file"], ref)  # an earlier file of this scenario
        assert e["is_subtask"] == (e["parent_task_file"] is not None) == (e["request_type"] == "subagent")
        standalone = e["request_type"] in {"auxiliary", "count_tokens"}
        assert (e["conversation"] is None) == (e["branch"] is None) == standalone
        if standalone:
            assert e["parent_file"] is None
        if e["parent_file"] is not None:
            assert seen[e["parent_file"]]["conversation"] == e["conversation"]
        assert (e["request_type"] == "count_tokens") == ("/count_tokens" in records[e["file"]]["path"])
        seen[e["file"]] = e
    conversations = {e["conversation"] for e in expected} - {None}
    for conv in conversations:
        rows = [e for e in expected if e["conversation"] == conv]
        assert rows[0]["branch"] == "main" and rows[0]["parent_file"] is None  # each starts on its main line
    parents = {e["parent_file"] for e in expected} | {e["parent_task_file"] for e in expected}
    assert not parents & {e["file"] for e in expected if e["conversation"] is None}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_expected_edges_are_visible_in_the_recordings(scenario: str) -> None:
    records, expected = load(scenario)
    by_file = {e["file"]: e for e in expected}
    for e in expected:
        rec = records[e["file"]]
        body, headers = rec["body"] or {}, rec["headers"]
        system = body.get("system")
        billing = system[0]["text"] if isinstance(system, list) else ""
        agent_header = "x-claude-code-agent-id" in headers
        assert ("cc_is_subagent=true" in billing) == agent_header == (e["request_type"] == "subagent"), e["file"]
        messages = body.get("messages") or []
        last_user = [m for m in messages if m["role"] == "user"][-1] if messages else {}
        is_compaction = any(COMPACTION_PROMPT in t for t in texts(last_user.get("content")))
        assert is_compaction == (e["request_type"] == "compaction"), e["file"]

        parent = e["parent_file"]
        if parent is None:
            continue
        parent_rec, parent_row = records[parent], by_file[parent]
        reply = parent_rec["response"]["body"]
        assert parent_rec["response"]["status"] == 200, f"{e['file']}: a parent has a reply"
        if parent_row["request_type"] == "compaction":  # the summary comes back as the first user message
            summary = reply["content"][0]["text"].split("<summary>")[1].split("</summary>")[0].strip()
            first = next(t for t in texts(messages[0]["content"]) if not t.startswith("<system-reminder>"))
            assert first.startswith(CONTINUED) and summary in first
        elif e["request_type"] == "subagent" and parent == e["parent_task_file"]:  # first sub-agent turn
            prompts = [b["input"]["prompt"] for b in reply["content"] if b.get("name") == "Agent"]
            assert texts(messages[0]["content"])[-1] in prompts  # the prompt, exactly, as the last text block
            assert [m["role"] for m in messages if m["role"] != "system"] == ["user"]
        else:  # exactly the parent's turns, its reply, and one new user message
            turns = [m for m in messages if m["role"] != "system"]
            parent_turns = [m for m in parent_rec["body"]["messages"] if m["role"] != "system"]
            if e["request_type"] == "compaction" and len(turns) == len(parent_turns):  # Claude Code 2.1.197
                # the parent's turns without its reply, the prompt appended to its last user message
                last, parent_last = texts(turns[-1]["content"]), texts(parent_turns[-1]["content"])
                assert [t.strip() for t in last[:-1]] == parent_last and COMPACTION_PROMPT in last[-1], e["file"]
                assert [m["role"] for m in turns] == [m["role"] for m in parent_turns], e["file"]
                continue
            assert len(turns) == len(parent_turns) + 2, e["file"]
            assert turns[-2]["role"] == "assistant" and turns[-1]["role"] == "user"
            assert signature(turns[-2]["content"]) == signature(reply["content"]), e["file"]
    for e in expected:
        if e["parent_task_file"] is not None:
            reply = records[e["parent_task_file"]]["response"]["body"]
            assert any(b.get("type") == "tool_use" and b.get("name") == "Agent" for b in reply["content"])


def test_retries_resend_the_failed_body() -> None:
    records, expected = load("retry_529")
    statuses = [records[e["file"]]["response"]["status"] for e in expected]
    assert statuses == [200, 529, 529, 200]
    bodies = [records[e["file"]]["body"] for e in expected[1:]]
    assert bodies[0] == bodies[1] == bodies[2]
    assert {e["parent_file"] for e in expected[1:]} == {expected[0]["file"]}


def test_forks_are_new_sessions_from_one_turn() -> None:
    records, expected = load("fork_twice")
    session = {e["file"]: records[e["file"]]["headers"]["x-claude-code-session-id"] for e in expected}
    branches = {e["file"]: e["branch"] for e in expected}
    children = [e["file"] for e in expected if e["parent_file"] == expected[0]["file"]]
    assert [branches[f] for f in children] == ["main", "fork-a", "fork-b"]
    assert len({session[f] for f in children}) == 3


def test_sdk_scenario_has_a_count_tokens_call_and_an_sdk_retry() -> None:
    records, expected = load("python_sdk")
    agents = {records[e["file"]]["headers"]["user-agent"] for e in expected}
    assert all(a.startswith("Anthropic/Python") for a in agents)
    assert [e["request_type"] for e in expected].count("count_tokens") == 1
    last_two = [records[e["file"]] for e in expected[-2:]]
    assert [r["response"]["status"] for r in last_two] == [529, 200]
    assert [r["headers"]["x-stainless-retry-count"] for r in last_two] == ["0", "1"]


def test_interactive_scenario_has_title_generation() -> None:
    records, expected = load("interactive_title")
    titles = [
        e
        for e in expected
        if records[e["file"]]["body"] and "You are naming a coding session" in json.dumps(records[e["file"]]["body"])
    ]
    assert titles and all(e["request_type"] == "auxiliary" for e in titles)


@pytest.mark.parametrize("scenario", ["retry_529", "subagents_background", "python_sdk"])
def test_fixture_replays_through_the_fake_fifo(scenario: str, upstream_url: str, fake: FakeControl) -> None:
    """What the end-to-end tests do: queue the recorded responses, re-send the recorded requests."""
    records, _ = load(scenario)
    calls = [r for r in records.values() if r["path"].split("?")[0] == "/v1/messages"]
    assert fake.replies(*(r["response"] for r in calls)) == len(calls)
    parts = urlsplit(upstream_url)
    for rec in records.values():
        headers = {k: v for k, v in rec["headers"].items() if k not in {"host", "content-length", "accept-encoding"}}
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.request(rec["method"], rec["path"], body=orjson.dumps(rec["body"]), headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        assert resp.status == rec["response"]["status"]
        if resp.getheader("content-type", "").startswith("text/event-stream"):
            obs = SseObserver()
            obs.feed(data)
            assert obs.saw_message_stop
            data = obs.message_json() or b""
        got = orjson.loads(data)
        if rec["path"].endswith("count_tokens"):
            assert got["input_tokens"] > 0  # answered by the fake itself, not from the queue
        elif resp.status == 200:
            assert got == rec["response"]["body"]
        else:
            assert got["error"] == rec["response"]["body"]["error"]
    assert fake.replies_left() == 0
