"""The fake upstream itself: it must speak the real wire format, or every other test proves nothing."""

from __future__ import annotations

import http.client
import subprocess
import sys
from urllib.parse import urlsplit

import anthropic
import orjson
import pytest

from nexus.fake_upstream.scenario import Scenario
from tests.harness.control import FakeControl

#: These test the tooling (the fake upstream, the benchmark's generators), not Nexus itself.
pytestmark = pytest.mark.tooling

HEADERS = {"content-type": "application/json", "x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}


def raw_post(url: str, body: dict, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    c = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    c.request("POST", "/v1/messages", body=orjson.dumps(body), headers=headers or HEADERS)
    resp = c.getresponse()
    data = resp.read()
    c.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def test_stream_event_order_and_usage(upstream_url: str) -> None:
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 10,
        "stream": True,
        "messages": [{"role": "user", "content": "x"}],
    }
    status, headers, data = raw_post(upstream_url, body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert headers["request-id"].startswith("req_")
    assert "anthropic-ratelimit-tokens-remaining" in headers
    blocks = [b for b in data.decode().split("\n\n") if b]
    names = [b.split("\n")[0].removeprefix("event: ") for b in blocks]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    for block in blocks:  # every event's name matches its data's type
        name, data_line = block.split("\n")
        assert orjson.loads(data_line.removeprefix("data: "))["type"] == name.removeprefix("event: ")
    start = orjson.loads(blocks[0].split("data: ", 1)[1])["message"]["usage"]
    delta = orjson.loads(blocks[-2].split("data: ", 1)[1])["usage"]
    assert start["input_tokens"] == delta["input_tokens"] > 0
    assert "ephemeral_5m_input_tokens" in start["cache_creation"]


def test_oauth_requests_get_unified_rate_limit_headers(upstream_url: str) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    headers = {**HEADERS, "authorization": "Bearer sk-ant-oat01-abc"}
    del headers["x-api-key"]
    _, got, _ = raw_post(upstream_url, body, headers)
    assert got["anthropic-ratelimit-unified-status"] == "allowed"
    assert float(got["anthropic-ratelimit-unified-5h-utilization"]) < 1


@pytest.mark.parametrize(
    ("headers", "body", "status", "etype"),
    [
        ({"content-type": "application/json", "anthropic-version": "2023-06-01"}, {}, 401, "authentication_error"),
        ({"content-type": "application/json", "x-api-key": "k"}, {}, 400, "invalid_request_error"),
        (HEADERS, {"model": "m", "messages": [{"role": "user", "content": "x"}]}, 400, "invalid_request_error"),
    ],
)
def test_validation_errors_have_the_api_shape(
    upstream_url: str, headers: dict[str, str], body: dict, status: int, etype: str
) -> None:
    got_status, _, data = raw_post(upstream_url, body, headers)
    err = orjson.loads(data)
    assert got_status == status
    assert err["type"] == "error" and err["error"]["type"] == etype and err["request_id"].startswith("req_")


def test_its_401s_say_do_not_retry_like_the_real_api(upstream_url: str, fake: FakeControl) -> None:
    """A 401 cannot be cured by retrying: the API (and Nexus's own 401s) say so with `x-should-retry:
    false`, which Claude Code obeys (else it retries a 401 for minutes). The fake's 401s must say it too,
    or tests of what the proxy forwards prove nothing about it."""
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    no_key = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    fake.oauth(revoke_access="sk-ant-oat01-revoked")
    revoked = {**no_key, "authorization": "Bearer sk-ant-oat01-revoked", "anthropic-beta": "oauth-2025-04-20"}
    fake.queue("error:401")
    for headers in (no_key, revoked, HEADERS):
        status, got, data = raw_post(upstream_url, body, headers)
        assert status == 401 and orjson.loads(data)["error"]["type"] == "authentication_error"
        assert got.get("x-should-retry") == "false", headers
    fake.queue("error:500")
    status, got, _ = raw_post(upstream_url, body)
    assert status == 500 and "x-should-retry" not in got  # only where no retry can help


def test_scenario_queue_and_recording(upstream_url: str, fake: FakeControl) -> None:
    client = anthropic.Anthropic(base_url=upstream_url, api_key="sk-ant-x", max_retries=0)
    fake.queue("error:529", "ok")
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "a"}])
    assert info.value.status_code == 529 and info.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    ok = client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "b"}])
    assert ok.content[0].type == "text"
    seen = fake.requests()
    assert [r["body"]["messages"][0]["content"] for r in seen] == ["a", "b"]
    sent = seen[0]["headers"]
    assert sent.get("x-api-key") == "sk-ant-x" or sent.get("authorization") == "Bearer sk-ant-x"


def test_scenario_grammar() -> None:
    assert Scenario.parse("error:429:retry-after=7") == Scenario("error", 429, "7")
    assert Scenario.parse("drop-after:3") == Scenario("drop-after", 3)
    with pytest.raises(ValueError, match="unknown fake scenario"):
        Scenario.parse("explode")


