"""Integrations in isolation: masking, message formatting, turn detection, the bounded queue, the sample
bounds, telemetry fields, and the Spark finder and client against a local fake Spark API."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from nexus.integrations.events import FinishedRequest, Reading, ToolCall
from nexus.integrations.http import post_json
from nexus.integrations.queue import BatchQueue, Counts
from nexus.integrations.samples import SampleWriter
from nexus.integrations.slack import SlackConfig, SlackNotifier, excerpt, masked_excerpt, tool_line
from nexus.integrations.spark import (
    FeedbackError,
    SparkClient,
    feedback_payload,
    find_recommendations,
    sections,
    sources,
)
from nexus.integrations.telemetry import metrics_of
from nexus.security.masking import MASK, mask_secrets, mask_value
from nexus.settings import Settings, SettingsError, load_settings
from tests.receiver import run_receiver


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        ("key sk-ant-api03-abcdefghijklmnopqrstu0123", "sk-ant-api03-[redacted]", "abcdefghijklmnop"),
        ("oauth sk-ant-oat01-abcdefghijklmnopqrstu0123", "sk-ant-oat01-[redacted]", "abcdefghijklmnop"),
        ("client cnp_live_abcdefghijklmnop12345", "cnp_live_[redacted]", "abcdefghijklmnop"),
        ("Authorization: Bearer abcdefghijklmnop", "Bearer [redacted]", "abcdefghijklmnop"),
        ("openai sk-proj-abcdefghijklmnopqrstuv", MASK, "abcdefghijklmnop"),
        ("aws AKIAIOSFODNN7EXAMPLE here", MASK, "IOSFODNN7EXAMPLE"),
        ("gh ghp_abcdefghijklmnopqrstuvwxyz0123", MASK, "abcdefghijklmnopqrst"),
        ("slack xoxb-1234567890-abcdefghij", MASK, "abcdefghij"),
        ("hook https://hooks.slack.com/services/T0/B0/abcdefSECRET", MASK, "abcdefSECRET"),
        ("jwt eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.SflKxwRJSMeKKF2QT4f", MASK, "SflKxwRJSMeKKF2QT4f"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEabcdef\n-----END RSA PRIVATE KEY-----", MASK, "MIIEabcdef"),
        ("db postgresql://nexus:pa55word@db/x", "postgresql://nexus:[redacted]@db/x", "pa55word"),
        ('{"api_key": "abcdef123456"}', '"api_key": "[redacted]"', "abcdef123456"),
        ("export DB_PASS=hunter2hunter2", "DB_PASS=[redacted]", "hunter2hunter2"),
        ("run --token abcdef123456 now", "--token [redacted]", "abcdef123456"),
        ("my password is hunter2x", "password is [redacted]", "hunter2x"),
        ("percent cnp_live_%61bcdefghijklmnop", "cnp_live_[redacted]", "bcdefghijklmnop"),
        ("gl glpat-abcdefghijklmnopqrst", MASK, "abcdefghijklmnop"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic [redacted]", "dXNlcjpwYXNz"),
        # a keyword that assigns nothing, a masked value holding keywords, a scheme: the scan goes on after each
        ("the key of it; password=hunter2hunter", "password=[redacted]", "hunter2hunter"),
        ("pwd=passkey12345 then token=abcdef123456", "then token=[redacted]", "abcdef123456"),
        ("Authorization: Bearer abcdefghijklmnop, token=abcdef123456", "token=[redacted]", "abcdef123456"),
        ("Authorization: Negotiate YIIabcdefgh12", "Authorization: Negotiate [redacted]", "YIIabcdefgh12"),
        ("Authorization: Token gh0123456789", "Authorization: Token [redacted]", "gh0123456789"),
        ("proxy-authorization: Digest username12", "Digest [redacted]", "username12"),
        ("the api key: key", "the api key: key", "[redacted]"),
        # each scheme, with a credential no other rule sees (no digits, shorter than the bearer rule's 8)
        ("Authorization: Basic abcdefg", "Authorization: Basic [redacted]", "abcdefg"),
        ("Authorization: Token abcdefghij", "Authorization: Token [redacted]", "abcdefghij"),
        ("Authorization: NTLM TlRMTVNTUAABAAAA", "Authorization: NTLM [redacted]", "TlRMTVNTUAABAAAA"),
        ("Authorization: DPoP abcdefghijk", "Authorization: DPoP [redacted]", "abcdefghijk"),
        ("Authorization: ApiKey abcdefghijk", "Authorization: ApiKey [redacted]", "abcdefghijk"),
        ("Authorization: OAuth abcdefghijk", "Authorization: OAuth [redacted]", "abcdefghijk"),
        ("Authorization: Key abcdefghijk", "Authorization: Key [redacted]", "abcdefghijk"),
        ("Authorization: Bearer\nthen password=hunter2hunter", "password=[redacted]", "hunter2hunter"),
        ("password=abc123", "password=[redacted]", "abc123"),  # six characters are enough
    ],
)
def test_secrets_are_masked(text: str, kept: str, gone: str) -> None:
    masked = mask_secrets(text)
    assert kept in masked
    assert gone not in masked


def test_ordinary_text_is_left_alone() -> None:
    for text in ("the keyboard layout", "the author wrote a book", "the key is blue", "token count: 12", "pwd: /a"):
        assert mask_secrets(text) == text


def test_mask_value_masks_keys_and_values_and_bounds_nesting() -> None:
    value = {"a": [f"sk-ant-api03-{'x' * 20}", {"password=hunter2hunter": 1}], "n": 5}
    masked = mask_value(value)
    assert masked == {"a": ["sk-ant-api03-[redacted]", {"password=[redacted]": 1}], "n": 5}
    deep: Any = "sk-ant-api03-" + "y" * 20
    for _ in range(500):
        deep = [deep]
    assert "yyyy" not in orjson.dumps(mask_value(deep)).decode()


@pytest.mark.parametrize("wrap", [lambda v: [v], lambda v: {"k": v}])
def test_mask_value_keeps_200_levels_and_cuts_below(wrap: Any) -> None:
    def nested(levels: int) -> Any:
        value: Any = "plain text"
        for _ in range(levels):
            value = wrap(value)
        return value

    def innermost(value: Any) -> Any:
        while isinstance(value, list | dict):
            value = value[0] if isinstance(value, list) else value["k"]
        return value

    assert innermost(mask_value(nested(200))) == "plain text"
    assert innermost(mask_value(nested(201))) == MASK


def event(**overrides: Any) -> FinishedRequest:
    base: dict[str, Any] = {
        "request_id": "rid-1",
        "timestamp_ms": 1_700_000_000_000,
        "project_id": "alpha",
        "account_id": "acc_1",
        "method": "POST",
        "path": "/v1/messages",
        "model": "claude-sonnet-4-6",
        "request_type": "main",
        "status": 200,
        "outcome": "completed",
        "error": None,
        "streamed": False,
        "duration_ms": 1200,
        "first_byte_ms": 300,
        "tokens": (None, None, None, None),
        "tool_call_count": None,
        "request_headers": [("x-api-key", "sk-ant-api03-" + "h" * 30), ("user-agent", "claude-cli/2.1")],
        "response_headers": [("set-cookie", "a=b"), ("request-id", "req_1")],
        "request_body": None,
        "response_body": None,
    }
    return FinishedRequest(**{**base, **overrides})


def body(*contents: Any) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": c} for c in contents]})


def test_the_prompt_is_the_last_user_text_without_reminders() -> None:
    blocks = [
        {"type": "text", "text": "<system-reminder>context</system-reminder>"},
        {"type": "text", "text": "the real question"},
        {"type": "text", "text": "<system-reminder>more</system-reminder>"},
    ]
    assert Reading.of(event(request_body=body("first", blocks))).prompt == "the real question"
    tool_result = [{"type": "tool_result", "tool_use_id": "t", "content": "output"}]
    assert Reading.of(event(request_body=body("first", tool_result))).prompt is None
    assert Reading.of(event(request_body=body("plain string"))).prompt == "plain string"
    assert Reading.of(event(request_body=b"not json")).prompt is None


def test_a_json_reply_gives_text_tools_and_usage() -> None:
    reply = {
        "model": "claude-opus-4-6",
        "content": [
            {"type": "text", "text": "Done."},
            {"type": "tool_use", "name": "Grep", "input": {"pattern": "TODO"}},
        ],
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 7},
    }
    reading = Reading.of(event(response_body=orjson.dumps(reply)))
    assert reading.model == "claude-opus-4-6"
    assert reading.reply == "Done."
    assert [c.name for c in reading.tool_calls] == ["Grep"]
    assert (reading.input_tokens, reading.output_tokens, reading.cache_read_tokens) == (10, 5, 7)
    assert reading.tool_call_count == 1


@pytest.mark.parametrize(
    ("name", "inp", "line"),
    [
        ("Read", {"file_path": "/a/b/c.py"}, "Read: c.py"),
        ("Bash", {"command": "x" * 60}, "Bash: " + "x" * 50 + "…"),
        ("Bash", {"command": "curl -H 'x-api-key: abcdefghijk' host"}, "Bash: curl -H 'x-api-key: [redacted]' host"),
        ("Glob", {"pattern": "**/*.rs"}, "Glob: **/*.rs"),
        (
            "TodoWrite",
            {"todos": [{"status": "done"}, {"status": "done"}, {"status": "pending"}]},
            "TodoWrite: 2 done, 1 pending",
        ),
        ("WebFetch", {"url": "https://docs.example.com/a?token=abc"}, "WebFetch: docs.example.com"),
        ("Task", {"description": "explore the repo"}, "Task: explore the repo"),
        ("Other", "not an object", "Other"),
        ("Bash", {"command": "x" * 40 + " sk-ant-api03-" + "a" * 30}, "Bash: " + "x" * 40 + " sk-ant-ap…"),
        ("WebFetch", {"url": "http://[::1"}, "WebFetch"),
    ],
)
def test_tool_lines(name: str, inp: Any, line: str) -> None:
    assert tool_line(ToolCall(name, inp)) == line


def test_excerpts_are_cut_by_lines_and_characters() -> None:
    assert excerpt("a\n" * 30, 1000, 20) == "\n".join(["a"] * 20) + "\n…"
    assert excerpt("word " * 100, 20) == ("word " * 4).strip() + "…"


def test_a_secret_across_the_excerpt_cut_is_masked_whole() -> None:
    text = "w" * 90 + " sk-ant-api03-" + "s" * 40 + " end"
    assert masked_excerpt(text, 100) == "w" * 90 + " sk-ant-ap…"
    pem = "x " * 10 + "-----BEGIN PRIVATE KEY-----\n" + "M" * 9000
    assert "MMM" not in masked_excerpt(pem, 3000)


def notifier(**settings: Any) -> SlackNotifier:
    s = Settings(slack_webhook_url="http://127.0.0.1:9/hook", **settings)
    return SlackNotifier(SlackConfig.of(s))


def test_only_chosen_projects_and_types_are_queued() -> None:
    n = notifier(slack_projects="alpha,beta", slack_excluded_projects="beta")
    n.offer(event())
    n.offer(event(project_id="beta"))
    n.offer(event(project_id="gamma"))
    n.offer(event(request_type="subagent"))
    n.offer(event(path="/v1/messages/count_tokens"))
    n.offer(event(path="/v1/messages?beta=true"))
    n.offer(event(outcome="client_disconnected", status=None))
    n.offer(event(status=529, outcome="upstream_error", error="upstream answered 529"))
    assert len(n.queue) == 3
    quiet = notifier(slack_notify_errors=False)
    quiet.offer(event(status=529, outcome="upstream_error"))
    assert len(quiet.queue) == 0


def test_a_turn_notifies_once_per_project() -> None:
    n = notifier()
    first = event(request_body=body("question one"))
    again = event(request_body=body("question one"))
    other_project = event(project_id="beta", request_body=body("question one"))
    tools = event(request_body=body([{"type": "tool_result", "tool_use_id": "t", "content": "x"}]))
    failed = event(request_body=body("question one"), status=500, outcome="upstream_error", error="boom")
    assert n.shared is not None
    out = n._notifications([(e, (n.shared,)) for e in (first, again, other_project, tools, failed)])
    assert len(out) == 3  # first, the other project's, the failure
    assert n.counts.totals["skipped"] == 2
    attachment = out[2][0]
    assert attachment["color"] == "danger" and attachment["text"].startswith("Error: boom (status 500)")


def test_text_from_prompts_cannot_mention_or_link_in_slack() -> None:
    n = notifier()
    prompt = "hey <!channel> see <https://evil.example|the docs> & <@U123>"
    reply = "sure <!here>"
    attachment = n.attachment(event(project_id="p<!everyone>"), Reading(prompt=prompt, reply=reply))
    text = attachment["text"]
    assert "<" not in text and ">" not in text and "<" not in attachment["footer"]
    assert "hey &lt;!channel&gt; see &lt;https://evil.example|the docs&gt; &amp; &lt;@U123&gt;" in text
    assert attachment["footer"].startswith("p&lt;!everyone&gt; |")


def test_the_payload_says_how_many_were_left_out() -> None:
    n = notifier(slack_channel="#ops", slack_username="bot")
    attachment = n.attachment(event(request_body=body("hi")), Reading(prompt="hi", input_tokens=3, output_tokens=4))
    assert attachment["footer"] == "alpha | claude-sonnet-4-6 | acc_1 | Tokens: 3 in / 4 out | 1.2 s"
    assert n.shared is not None
    payload = orjson.loads(n.payload(n.shared, [attachment, attachment], 7))
    assert payload["text"] == "2 new requests; 7 more left out (rate limit)"
    assert payload["channel"] == "#ops" and payload["username"] == "bot"
    assert "text" not in orjson.loads(n.payload(n.shared, [attachment], 0))


def test_a_projects_slack_block_routes_its_notifications() -> None:
    blocks: dict[str, Any] = {
        "own": {"webhook_url": "https://hooks.example/own", "channel": "#own", "username": "team"},
        "styled": {"channel": "#styled"},
        "muted": {"enabled": False, "webhook_url": "https://hooks.example/muted"},
        "odd": {"webhook_url": "javascript:alert(1)", "channel": 5},
        "broken": "not an object",
    }

    def lookup(project: str) -> Any:
        if project == "raises":
            raise ValueError("invalid credential file")
        return blocks.get(project)

    n = SlackNotifier(SlackConfig.of(Settings(slack_webhook_url="https://hooks.example/global")), lookup)
    shared = n.shared
    assert shared is not None and shared.shared
    own = n.destinations("own", failed=False)
    assert [(d.url, d.channel, d.username, d.shared) for d in own] == [
        ("https://hooks.example/global", None, "Claude Nexus Proxy", True),
        ("https://hooks.example/own", "#own", "team", False),
    ]
    assert n.destinations("own", failed=True) == (shared,)  # failures go to the global webhook only
    (styled,) = n.destinations("styled", failed=False)
    assert (styled.url, styled.channel) == ("https://hooks.example/global", "#styled")
    assert n.destinations("muted", failed=False) == ()
    for project in ("odd", "broken", "raises", "unknown"):
        assert n.destinations(project, failed=False) == (shared,)
    only_projects = SlackNotifier(SlackConfig.of(Settings(slack_enabled=True)), lookup)
    assert only_projects.shared is None
    assert [d.url for d in only_projects.destinations("own", failed=False)] == ["https://hooks.example/own"]
    assert only_projects.destinations("unknown", failed=False) == ()


async def test_a_full_queue_drops_and_counts_without_waiting() -> None:
    delivered: list[list[int]] = []
    gate = asyncio.Event()

    async def deliver(batch: list[int]) -> None:
        await gate.wait()
        delivered.append(batch)

    counts = Counts("telemetry")
    queue: BatchQueue[int] = BatchQueue(counts, capacity=3, batch_size=2, interval_s=0.001, deliver=deliver)
    queue.start()
    assert [queue.offer(i) for i in range(5)] == [True, True, True, False, False]
    await asyncio.sleep(0.05)  # the first batch is taken and stuck in delivery: room for two more
    assert [queue.offer(i) for i in range(5, 8)] == [True, True, False]
    gate.set()
    await queue.close(timeout_s=2)
    assert sorted(i for batch in delivered for i in batch) == [0, 1, 2, 5, 6]
    assert all(len(batch) <= 2 for batch in delivered)
    assert counts.totals["dropped"] == 3


async def test_a_queue_is_bounded_by_the_bytes_it_keeps_alive() -> None:
    delivered: list[bytes] = []

    async def deliver(batch: list[bytes]) -> None:
        delivered.extend(batch)

    counts = Counts("samples")
    queue: BatchQueue[bytes] = BatchQueue(counts, 100, 10, 0.001, deliver, size=len, max_bytes=1000)
    assert [queue.offer(b"x" * 400) for _ in range(3)] == [True, True, False]
    assert queue.offer(b"y" * 200) and queue.queued_bytes == 1000
    queue.start()
    await queue.close(timeout_s=1)
    assert len(delivered) == 3 and queue.queued_bytes == 0 and counts.totals["dropped"] == 1


async def test_close_gives_up_after_its_timeout_and_counts_what_was_left() -> None:
    async def deliver(batch: list[int]) -> None:
        await asyncio.sleep(3600)  # a receiver that never answers

    counts = Counts("slack")
    queue: BatchQueue[int] = BatchQueue(counts, capacity=10, batch_size=2, interval_s=0.001, deliver=deliver)
    queue.start()
    for i in range(5):
        queue.offer(i)
    await asyncio.sleep(0.05)
    await queue.close(timeout_s=0.1)
    assert counts.totals["dropped"] == 5  # the batch in flight and the three behind it


async def test_a_failing_delivery_is_counted_and_the_queue_goes_on() -> None:
    async def deliver(batch: list[int]) -> None:
        raise RuntimeError("receiver exploded")

    counts = Counts("slack")
    queue: BatchQueue[int] = BatchQueue(counts, capacity=10, batch_size=4, interval_s=0.001, deliver=deliver)
    queue.start()
    for i in range(6):
        queue.offer(i)
    await asyncio.sleep(0.05)
    queue.offer(99)
    await queue.close(timeout_s=1)
    assert counts.totals["failed"] == 7


def test_telemetry_reads_usage_from_a_json_reply_and_never_the_prompt() -> None:
    reply = {"model": "m2", "content": [], "usage": {"input_tokens": 11, "output_tokens": 22}}
    e = event(
        request_body=body("secret plan sk-ant-api03-" + "z" * 30),
        response_body=orjson.dumps(reply),
        error="upstream said password=hunter2hunter",
    )
    out = metrics_of(e)
    assert out["inputTokens"] == 11 and out["outputTokens"] == 22
    assert out["error"] == "upstream said password=[redacted]"
    text = orjson.dumps(out).decode()
    assert "secret plan" not in text and "zzzz" not in text and "hhhh" not in text
    assert set(out) >= {"requestId", "timestamp", "projectId", "model", "durationMs", "status", "toolCallCount"}


def test_telemetry_masks_and_bounds_the_model_a_client_or_upstream_wrote() -> None:
    """`model` is text the client wrote (or the upstream echoed): a key pasted there reached the telemetry
    endpoint verbatim, and so did a model name of any length, while Slack masked the same field."""
    key = "sk-ant-api03-" + "Z" * 40
    out = metrics_of(event(model=f"oops {key}"))
    assert key not in orjson.dumps(out).decode() and out["model"].startswith("oops sk-ant-api03-")
    reply = {"model": f"echo {key} " + "m" * 5000, "content": [], "usage": {"input_tokens": 1, "output_tokens": 2}}
    out = metrics_of(event(model=None, response_body=orjson.dumps(reply)))
    assert key not in orjson.dumps(out).decode() and len(out["model"]) <= 200
    out = metrics_of(event(project_id=key, account_id=key))
    assert key not in orjson.dumps(out).decode()
    assert metrics_of(event())["projectId"] == "alpha" and metrics_of(event())["accountId"] == "acc_1"
    footer = notifier().attachment(event(model="M" * 200_000), Reading(prompt="hi"))["footer"]
    assert len(footer) < 1000  # the whole model name went into every Slack message


def test_samples_are_bounded_in_count_and_size(tmp_path: Path) -> None:
    writer = SampleWriter(tmp_path / "s", max_files=2, max_bytes=2000)
    big = event(request_id="big", request_body=b'{"x": "' + b"a" * 3000 + b'"}')
    small = [event(request_id=f"r{i}", request_body=body(f"q{i} sk-ant-api03-{'k' * 30}")) for i in range(3)]
    writer.write_all([big, *small])
    files = sorted((tmp_path / "s").glob("*.json"))
    assert len(files) == 2
    assert writer.counts.totals == {"sent": 2, "dropped": 0, "failed": 0, "skipped": 2}
    sample = orjson.loads(files[0].read_bytes())
    assert sample["request"]["headers"] == {"user-agent": "claude-cli/2.1"}
    assert sample["response"]["headers"] == {"request-id": "req_1"}
    assert "kkkk" not in files[0].read_text()
    again = SampleWriter(tmp_path / "s", max_files=2, max_bytes=2000)  # a restart counts what is there
    again.write_all([event(request_id="later")])
    assert again.counts.totals["skipped"] == 1
    files[0].unlink()  # deleting a sample makes room
    again.write_all([event(request_id="room"), event(request_id="full")])
    assert again.counts.totals == {"sent": 1, "dropped": 0, "failed": 0, "skipped": 2}
    assert len(list((tmp_path / "s").glob("*_room.json"))) == 1


RECOMMENDATION = """## Use a connection pool
Pool connections with [psycopg_pool](https://www.psycopg.org/psycopg3/docs/advanced/pool.html).

## Watch the timeouts
See [the docs](https://www.postgresql.org/docs/current/runtime-config-client.html) and
[the docs](https://www.postgresql.org/docs/current/runtime-config-client.html) again.
"""


def spark_conversation(result_text: str, name: str = "mcp__spark__get_recommendation") -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": "how do I pool connections?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Asking Spark."},
                    {"type": "tool_use", "id": "toolu_s", "name": name, "input": {"query": "pooling", "context": "py"}},
                ],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_s", "content": result_text}]},
        ]
    }


def test_spark_recommendations_are_found_in_tool_results() -> None:
    result = orjson.dumps({"session_id": "sess-123", "response": RECOMMENDATION}).decode()
    found = find_recommendations(spark_conversation(result))
    assert len(found) == 1
    rec = found[0]
    assert (rec.session_id, rec.query, rec.context, rec.tool_use_id) == ("sess-123", "pooling", "py", "toolu_s")
    assert [s.id for s in rec.sections] == ["use-a-connection-pool", "watch-the-timeouts"]
    assert rec.sections[0].text.startswith("Pool connections")
    assert [url for _, url in rec.sources] == [
        "https://www.psycopg.org/psycopg3/docs/advanced/pool.html",
        "https://www.postgresql.org/docs/current/runtime-config-client.html",
    ]
    as_blocks = [{"type": "text", "text": result}]
    assert find_recommendations(spark_conversation(as_blocks))[0].session_id == "sess-123"  # type: ignore[arg-type]
    assert find_recommendations(spark_conversation(result, name="Bash")) == []
    assert find_recommendations(spark_conversation("not json")) == []
    bad_id = orjson.dumps({"session_id": "../../admin", "response": "x"}).decode()
    assert find_recommendations(spark_conversation(bad_id)) == []
    assert find_recommendations(None) == [] and find_recommendations({"messages": "x"}) == []


def test_section_ids_are_unique_and_sources_are_links_only() -> None:
    assert [s.id for s in sections("# A\nx\n# A\ny\n# !!!\n")] == ["a", "a-x", "section-3"]
    assert sources("[x](javascript:alert(1)) [y](https://ok.example/p)") == [("y", "https://ok.example/p")]


def test_feedback_payload_follows_the_reference_schema() -> None:
    payload = feedback_payload("sess-1", "4", "useful", {"use-a-pool": "right", "other": " "}, {"https://a": "good"})
    assert payload == {
        "session_id": "sess-1",
        "feedback": {
            "recommendation_feedback": {
                "overall_feedback": {"rating": 4, "comments": "useful"},
                "section_feedbacks": [{"section_id": "use-a-pool", "feedback": "right"}],
            },
            "source_feedbacks": [{"source_url": "https://a", "feedback": "good"}],
        },
    }
    for rating in ("0", "6", "x", None):
        with pytest.raises(FeedbackError):
            feedback_payload("sess-1", rating, "")
    with pytest.raises(FeedbackError):
        feedback_payload("bad id/..", 3, "")
    with pytest.raises(FeedbackError):
        feedback_payload("sess-1", 3, "x" * 5001)


def test_spark_client_against_a_fake_spark_api() -> None:
    with run_receiver() as fake_spark:
        fake_spark.answers["/send_feedback"] = (200, b'{"status": "ok", "feedback_id": "fb-1"}')
        fake_spark.answers["/sessions/sess-1/feedback"] = (200, b'{"session_id": "sess-1", "feedback": []}')
        fake_spark.answers["/feedback/batch"] = (422, b'{"detail": "session_ids: too many"}')
        client = SparkClient(fake_spark.url + "/", "spark-key-123456")
        sent = client.send_feedback(feedback_payload("sess-1", 5, "great"))
        assert sent.ok and sent.data == {"status": "ok", "feedback_id": "fb-1"}
        got = client.session_feedback("sess-1")
        assert got.ok and got.data["session_id"] == "sess-1"
        refused = client.batch_feedback(["sess-1", "sess-2"])
        assert not refused.ok and refused.status == 422
        assert refused.error == "Spark API answered 422: session_ids: too many"
        post, get, batch = fake_spark.received
        assert (post.method, post.path) == ("POST", "/send_feedback")
        assert post.headers["authorization"] == "Bearer spark-key-123456"
        assert post.json()["feedback"]["recommendation_feedback"]["overall_feedback"] == {
            "rating": 5,
            "comments": "great",
        }
        assert (get.method, get.path, get.body) == ("GET", "/sessions/sess-1/feedback", b"")
        assert batch.json() == {"session_ids": ["sess-1", "sess-2"]}
        with pytest.raises(FeedbackError):
            client.batch_feedback([])
        with pytest.raises(FeedbackError):
            client.session_feedback("../x")
    down = SparkClient(fake_spark.url, "k", timeout_s=2).send_feedback({"session_id": "s"})
    assert not down.ok and down.status is None and down.error is not None and "unreachable" in down.error


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_receiver_that_redirects_gets_no_second_request(status: int) -> None:
    """urllib followed a 301/302/303 to wherever the receiver pointed (as a GET), carrying the Spark bearer
    key along (a Slack webhook's answer could likewise aim the gateway at any host). A redirect is now
    an answer like any other: a failure, and nothing is sent anywhere else."""
    with run_receiver() as elsewhere, run_receiver() as fake_spark:
        fake_spark.answers["/send_feedback"] = (status, b"")
        fake_spark.locations["/send_feedback"] = elsewhere.url + "/steal"
        answer = SparkClient(fake_spark.url, "spark-key-123456", timeout_s=2).send_feedback({"session_id": "s"})
        assert not answer.ok and answer.status == status
        posted = post_json(fake_spark.url + "/send_feedback", b"{}")
        assert not posted.ok and posted.status == status
        assert elsewhere.received == []


def test_integration_settings_defaults_and_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = "https://hooks.slack.com/services/T0/B0/WebhookSecretPart"
    s = Settings(slack_webhook_url=hook, spark_api_key="spark-secret-key-0000", telemetry_endpoint="http://u:pw@t/x")
    assert s.slack_active and s.spark_active
    assert not Settings(slack_webhook_url=hook, slack_enabled=False).slack_active
    assert not Settings().slack_active and not Settings().spark_active
    assert Settings(spark_enabled=True).spark_active  # forced on: the dashboard still needs the key to send
    assert Settings().dashboard_link == "http://localhost:3001"
    assert Settings(dashboard_public_url="https://dash.example/").dashboard_link == "https://dash.example"
    shown = repr(s.masked())
    assert "WebhookSecretPart" not in shown and "spark-secret-key" not in shown and ":pw@" not in shown
    monkeypatch.setenv("SLACK_ENABLED", "")  # an empty line in an env file means unset
    assert Settings().slack_enabled is None
    with pytest.raises(SettingsError) as info:
        load_settings(slack_webhook_url="ftp://hooks.slack.com/services/WebhookSecretPart")
    assert "WebhookSecretPart" not in str(info.value)
    with pytest.raises(SettingsError, match=r"SLACK_REQUEST_TYPES: .*unknown request types"):
        load_settings(slack_request_types="main,inference")
