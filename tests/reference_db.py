"""A reference-system database for the import tests: the schema of tests/fixtures/reference/schema.sql,
loaded with rows built from the recorded Claude Code traffic (tests/fixtures/claude_code) the way the
reference stored them, plus hostile rows, projects, analyses and credentials with tokens."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from nexus.conversations.replay import Recorded, load_recording

FIXTURES = Path(__file__).parent / "fixtures"
SCHEMA = FIXTURES / "reference" / "schema.sql"
TRAFFIC = FIXTURES / "claude_code"
SCENARIOS = sorted(p.name for p in TRAFFIC.iterdir() if (p / "expected.jsonl").exists())
#: The only request headers the reference stored (REFERENCE-SYSTEM.md 2.15).
STORED_HEADERS = ("user-agent", "x-forwarded-for", "x-real-ip", "content-type", "accept")
SECRET_TOKEN = "sk-ant-oat01-REFERENCE-SECRET-do-not-copy"
SECRET_REFRESH = "sk-ant-ort01-REFERENCE-REFRESH-do-not-copy"
CLIENT_KEY = "cnp_live_reference_client_key_do_not_copy"
WEBHOOK = "https://hooks.slack.example/services/T000/B000/REFERENCE-WEBHOOK-do-not-copy"
SECRETS = (SECRET_TOKEN, SECRET_REFRESH, CLIENT_KEY, WEBHOOK, "msl_" + "ab" * 32)


@dataclass(slots=True)
class Loaded:
    """What was put into the reference database."""

    #: request id -> (scenario, file, recorded request)
    requests: dict[str, tuple[str, str, Recorded]] = field(default_factory=dict)
    #: (scenario, conversation label) -> the reference's conversation id
    conversations: dict[tuple[str, str], str] = field(default_factory=dict)
    #: hostile rows: request id -> what the import must make of it ("failed" or "imported")
    hostile: dict[str, str] = field(default_factory=dict)
    chunked: str = ""  # the row whose response is only in streaming_chunks


def expected(scenario: str) -> dict[str, dict[str, Any]]:
    lines = (TRAFFIC / scenario / "expected.jsonl").read_text().splitlines()
    return {e["file"]: e for e in (orjson.loads(line) for line in lines if line.strip())}


def stored_by_reference(rec: Recorded) -> bool:
    """The reference stored `/v1/messages` exchanges that succeeded upstream, nothing else (2.15)."""
    return rec.path.split("?")[0] == "/v1/messages" and rec.status == 200


def load(dsn: str) -> Loaded:
    loaded = Loaded()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA.read_text())  # type: ignore[arg-type]
        for scenario in SCENARIOS:
            wanted = expected(scenario)
            for rec in load_recording(TRAFFIC / scenario):
                if not stored_by_reference(rec):
                    continue
                label = wanted[rec.file]["conversation"] or f"aux-{rec.file}"
                conversation = loaded.conversations.setdefault((scenario, label), str(uuid.uuid4()))
                request_id = str(uuid.uuid4())
                loaded.requests[request_id] = (scenario, rec.file, rec)
                insert_request(conn, request_id, scenario, rec, conversation)
        _hostile(conn, loaded)
        _others(conn)
    return loaded


def insert_request(
    conn: psycopg.Connection[Any], request_id: str, project: str, rec: Recorded, conversation: str, shift_s: float = 0
) -> None:
    """One exchange as the reference stored it (`shift_s` moves it in time: bench/import_reference.py)."""
    usage = (rec.response or {}).get("usage") or {}
    headers = {k: v for k, v in rec.headers.items() if k in STORED_HEADERS}
    body = orjson.loads(rec.body) if rec.body else None
    conn.execute(
        "INSERT INTO api_requests (request_id, project_id, timestamp, method, path, headers, body, api_key_hash, "
        "model, request_type, response_status, response_headers, response_body, input_tokens, output_tokens, "
        "total_tokens, cache_creation_input_tokens, cache_read_input_tokens, usage_data, duration_ms, "
        "tool_call_count, conversation_id, branch_id, message_count, account_id) "
        "VALUES (%s, %s, to_timestamp(%s), %s, %s, %s, %s, '', %s, 'inference', %s, %s, %s, %s, %s, %s, %s, %s, %s, "
        "1234, %s, %s, 'main', %s, 'acc_team_alpha')",
        (
            request_id,
            project,
            rec.timestamp + shift_s,
            rec.method,
            rec.path.split("?")[0],
            Jsonb(headers),
            Jsonb(body),
            (body or {}).get("model"),
            rec.status,
            Jsonb({"content-type": "application/json", "request-id": "req_upstream"}),
            Jsonb(rec.response),
            usage.get("input_tokens", 0),
            usage.get("output_tokens", 0),
            usage.get("input_tokens", 0) + usage.get("output_tokens", 0),
            usage.get("cache_creation_input_tokens", 0),
            usage.get("cache_read_input_tokens", 0),
            Jsonb(usage),
            sum(1 for b in (rec.response or {}).get("content", []) if b.get("type") == "tool_use"),
            conversation,
            len((body or {}).get("messages", [])),
        ),
    )


def _row(conn: psycopg.Connection[Any], project: str, at: str, *, path: str = "/v1/messages", **columns: Any) -> str:
    request_id = str(uuid.uuid4())
    names = ["request_id", "project_id", "timestamp", "method", "path", *columns]
    values = [request_id, project, at, "POST", path, *columns.values()]
    conn.execute(
        f"INSERT INTO api_requests ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})",  # noqa: S608
        values,
    )
    return request_id


SSE = (
    'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_chunked","type":"message",'
    '"role":"assistant","model":"claude-test","content":[],"stop_reason":null,"usage":{"input_tokens":11,'
    '"output_tokens":1}}}\n\n',
    'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    '"content_block":{"type":"text","text":""}}\n\n',
    'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    '"delta":{"type":"text_delta","text":"from chunks"}}\n\n',
    'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    '"usage":{"output_tokens":7}}\n\n',
    'event: message_stop\ndata: {"type":"message_stop"}\n\n',
)


def _hostile(conn: psycopg.Connection[Any], loaded: Loaded) -> None:
    """Rows no proxy would have written: each must be imported as well as it can be, or counted failed."""
    at = "2026-11-30T10:00:00Z"
    message = {"model": "claude-test", "messages": [{"role": "user", "content": "hostile"}]}
    loaded.hostile[_row(conn, "", at)] = "failed"  # no project
    loaded.hostile[_row(conn, "   ", at)] = "failed"
    loaded.hostile[_row(conn, "bell\x07project", at)] = "failed"
    loaded.hostile[_row(conn, "x" * 255, at)] = "imported"  # as long as the reference's column allows
    loaded.hostile[
        _row(
            conn,
            "hostile",
            at,
            headers=Jsonb(["not", "an", "object"]),
            body=Jsonb("just a string"),
            response_status=200,
            response_body=Jsonb([1, 2, 3]),
            usage_data=Jsonb({"input_tokens": "lots"}),
            input_tokens=-5,
        )
    ] = "imported"
    loaded.hostile[
        _row(
            conn,
            "hostile",
            at,
            path=f"/v1/messages?key={CLIENT_KEY}",
            headers=Jsonb({"authorization": f"Bearer {SECRET_TOKEN}", "x-api-key": CLIENT_KEY, "user-agent": "ua"}),
            body=Jsonb(message),
            response_status=200,
            response_headers=Jsonb({"set-cookie": f"session={SECRET_TOKEN}", "x-api-key": CLIENT_KEY}),
            response_body=Jsonb({"type": "message", "content": [], "usage": {"input_tokens": 3, "output_tokens": 4}}),
        )
    ] = "imported"
    loaded.hostile[_row(conn, "hostile", at, body=Jsonb(message), response_status=500, error="upstream exploded")] = (
        "imported"
    )
    loaded.chunked = _row(conn, "hostile", "2026-11-30T10:00:01Z", body=Jsonb(message), response_status=200)
    loaded.hostile[loaded.chunked] = "imported"
    for index, data in enumerate(SSE):
        conn.execute(
            "INSERT INTO streaming_chunks (request_id, chunk_index, timestamp, data) VALUES (%s, %s, now(), %s)",
            (loaded.chunked, index, data),
        )


def _others(conn: psycopg.Connection[Any]) -> None:
    cred = conn.execute(
        "INSERT INTO credentials (account_id, account_name, oauth_access_token, oauth_refresh_token, "
        "oauth_expires_at, oauth_scopes, account_email) VALUES ('acc_team_alpha', 'Team Alpha', %s, %s, now(), "
        "ARRAY['user:inference'], 'alpha@example.com') RETURNING id",
        (SECRET_TOKEN, SECRET_REFRESH),
    ).fetchone()
    assert cred is not None
    project = conn.execute(
        "INSERT INTO projects (project_id, name, default_account_id, slack_enabled, slack_webhook_url, "
        "slack_channel, system_prompt_enabled, system_prompt, api_key) VALUES ('tool_loop', 'Tool loop', %s, "
        "true, %s, '#alpha', true, %s, %s) RETURNING id",
        (cred[0], WEBHOOK, Jsonb([{"type": "text", "text": "Be brief."}]), SECRETS[-1]),
    ).fetchone()
    assert project is not None
    conn.execute("INSERT INTO projects (project_id, name) VALUES ('compact', 'Compact')")
    conn.execute(
        "INSERT INTO project_api_keys (project_id, api_key, key_prefix, key_suffix, name) "
        "VALUES (%s, %s, 'cnp_live', 'copy', 'ci')",
        (project[0], CLIENT_KEY),
    )


def add_analyses(dsn: str, loaded: Loaded) -> dict[str, str]:
    """Two analyses: one completed, of tool_loop's conversation, one pending. Returns conversation -> status."""
    done = loaded.conversations[("tool_loop", "A")]
    pending = loaded.conversations[("compact", "A")]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO conversation_analyses (conversation_id, branch_id, status, analysis_content, analysis_data, "
            "prompt_tokens, completion_tokens, completed_at) VALUES (%s, 'main', 'completed', '# Summary', %s, 100, "
            "20, now()), (%s, 'main', 'pending', NULL, NULL, NULL, NULL, NULL)",
            (done, Jsonb({"summary": "a tool loop", "outcome": "done"}), pending),
        )
    return {done: "completed", pending: "pending"}