def test_text_tokens_header_sets_the_reply_length(upstream_url: str) -> None:
    body = {"model": "m", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    _, _, short = raw_post(upstream_url, body, {**HEADERS, "x-fake-text-tokens": "3"})
    _, _, long = raw_post(upstream_url, body, {**HEADERS, "x-fake-text-tokens": "300"})
    deltas = [d.count(b"event: content_block_delta") for d in (short, long)]
    assert deltas == [1, 100]  # three words a delta
    usage = orjson.loads(long.split(b"\n\n")[-3].split(b"data: ", 1)[1])["usage"]
    assert usage["output_tokens"] == 300
    status, _, data = raw_post(upstream_url, body, {**HEADERS, "x-fake-text-tokens": "lots"})
    assert status == 400 and b"x-fake-text-tokens" in data


def test_tool_marker_is_seen_before_claude_codes_trailing_system_messages(upstream_url: str) -> None:
    """Claude Code 2.1 ends `messages` with `system`-role messages (agent types, skills) after the
    user's turn: the marker in that turn must still call the tool, and its result still end the turn
    (the fake answered plain text to every `claude -p '[[use_tool:...]]'` before)."""
    tools = [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}]
    system = {"role": "system", "content": "Available agent types for the Agent tool: ..."}
    ask = {"role": "user", "content": [{"type": "text", "text": '[[use_tool:Bash {"command": "echo hi"}]]'}]}
    body = {"model": "claude-opus-4-8", "max_tokens": 64, "tools": tools, "messages": [ask, system]}
    status, _, data = raw_post(upstream_url, body)
    reply = orjson.loads(data)
    assert status == 200 and reply["stop_reason"] == "tool_use"
    call = reply["content"][-1]
    assert call["type"] == "tool_use" and call["name"] == "Bash" and call["input"] == {"command": "echo hi"}

    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "hi"}]}
    body["messages"] = [ask, {"role": "assistant", "content": reply["content"]}, result, system]
    status, _, data = raw_post(upstream_url, body)
    follow = orjson.loads(data)
    assert status == 200 and follow["stop_reason"] == "end_turn"
    assert [b["type"] for b in follow["content"]] == ["text"]


@pytest.mark.parametrize("command", [["-m", "nexus.cli", "fake-upstream"], ["-m", "nexus.fake_upstream"]])
def test_a_second_fake_on_a_busy_port_says_so(upstream_url: str, command: list[str]) -> None:
    """Granian binds with SO_REUSEPORT: a second fake on the first one's port used to start without a
    word, and the kernel split requests, recordings and queued scenarios between the two."""
    port = str(urlsplit(upstream_url).port)
    proc = subprocess.Popen([sys.executable, *command, "--port", port], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, raw_err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: Granian stops its worker too (a kill would orphan it)
        proc.communicate(timeout=15)
        pytest.fail("the second fake upstream started on a port the first one holds")
    err = raw_err.decode()
    assert proc.returncode != 0 and f"port {port} on 127.0.0.1 is already in use" in err, err
    assert "--port" in err and "Traceback" not in err, err


def test_a_compaction_request_gets_a_summary_of_its_own_history(upstream_url: str) -> None:
    """Claude Code's `/compact` asks for `<analysis>` then `<summary>` and quotes the summary in the
    history it starts next; the fake's twelve fixed words gave it nothing to quote that the gateway could
    join, so offline every `/compact` started a new conversation. Each history gets its own summary."""
    tools = [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}]
    prompt = "CRITICAL: TEXT ONLY.\n\nYour task is to create a detailed summary of the conversation so far, ..."
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]

    def summary_of(messages: list[dict]) -> str:
        body = {"model": "claude-opus-4-8", "max_tokens": 64, "tools": tools, "messages": messages}
        status, _, data = raw_post(upstream_url, body)
        reply = orjson.loads(data)
        assert status == 200 and reply["stop_reason"] == "end_turn"
        [block] = reply["content"]
        assert block["type"] == "text"
        return block["text"]

    first = summary_of([*history, {"role": "user", "content": [{"type": "text", "text": prompt}]}])
    analysis, _, rest = first.partition("</analysis>")
    assert analysis.startswith("<analysis>") and rest.strip().startswith("<summary>") and first.endswith("</summary>")
    assert len(rest.strip().removeprefix("<summary>").removesuffix("</summary>").strip()) >= 60
    other = summary_of([*history, {"role": "user", "content": "more"}, {"role": "user", "content": prompt}])
    assert other != first
    assert summary_of([*history, {"role": "user", "content": [{"type": "text", "text": prompt}]}]) == first
    # after a tool call, Claude Code 2.1 sends the prompt in the message that carries the tool's result
    called = [
        {"role": "user", "content": "run it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}]},
    ]
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "hi"}
    after_tool = summary_of([*called, {"role": "user", "content": [result, {"type": "text", "text": prompt}]}])
    assert after_tool.startswith("<analysis>") and after_tool not in (first, other)
