"""AI analysis end to end: recorded traffic stored through the proxy, analyses queued on /api/analyses,
real `nexus worker` processes asking the model through the gateway (the fake upstream answering the
analysis prompt), results in PostgreSQL, on the API and on the dashboard's conversation page."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import psycopg
import pytest

from nexus.analysis import marker
from nexus.analysis.prompt import SYSTEM_MARKER
from nexus.conversations.replay import load_recording
from tests.conftest import with_database
from tests.harness.control import FakeControl
from tests.harness.servers import run_dashboard, run_proxy
from tests.helpers import FAST, get_json, wait_for

FIXTURES = Path(__file__).parent / "fixtures" / "claude_code"
PROJECT = "analysis-payer"
CLIENT_KEY = "sk-ant-api03-analysis-test-key-0000000000000000000000000000000000000000"
ANALYSIS = {
    "summary": "The user had the assistant summarise a small project and then append a review line.",
    "goals": ["write summary.md", "append 'reviewed'"],
    "outcome": "Both goals were met.",
    "keyDecisions": ["read README.md and src/app.py first"],
    "problems": [],
    "suggestions": ["name the files to read up front"],
    "confidence": {"score": 0.9},
}


def analysis_rule(text: str, delay_ms: int = 0) -> dict[str, Any]:
    """The fake upstream answers requests carrying the analysis system prompt with `text`."""
    rule: dict[str, Any] = {
        "name": "analysis",
        "match": {"system_contains": SYSTEM_MARKER},
        "reply": {"message": {"content": [{"type": "text", "text": text}]}},
    }
    if delay_ms:
        rule["delay_ms"] = delay_ms
    return rule


def call(url: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    sent = {"content-type": "application/json", **(headers or {})}
    conn.request(method, path, body=data, headers=sent)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    try:
        return resp.status, orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return resp.status, raw.decode("utf-8", "replace")


@pytest.fixture(scope="module")
def analysis_db(database_admin_url: str, migrated_template: str) -> Iterator[str]:
    """One migrated database for this module's gateway (each test uses its own conversations)."""
    name = f"nexus_analysis_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"')
    try:
        yield with_database(database_admin_url, name)
    finally:
        with psycopg.connect(database_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def gateway(upstream_url: str, analysis_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "DATABASE_URL": analysis_db,
        "NEXUS_HOME": str(tmp_path_factory.mktemp("analysis-home")),
        "UPSTREAM_MAX_ATTEMPTS": "1",
        **FAST,
    }
    with run_proxy(env) as url:
        yield url


@contextmanager
def run_worker(env: dict[str, str], log: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`nexus worker` as its own process (polling fast, retrying fast), stopped with SIGTERM."""
    full = {
        **os.environ,
        "AI_WORKER_POLL_INTERVAL_MS": "30",
        "AI_ANALYSIS_RETRY_BASE_DELAY_MS": "10",
        "AI_ANALYSIS_RETRY_MAX_DELAY_MS": "50",
        **env,
    }
    sink = open(log, "ab") if log is not None else None
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nexus.cli", "worker"],
            env=full,
            stdout=sink,
            stderr=subprocess.STDOUT if sink is not None else None,
        )
    finally:
        if sink is not None:
            sink.close()
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def claude_worker_env(gateway: str, db: str) -> dict[str, str]:
    return {
        "DATABASE_URL": db,
        "AI_ANALYSIS_PROJECT_ID": PROJECT,
        "AI_ANALYSIS_PROXY_URL": gateway,
        "AI_ANALYSIS_API_KEY": CLIENT_KEY,  # no credential file for the project: the key passes through
    }


def replay(url: str, fake: FakeControl, scenario: str) -> str:
    """Send a recorded scenario through the gateway (the fake replaying its responses); its conversation id."""
    ids = []
    for rec in load_recording(FIXTURES / scenario):
        if rec.path.split("?")[0] == "/v1/messages":
            fake.replies({"status": rec.status, "body": rec.response})
        headers = {k: v for k, v in rec.headers.items() if k not in ("host", "content-length", "connection")}
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.request(rec.method, rec.path, body=rec.body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == rec.status, rec.file
        ids.append(resp.getheader("x-request-id"))
        conn.close()
    wait_for(lambda: all(call(url, "GET", f"/api/requests/{i}")[0] == 200 for i in ids), what="rows stored")
    conversations = {call(url, "GET", f"/api/requests/{i}")[1]["conversation_id"] for i in ids}
    assert len(conversations) == 1
    return str(conversations.pop())


def send_turn(url: str, text: str) -> str:
    """One new conversation through the gateway; its conversation id, once stored."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    body = {"model": "claude-sonnet-4-6", "max_tokens": 50, "messages": [{"role": "user", "content": text}]}
    headers = {"content-type": "application/json", "x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
    conn.request("POST", "/v1/messages", body=orjson.dumps(body), headers=headers)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 200
    request_id = resp.getheader("x-request-id")
    wait_for(lambda: call(url, "GET", f"/api/requests/{request_id}")[0] == 200, what="the stored turn")
    return str(call(url, "GET", f"/api/requests/{request_id}")[1]["conversation_id"])


def analysis_requests(fake: FakeControl, containing: str = "") -> list[dict[str, Any]]:
    """The analysis requests the fake upstream received (about a conversation holding `containing`)."""
    out = []
    for r in fake.requests():
        text = json.dumps(r.get("body"))
        if SYSTEM_MARKER in text and containing in text:
            out.append(r)
    return out


def analysis_of(url: str, conversation_id: str, branch: str = "main") -> dict[str, Any]:
    status, body = call(url, "GET", f"/api/analyses/{conversation_id}/{branch}")
    assert status == 200, body
    return dict(body)


def test_a_recorded_conversation_is_analysed_through_the_gateway(
    gateway: str, analysis_db: str, fake: FakeControl, tmp_path: Path
) -> None:
    conversation = replay(gateway, fake, "tool_loop")
    before = get_json(f"{gateway}/api/conversations/{conversation}")
    fake.script(analysis_rule("```json\n" + json.dumps(ANALYSIS, indent=2) + "\n```"))

    status, queued = call(gateway, "POST", "/api/analyses", {"conversationId": conversation, "branchId": "main"})
    assert status == 201 and queued["status"] == "pending", queued
    status, again = call(gateway, "POST", "/api/analyses", {"conversationId": conversation, "branchId": "main"})
    assert (status, again["message"], again["analysisId"]) == (
        200,
        "Analysis already in progress",
        queued["analysisId"],
    )
    assert analysis_of(gateway, conversation)["status"] == "pending"

    with run_worker(claude_worker_env(gateway, analysis_db)):
        wait_for(lambda: analysis_of(gateway, conversation)["status"] == "completed", 30, "the analysis")
    done = analysis_of(gateway, conversation)
    assert done["data"] == ANALYSIS  # the six keys and the unknown extra one, as the model sent them
    assert done["content"].startswith("## Summary\n\nThe user had the assistant summarise")
    assert done["attempts"] == 1 and done["retryCount"] == 0 and done["error"] is None
    assert done["provider"] == "claude" and done["tokenUsage"]["prompt"] > 0 and done["tokenUsage"]["completion"] > 0

    # the model read the transcript, rebuilt from the stored (content-addressed) bodies and replies
    (sent,) = analysis_requests(fake, "TOOLS-1: inspect this project")
    prompt = sent["body"]["messages"][0]["content"]
    for piece in ("TOOLS-1: inspect this project", "TOOLS-2: now append", "[tool use: Bash]", "Appended 'reviewed'"):
        assert piece in prompt, piece
    assert "<system-reminder>" not in prompt and "# Environment" not in prompt  # the client's injections
    assert marker.HEADER not in sent["headers"] and "msl-project-id" not in sent["headers"]
    assert sent["headers"]["x-api-key"] == CLIENT_KEY

    # stored as an analysis of the paying project, not as a turn of the conversation it read
    row = get_json(f"{gateway}/api/requests/{done['requestId']}")
    assert (row["request_type"], row["conversation_id"], row["project_id"]) == ("analysis", None, PROJECT)
    assert get_json(f"{gateway}/api/conversations/{conversation}")["request_count"] == before["request_count"]
    # `nexus relink` re-decides every stored link: the analysis request stays out (else, one message
    # with no parent, it would become a conversation of its own)
    subprocess.run(
        [sys.executable, "-m", "nexus.cli", "relink"], env={**os.environ, "DATABASE_URL": analysis_db}, check=True
    )
    row = get_json(f"{gateway}/api/requests/{done['requestId']}")
    assert (row["request_type"], row["conversation_id"]) == ("analysis", None)

    with run_dashboard({"DATABASE_URL": analysis_db, "PROXY_API_URL": gateway}) as dash:
        status, page = call(dash, "GET", f"/conversations/{conversation}")
        assert status == 200
        assert "The user had the assistant summarise a small project" in page
        assert "append &#39;reviewed&#39;" in page and 'data-analysis-status="completed"' in page
        form = urlencode({"branch_id": "main", "action": "regenerate"}).encode()
        form_type = {"content-type": "application/x-www-form-urlencoded"}
        status, _ = call(dash, "POST", f"/conversations/{conversation}/analysis", form, form_type)
        assert status == 303
        assert analysis_of(gateway, conversation)["status"] == "pending"  # queued again by the button
        cross = {**form_type, "sec-fetch-site": "cross-site", "origin": "https://evil.example"}
        status, _ = call(dash, "POST", f"/conversations/{conversation}/analysis", form, cross)
        assert status == 403


def test_a_reply_that_is_not_an_analysis_is_retried_then_failed_with_its_text(
    gateway: str, analysis_db: str, fake: FakeControl
) -> None:
    conversation = replay(gateway, fake, "multi_turn_continue_resume")
    prose = "Sorry, I would rather chat about the weather. \u0000 {not json"
    fake.script(analysis_rule(prose))
    assert call(gateway, "POST", "/api/analyses", {"conversationId": conversation, "branchId": "main"})[0] == 201
    with run_worker({**claude_worker_env(gateway, analysis_db), "AI_ANALYSIS_MAX_RETRIES": "2"}):
        wait_for(lambda: analysis_of(gateway, conversation)["status"] == "failed", 30, "the failure")
    failed = analysis_of(gateway, conversation)
    assert failed["attempts"] == 3 and failed["retryCount"] == 3  # the first try and two retries
    assert failed["rawResponse"] == prose.replace("\u0000", "\ufffd")
    assert failed["data"] is None and failed["completedAt"] is not None
    assert failed["error"].count("the reply is not a JSON object") == 3
    assert len(analysis_requests(fake, "TURN-3: minus 5?")) == 3

    # asking again queues the failed one again; a valid answer then completes it
    fake.script(analysis_rule(json.dumps(ANALYSIS)))
    status, body = call(gateway, "POST", "/api/analyses", {"conversationId": conversation, "branchId": "main"})
    assert status == 201 and body["status"] == "pending"
    with run_worker(claude_worker_env(gateway, analysis_db)):
        wait_for(lambda: analysis_of(gateway, conversation)["status"] == "completed", 30, "the second run")
    assert analysis_of(gateway, conversation)["data"]["outcome"] == "Both goals were met."


def test_two_workers_never_run_one_job_twice_and_the_watchdog_returns_a_stuck_one(
    gateway: str, analysis_db: str, fake: FakeControl
) -> None:
    ids = {}
    for n in range(20):
        text = f"JOB-{n:02d}-{uuid.uuid4().hex[:6]}: explain recursion"
        ids[text] = send_turn(gateway, text)
    assert len(set(ids.values())) == 20
    for conversation in ids.values():
        assert call(gateway, "POST", "/api/analyses", {"conversationId": conversation, "branchId": "main"})[0] == 201
    # and one job whose worker died ten minutes ago while holding it: the watchdog must give it back
    stuck = send_turn(gateway, f"STUCK-{uuid.uuid4().hex[:6]}: a job whose worker died")
    with psycopg.connect(analysis_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO conversation_analyses (conversation_id, status, attempts, claimed_by, claimed_at, "
            "claim_token_hash) VALUES (%s, 'processing', 1, 'dead-host:1', now() - interval '10 minutes', %s)",
            (stuck, marker.token_hash(marker.new_token())),
        )
    fake.script(analysis_rule(json.dumps(ANALYSIS), delay_ms=150))
    env = {
        **claude_worker_env(gateway, analysis_db),
        "AI_WORKER_MAX_CONCURRENT_JOBS": "3",
        "AI_WORKER_JOB_TIMEOUT_MINUTES": "1",  # the watchdog takes a job back after 1 + 1 minutes
    }
    everything = [*ids.values(), stuck]
    with run_worker(env), run_worker(env):
        wait_for(lambda: all(analysis_of(gateway, c)["status"] == "completed" for c in everything), 60, "21 jobs")
    returned = analysis_of(gateway, stuck)
    assert (returned["attempts"], returned["retryCount"]) == (2, 1)
    assert "returned to the queue by the watchdog" in returned["error"] and "dead-host:1" in returned["error"]
    with psycopg.connect(analysis_db) as conn:
        rows = conn.execute(
            "SELECT attempts, claimed_by FROM conversation_analyses WHERE conversation_id = ANY(%s::uuid[])",
            (list(ids.values()),),
        ).fetchall()
        stored = conn.execute(
            "SELECT count(*) FROM api_requests WHERE request_type = 'analysis' AND request_id = ANY("
            "SELECT request_id FROM conversation_analyses WHERE conversation_id = ANY(%s::uuid[]))",
            (list(ids.values()),),
        ).fetchone()
    assert len(rows) == 20 and all(attempts == 1 for attempts, _ in rows)
    assert len({worker for _, worker in rows}) == 2  # both workers took jobs
    sent = analysis_requests(fake, "JOB-")
    assert len(sent) == 20
    for text in ids:  # each conversation was sent to the model exactly once
        assert sum(text in r["body"]["messages"][0]["content"] for r in sent) == 1, text
    assert stored == (20,)


def test_the_analysis_mark_bypasses_nothing(gateway: str, analysis_db: str, fake: FakeControl) -> None:
    """A forged or stale mark is refused (and never reaches the upstream); the live one only keeps the
    request out of conversations; the header is never forwarded."""
    message = {"model": "claude-sonnet-4-6", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    base = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
    token = marker.new_token()
    with psycopg.connect(analysis_db, autocommit=True) as conn:
        job = conn.execute(
            "INSERT INTO conversation_analyses (conversation_id, branch_id, status, claim_token_hash, claimed_at) "
            "VALUES (%s, 'main', 'processing', %s, now()) RETURNING id",
            (str(uuid.uuid4()), marker.token_hash(token)),
        ).fetchone()[0]  # type: ignore[index]
    fake.reset()
    for forged in (f"{job}.{marker.new_token()}", f"{job + 1}.{token}", "1", "x" * 5000):
        status, body = call(gateway, "POST", "/v1/messages", message, {**base, marker.HEADER: forged})
        assert status == 403 and body["error"]["type"] == "permission_error", forged[:40]
    assert fake.requests() == []

    status, body = call(gateway, "POST", "/v1/messages", message, {**base, marker.HEADER: f"{job}.{token}"})
    assert status == 200
    (seen,) = fake.requests()
    assert marker.HEADER not in seen["headers"]
    with psycopg.connect(analysis_db, autocommit=True) as conn:
        conn.execute("UPDATE conversation_analyses SET status = 'completed' WHERE id = %s", (job,))
    status, _ = call(gateway, "POST", "/v1/messages", message, {**base, marker.HEADER: f"{job}.{token}"})
    assert status == 403  # the claim is over: its mark is dead
    wait_for(lambda: any(r["request_type"] == "analysis" for r in get_json(f"{gateway}/api/requests")["requests"]))
    marked = [r for r in get_json(f"{gateway}/api/requests")["requests"] if r["request_type"] == "analysis"]
    assert marked[0]["conversation_id"] is None


def test_bogus_marks_from_the_workers_address_do_not_lock_the_worker_out(
    upstream_url: str, analysis_db: str, fake: FakeControl, tmp_path: Path
) -> None:
    """Forged marks throttle their address (429), but the worker usually shares that address with local
    clients: a mark of a live claim must still pass, or anyone there could stop every analysis."""
    env = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "DATABASE_URL": analysis_db,
        "NEXUS_HOME": str(tmp_path / "home"),
        "AUTH_FAILURE_LIMIT": "2",
        **FAST,
    }
    message = {"model": "claude-sonnet-4-6", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    base = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
    token = marker.new_token()
    with psycopg.connect(analysis_db, autocommit=True) as conn:
        job = conn.execute(
            "INSERT INTO conversation_analyses (conversation_id, branch_id, status, claim_token_hash, claimed_at) "
            "VALUES (%s, 'main', 'processing', %s, now()) RETURNING id",
            (str(uuid.uuid4()), marker.token_hash(token)),
        ).fetchone()[0]  # type: ignore[index]
    with run_proxy(env) as url:
        statuses = [
            call(url, "POST", "/v1/messages", message, {**base, marker.HEADER: f"{job}.{marker.new_token()}"})[0]
            for _ in range(4)
        ]
        assert statuses[0] == 403 and statuses[-1] == 429, statuses  # the address is throttled now
        fake.reset()
        status, body = call(url, "POST", "/v1/messages", message, {**base, marker.HEADER: f"{job}.{token}"})
        assert status == 200, body
        assert len(fake.requests()) == 1
        for forged in (f"{job}.{marker.new_token()}", "garbage"):  # still throttled for anything else
            assert call(url, "POST", "/v1/messages", message, {**base, marker.HEADER: forged})[0] == 429
    with psycopg.connect(analysis_db, autocommit=True) as conn:
        conn.execute("UPDATE conversation_analyses SET status = 'failed' WHERE id = %s", (job,))


def test_api_checks_every_value_and_refuses_cross_site_posts(gateway: str) -> None:
    post = "/api/analyses"
    assert call(gateway, "POST", post, {"conversationId": "nope", "branchId": "main"})[0] == 400
    assert call(gateway, "POST", post, {"conversationId": str(uuid.uuid4()), "branchId": "a/b"})[0] == 400
    assert call(gateway, "POST", post, {"conversationId": str(uuid.uuid4()), "branchId": "main"})[0] == 404
    assert call(gateway, "POST", post, b"[not json")[0] == 400
    status, body = call(gateway, "POST", post, {"conversationId": str(uuid.uuid4())}, {"content-type": "text/plain"})
    assert status == 415
    status, body = call(
        gateway, "POST", post, {"conversationId": str(uuid.uuid4())}, {"origin": "https://evil.example"}
    )
    assert status == 403 and body["error"]["type"] == "permission_error"
    assert call(gateway, "GET", f"/api/analyses/{uuid.uuid4()}/main")[0] == 404
    assert call(gateway, "GET", "/api/analyses/not-a-uuid/main")[0] == 400
    assert call(gateway, "POST", f"/api/analyses/{uuid.uuid4()}/main/regenerate", {})[0] == 404
    too_long = {"conversationId": str(uuid.uuid4()), "branchId": "main", "customPrompt": "x" * 10_001}
    assert call(gateway, "POST", post, too_long)[0] == 400


def test_gemini_provider_against_a_fake_never_logs_its_key(
    gateway: str, analysis_db: str, upstream_url: str, fake: FakeControl, tmp_path: Path
) -> None:
    text = f"GEMINI-{uuid.uuid4().hex}: what is a monad?"
    conversation = send_turn(gateway, text)
    fake.script(analysis_rule(json.dumps(ANALYSIS)))
    assert call(gateway, "POST", "/api/analyses", {"conversationId": conversation, "branchId": "main"})[0] == 201
    key = "AIza-gemini-secret-key-0123456789"
    env = {
        "DATABASE_URL": analysis_db,
        "AI_ANALYSIS_PROVIDER": "gemini",
        "GEMINI_API_KEY": key,
        "GEMINI_API_URL": upstream_url + "/v1beta/models",
        "GEMINI_MODEL_NAME": "gemini-2.5-flash",
        "DEBUG": "true",
    }
    log = tmp_path / "worker.log"
    with run_worker(env, log):
        wait_for(lambda: analysis_of(gateway, conversation)["status"] == "completed", 30, "the Gemini analysis")
    done = analysis_of(gateway, conversation)
    assert (done["provider"], done["model"], done["data"]) == ("gemini", "gemini-2.5-flash", ANALYSIS)
    (sent,) = [r for r in fake.requests() if r["path"].startswith("/v1beta/")]
    assert sent["path"] == "/v1beta/models/gemini-2.5-flash:generateContent" and key not in sent["query"]
    assert sent["headers"]["x-goog-api-key"] == key
    assert text in sent["body"]["contents"][0]["parts"][0]["text"]
    output = log.read_text()
    assert "analysis worker" in output and key not in output
