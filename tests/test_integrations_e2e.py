"""Slack, telemetry and test samples end to end: real proxy processes, the fake upstream, and a local
receiver (an HTTP server on a loopback port) standing in for Slack's webhook and a telemetry collector.

Requests carry keys and passwords in their prompts and headers; no message, metric batch or sample
file may contain one.
"""

from __future__ import annotations

import itertools
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.harness.control import FakeControl
from tests.harness.servers import free_port, run_proxy
from tests.helpers import FAST, get_json, health, wait_for
from tests.receiver import Receiver, run_receiver

MODEL = "claude-sonnet-4-6"
API_KEY = "sk-ant-api03-HeaderSecretKey0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN-AAAAAA"
PROMPT_KEY = "sk-ant-api03-PromptSecretKey987654321zyxwvutsrqponmlkjihgfedcbaZYXWVUTSRQPONML-BBBBBB"
PASSWORD = "hunter2-correct-horse-battery"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
REPLY_KEY = "sk-ant-oat01-ReplySecretToken0000111122223333444455556666777788889999-CCCC"
SECRETS = (
    API_KEY,
    PROMPT_KEY,
    PASSWORD,
    AWS_KEY,
    REPLY_KEY,
    "HeaderSecretKey",
    "PromptSecretKey",
    "ReplySecret",
    "ProjectCredential",
)
HOOK = "/services/T000/B000/WebhookSecretPath"


def send(
    url: str, prompt: str | list[dict[str, Any]], *, stream: bool = False, project: str = "alpha", timeout: float = 10
) -> str:
    """One /v1/messages request with a key in its headers; returns its X-Request-ID."""
    content = prompt if isinstance(prompt, list) else [{"type": "text", "text": prompt}]
    body = {"model": MODEL, "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": content}]}
    req = urllib.request.Request(  # noqa: S310 (loopback)
        url + "/v1/messages?beta=true",  # as Claude Code sends it
        data=orjson.dumps(body),
        method="POST",
        headers={
            "content-type": "application/json",
            "anthropic-version": "2023-06-01",
            "x-api-key": API_KEY,
            "authorization": f"Bearer {API_KEY}",
            "train-id": project,
        },
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
        assert resp.status == 200
        resp.read()
        return str(resp.headers["x-request-id"])


def secret_prompt(n: int | str = "") -> str:
    return f"Deploy step {n}: my key is {PROMPT_KEY}, password={PASSWORD}, aws {AWS_KEY}. What next?"


def assert_no_secret(raw: bytes | str) -> None:
    text = raw.decode() if isinstance(raw, bytes) else raw
    for secret in SECRETS:
        assert secret not in text, f"secret {secret[:12]}… leaked"


def integration_counts(url: str, sink: str) -> dict[str, int]:
    return dict(health(url)["integrations"][sink])


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with run_receiver() as r:
        yield r


@pytest.fixture(scope="module")
def samples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("samples")


@pytest.fixture(scope="module")
def credentials_dir(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Path:
    """Projects whose credential files carry a `slack` block (the reference system's per-project config)."""
    directory = tmp_path_factory.mktemp("credentials")
    key = "sk-ant-api03-ProjectCredential0000000000000000000000000000000000000000000-DDDDDD"
    blocks = {
        "teamb": {"webhook_url": receiver.url + "/project-hook", "channel": "#teamb", "username": "team b"},
        "muted": {"enabled": False},
    }
    for project, block in blocks.items():
        data = {"type": "api_key", "accountId": f"acc_{project}", "api_key": key, "slack": block}
        (directory / f"{project}.credentials.json").write_bytes(orjson.dumps(data))
    return directory


@pytest.fixture(scope="module")
def notify_proxy(upstream_url: str, receiver: Receiver, samples_dir: Path, credentials_dir: Path) -> Iterator[str]:
    env = {
        "CREDENTIALS_DIR": str(credentials_dir),
        "CLAUDE_API_BASE_URL": upstream_url,
        "SLACK_WEBHOOK_URL": receiver.url + HOOK,
        "SLACK_CHANNEL": "#gateway",
        "SLACK_BATCH_INTERVAL_MS": "50",
        "SLACK_MAX_POSTS_PER_MINUTE": "600",
        "SLACK_EXCLUDED_PROJECTS": "quiet",
        "DASHBOARD_PUBLIC_URL": "https://dash.example.com",
        "TELEMETRY_ENDPOINT": receiver.url + "/telemetry",
        "TELEMETRY_INTERVAL_MS": "50",
        "COLLECT_TEST_SAMPLES": "true",
        "TEST_SAMPLES_DIR": str(samples_dir),
    }
    with run_proxy(env) as url:
        yield url


def slack_attachments(receiver: Receiver) -> list[dict[str, Any]]:
    return [a for post in receiver.on(HOOK) for a in post.json()["attachments"]]


def attachment_for(receiver: Receiver, request_id: str) -> dict[str, Any] | None:
    return next((a for a in slack_attachments(receiver) if request_id in a["title"]), None)


def test_a_turn_posts_one_slack_message_without_secrets(
    notify_proxy: str, receiver: Receiver, fake: FakeControl
) -> None:
    fake.replies(
        {
            "type": "message",
            "content": [
                {"type": "text", "text": f"Use the token {REPLY_KEY} to log in.\nThen run the deploy."},
                {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": f"export PASS={PASSWORD}"}},
                {"type": "tool_use", "id": "toolu_2", "name": "Read", "input": {"file_path": "/srv/app/settings.py"}},
            ],
        }
    )
    rid = send(notify_proxy, secret_prompt("one"), stream=True)
    wait_for(lambda: attachment_for(receiver, rid) is not None, what="the Slack message")
    post = next(p for p in receiver.on(HOOK) if rid.encode() in p.body)
    assert_no_secret(post.body)
    payload = post.json()
    assert payload["channel"] == "#gateway"
    assert payload["username"] == "Claude Nexus Proxy"
    attachment = attachment_for(receiver, rid)
    assert attachment is not None
    text = attachment["text"]
    assert ":bust_in_silhouette: User: Deploy step one: my key is sk-ant-api03-[redacted]" in text
    assert ":robot_face: Claude: Use the token sk-ant-oat01-[redacted] to log in." in text
    assert ":wrench: Bash: export PASS=[redacted]" in text
    assert ":wrench: Read: settings.py" in text
    assert attachment["title_link"] == f"https://dash.example.com/requests/{rid}"
    assert attachment["footer"].startswith(f"alpha | {MODEL} | Tokens: ")

    # the next requests of the same turn (tool results, the same prompt again) stay quiet
    before = len(slack_attachments(receiver))
    tool_result = [{"type": "tool_result", "tool_use_id": "toolu_1", "content": f"ok {PROMPT_KEY}"}]
    quiet = [send(notify_proxy, tool_result), send(notify_proxy, secret_prompt("one"))]
    excluded = send(notify_proxy, secret_prompt("for a quiet project"), project="quiet")
    wait_for(lambda: integration_counts(notify_proxy, "slack")["skipped"] >= 2, what="the quiet requests judged")
    new_turn = send(notify_proxy, secret_prompt("two"))
    wait_for(lambda: attachment_for(receiver, new_turn) is not None, what="the next turn's message")
    assert len(slack_attachments(receiver)) == before + 1
    for rid in (*quiet, excluded):
        assert attachment_for(receiver, rid) is None
    for post in receiver.on(HOOK):
        assert_no_secret(post.body)


def test_a_projects_credential_file_routes_or_mutes_its_messages(notify_proxy: str, receiver: Receiver) -> None:
    rid = send(notify_proxy, secret_prompt("team b"), project="teamb")
    muted = send(notify_proxy, secret_prompt("muted"), project="muted")
    wait_for(lambda: receiver.on("/project-hook"), what="the project's own webhook")
    wait_for(lambda: attachment_for(receiver, rid) is not None, what="the global webhook")
    (own,) = receiver.on("/project-hook")
    payload = own.json()
    assert payload["channel"] == "#teamb" and payload["username"] == "team b"
    assert [a["title"] for a in payload["attachments"]] == [f"Request {rid}"]
    assert "| acc_teamb |" in payload["attachments"][0]["footer"]
    assert_no_secret(own.body)
    later = send(notify_proxy, secret_prompt("after muted"))
    wait_for(lambda: attachment_for(receiver, later) is not None, what="a later message")
    assert attachment_for(receiver, muted) is None


def test_a_failed_request_posts_an_error_message(notify_proxy: str, receiver: Receiver, fake: FakeControl) -> None:
    fake.queue("error:400")
    req = urllib.request.Request(  # noqa: S310 (loopback)
        notify_proxy + "/v1/messages",
        data=orjson.dumps(
            {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": secret_prompt()}]}
        ),
        method="POST",
        headers={"content-type": "application/json", "x-api-key": API_KEY},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)  # noqa: S310
    rid = info.value.headers["x-request-id"]
    wait_for(lambda: attachment_for(receiver, rid) is not None, what="the error message")
    attachment = attachment_for(receiver, rid)
    assert attachment is not None and attachment["color"] == "danger"
    assert "Error: upstream answered 400 (status 400)" in attachment["text"]
    assert_no_secret(orjson.dumps(attachment))


def test_telemetry_gets_metrics_without_prompts(notify_proxy: str, receiver: Receiver, fake: FakeControl) -> None:
    ids = [send(notify_proxy, secret_prompt("telemetry")), send(notify_proxy, secret_prompt("t2"), stream=True)]

    def events() -> dict[str, dict[str, Any]]:
        return {e["requestId"]: e for post in receiver.on("/telemetry") for e in post.json()["events"]}

    wait_for(lambda: all(rid in events() for rid in ids), what="telemetry for both requests")
    for post in receiver.on("/telemetry"):
        assert_no_secret(post.body)
        assert b"Deploy step" not in post.body and b"What next" not in post.body
        assert post.json()["source"] == "nexus"
    for rid, streaming in zip(ids, (False, True), strict=True):
        event = events()[rid]
        assert event["projectId"] == "alpha" and event["model"] == MODEL
        assert event["status"] == 200 and event["outcome"] == "completed"
        assert event["streaming"] is streaming
        assert event["route"] == "/v1/messages" and event["requestType"] == "main"
        assert event["inputTokens"] > 0 and event["outputTokens"] > 0
        assert isinstance(event["durationMs"], int)
        assert "apiKey" not in event


def test_samples_are_written_masked(notify_proxy: str, samples_dir: Path, fake: FakeControl) -> None:
    rid = send(notify_proxy, secret_prompt("sample"), stream=True)
    wait_for(lambda: any(rid in p.name for p in samples_dir.glob("*.json")), what="the sample file")
    path = next(p for p in samples_dir.glob("*.json") if rid in p.name)
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}_main_stream_{rid}\.json", path.name)
    assert path.stat().st_mode & 0o077 == 0
    raw = path.read_bytes()
    assert_no_secret(raw)
    sample = orjson.loads(raw)
    headers = sample["request"]["headers"]
    assert "x-api-key" not in headers and "authorization" not in headers
    assert headers["train-id"] == "alpha"
    text = sample["request"]["body"]["messages"][0]["content"][0]["text"]
    assert text.startswith("Deploy step sample: my key is sk-ant-api03-[redacted], password=[redacted]")
    assert sample["response"]["status"] == 200
    assert sample["response"]["body"]["type"] == "message"
    for p in samples_dir.iterdir():
        assert_no_secret(p.read_bytes())


def test_a_burst_is_batched_rate_limited_and_counted(upstream_url: str, fake: FakeControl) -> None:
    with run_receiver() as receiver:
        env = {
            "CLAUDE_API_BASE_URL": upstream_url,
            "SLACK_WEBHOOK_URL": receiver.url + HOOK,
            "SLACK_BATCH_INTERVAL_MS": "50",
            "SLACK_BATCH_MAX": "3",
            "SLACK_QUEUE_SIZE": "5",
            "SLACK_MAX_POSTS_PER_MINUTE": "60",
            "METRICS_ENABLED": "true",
        }
        with run_proxy(env) as url:
            burst = 30
            for n in range(burst):
                send(url, f"burst prompt number {n}")
            counts: dict[str, int] = {}

            def settled() -> bool:
                counts.update(integration_counts(url, "slack"))
                return counts["queued"] == 0 and sum(counts[k] for k in ("sent", "dropped", "skipped")) == burst

            wait_for(settled, timeout_s=30, what="every burst request sent or dropped")
            posts = receiver.on(HOOK)
            sizes = [len(p.json()["attachments"]) for p in posts]
            assert max(sizes) <= 3  # batched: at most SLACK_BATCH_MAX per post
            assert sum(sizes) == counts["sent"]
            assert counts["dropped"] > 0  # the queue was full: dropped, not waited for
            assert counts["failed"] == 0
            # each post says how many were left out since the one before (the burst ended before the last post)
            said = [re.search(r"(\d+) more left out \(rate limit\)", p.json().get("text", "")) for p in posts]
            assert sum(int(m.group(1)) for m in said if m) == counts["dropped"]
            gaps = [b.at - a.at for a, b in itertools.pairwise(posts)]
            assert all(gap >= 0.9 for gap in gaps), gaps  # one post a second at most (60 per minute)
            metrics = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()  # noqa: S310
            dropped = re.search(r'nexus_integration_events_total\{result="dropped",sink="slack"\} (\S+)', metrics)
            assert dropped is not None and float(dropped.group(1)) == counts["dropped"]


def test_a_receiver_that_hangs_never_holds_a_response(upstream_url: str, fake: FakeControl) -> None:
    with run_receiver() as receiver:
        receiver.delays[HOOK] = receiver.delays["/telemetry"] = 2.0  # each post hangs 2 s
        env = {
            "CLAUDE_API_BASE_URL": upstream_url,
            "SLACK_WEBHOOK_URL": receiver.url + HOOK,
            "SLACK_BATCH_INTERVAL_MS": "10",
            "SLACK_MAX_POSTS_PER_MINUTE": "600",
            "TELEMETRY_ENDPOINT": receiver.url + "/telemetry",
            "TELEMETRY_INTERVAL_MS": "10",
        }
        with run_proxy(env) as url:
            send(url, "the first turn")
            wait_for(lambda: len(receiver.on(HOOK)) == 1, what="the first post, now hanging")
            for n in range(5):  # answered while both posts hang (a blocked response would take 2 s)
                send(url, f"turn {n} while the receiver hangs", stream=n % 2 == 1, timeout=1.0)
            wait_for(lambda: integration_counts(url, "slack")["sent"] == 6, what="every turn posted in the end")


def test_failed_deliveries_are_counted_and_never_block(upstream_url: str, tmp_path: Path, fake: FakeControl) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "SLACK_WEBHOOK_URL": dead + HOOK,
        "SLACK_BATCH_INTERVAL_MS": "20",
        "SLACK_MAX_POSTS_PER_MINUTE": "600",
        "TELEMETRY_ENDPOINT": dead + "/telemetry",
        "TELEMETRY_INTERVAL_MS": "20",
        "COLLECT_TEST_SAMPLES": "true",
        "TEST_SAMPLES_DIR": str(tmp_path / "samples"),
        "TEST_SAMPLES_MAX_FILES": "2",
        **FAST,
    }
    log = tmp_path / "proxy.log"
    with run_proxy(env, output=log) as url:
        for n in range(4):
            send(url, f"failing delivery {n} {PROMPT_KEY}")
        wait_for(lambda: integration_counts(url, "slack")["failed"] >= 1, timeout_s=20, what="a failed Slack post")
        wait_for(lambda: integration_counts(url, "telemetry")["failed"] == 4, timeout_s=20, what="failed telemetry")
        wait_for(lambda: integration_counts(url, "samples")["sent"] == 2, what="two samples")
        samples = integration_counts(url, "samples")
        assert samples["skipped"] == 2  # TEST_SAMPLES_MAX_FILES bounds the folder
        assert len(list((tmp_path / "samples").glob("*.json"))) == 2
        metrics = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()  # noqa: S310
        assert re.search(r'nexus_integration_events_total\{result="failed",sink="telemetry"\} 4\.0', metrics)
        # the requests themselves were answered all along, and stored nothing of the failure
        assert get_json(url + "/health")["stats"]["requests"] == 4
    text = log.read_text()
    assert "slack: post to the global webhook failed (unreachable" in text
    assert "WebhookSecretPath" not in text and "PromptSecretKey" not in text


def test_with_storage_the_message_links_the_stored_request(
    upstream_url: str, migrated_db: str, tmp_path: Path, fake: FakeControl
) -> None:
    with run_receiver() as receiver:
        env = {
            "CLAUDE_API_BASE_URL": upstream_url,
            "DATABASE_URL": migrated_db,
            "NEXUS_HOME": str(tmp_path),
            "SLACK_WEBHOOK_URL": receiver.url + HOOK,
            "SLACK_BATCH_INTERVAL_MS": "20",
            **FAST,
        }
        with run_proxy(env) as url:
            rid = send(url, secret_prompt("stored"), stream=True)
            wait_for(lambda: attachment_for(receiver, rid) is not None, what="the Slack message")
            attachment = attachment_for(receiver, rid)
            assert attachment is not None
            assert attachment["title_link"] == f"http://localhost:3001/requests/{rid}"
            assert "Deploy step stored: my key is sk-ant-api03-[redacted]" in attachment["text"]
            wait_for(lambda: _stored(url, rid), what="the stored row")
            row = get_json(f"{url}/api/requests/{rid}")
            assert row["request_type"] == "main" and row["project_id"] == "alpha"
            assert_no_secret(receiver.on(HOOK)[0].body)


def _stored(url: str, rid: str) -> bool:
    try:
        get_json(f"{url}/api/requests/{rid}")
    except urllib.error.HTTPError:
        return False
    return True


def test_recorded_claude_code_traffic_notifies_once_per_human_turn(
    notify_proxy: str, receiver: Receiver, fake: FakeControl
) -> None:
    """tool_loop (tests/fixtures/claude_code): six requests, two typed prompts; the four tool-result
    round trips stay quiet, and Claude Code's reminder blocks are not taken for the prompt."""
    root = Path(__file__).resolve().parent / "fixtures" / "claude_code" / "tool_loop"
    records = [orjson.loads(p.read_bytes()) for p in sorted(root.glob("[0-9][0-9][0-9][0-9]-*.json"))]
    assert fake.replies(*(r["response"] for r in records)) == len(records)
    skipped = integration_counts(notify_proxy, "slack")["skipped"]
    ids = []
    for rec in records:
        headers = {k: v for k, v in rec["headers"].items() if k not in {"host", "content-length", "accept-encoding"}}
        req = urllib.request.Request(  # noqa: S310 (loopback)
            notify_proxy + rec["path"],
            data=orjson.dumps(rec["body"]),
            method="POST",
            headers={**headers, "train-id": "cc-replay"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            resp.read()
            ids.append(resp.headers["x-request-id"])
    wait_for(lambda: attachment_for(receiver, ids[4]) is not None, what="the second turn's message")
    wait_for(lambda: integration_counts(notify_proxy, "slack")["skipped"] == skipped + 4, what="4 quiet round trips")
    replayed = [a for a in slack_attachments(receiver) if a["footer"].startswith("cc-replay |")]
    assert [a["title"] for a in replayed] == [f"Request {ids[0]}", f"Request {ids[4]}"]
    assert (
        ":bust_in_silhouette: User: TOOLS-1: inspect this project and write a summary to summary.md"
        in (replayed[0]["text"])
    )
    assert ":wrench: Bash: ls -la" in replayed[0]["text"] and ":wrench: Read: README.md" in replayed[0]["text"]
    assert ":bust_in_silhouette: User: TOOLS-2: now append a line 'reviewed' to summary.md" in replayed[1]["text"]
    assert "system-reminder" not in replayed[0]["text"] + replayed[1]["text"]
