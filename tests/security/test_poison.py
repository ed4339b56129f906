"""Finding 1 and 7 of "Safe on a network": one request or model reply holding `\\u0000`, a lone surrogate,
a number PostgreSQL cannot hold, deep nesting or a huge usage value made a batch PostgreSQL always
rejects: it was spooled, replay stopped at it, and 0 of the next 36 requests were stored. Here such
requests and replies are mixed with normal ones through a real proxy into a real PostgreSQL: every
request that got an `X-Request-ID` is readable at `/api/requests/{id}`, also after a restart."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import psycopg

from tests.harness.control import FakeControl
from tests.harness.servers import run_proxy
from tests.helpers import FAST, get_json, wait_for
from tests.security.wire import call

HEADERS = {"content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "sk-ant-api03-x"}
NORMAL = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})


def body(content: str, **extra: str) -> bytes:
    """A request body whose user text is `content` and whose extra fields are raw JSON text."""
    fields = "".join(f', "{k}": {v}' for k, v in extra.items())
    head = '{"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [{"role": "user", "content": '
    return f"{head}{content}}}]{fields}}}".encode("utf-8", "surrogatepass")


def message(text_json: str, usage: str = '{"input_tokens": 3, "output_tokens": 2}') -> str:
    return (
        '{"id": "msg_poison", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6", '
        f'"content": [{{"type": "text", "text": {text_json}}}], "stop_reason": "end_turn", "usage": {usage}}}'
    )


def stream(text_json: str) -> str:
    events = [
        (
            "message_start",
            '{"type":"message_start","message":{"id":"msg_s","type":"message","role":"assistant",'
            '"model":"claude-sonnet-4-6","content":[],"stop_reason":null,"usage":{"input_tokens":3,"output_tokens":1}}}',
        ),
        ("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}'),
        (
            "content_block_delta",
            f'{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":{text_json}}}}}',
        ),
        ("content_block_stop", '{"type":"content_block_stop","index":0}'),
        (
            "message_delta",
            '{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":18446744073709551615}}',
        ),
        ("message_stop", '{"type":"message_stop"}'),
    ]
    return "".join(f"event: {name}\ndata: {data}\n\n" for name, data in events)


def deep(levels: int) -> str:
    return "[" * levels + "1" + "]" * levels


#: (request body, the upstream's raw reply or None for the fake's own answer, content type)
POISON: list[tuple[bytes, str | None, str]] = [
    (body('"nul \\u0000 inside"'), None, "application/json"),
    (body('"lone \\ud800 surrogate"'), None, "application/json"),
    (body('"big"', metadata='{"n": 1e999999}'), None, "application/json"),
    (body('"tiny"', metadata='{"n": 1e-999999, "m": -1E+400}'), None, "application/json"),
    (body('"deep"', metadata='{"d": ' + deep(5000) + "}"), None, "application/json"),
    (body('"deep ok"', metadata='{"d": ' + deep(100) + "}"), None, "application/json"),
    (body('"raw nul \x00 byte"'), None, "application/json"),
    (NORMAL, message('"model says \\u0000 and \\ud800 and \\udfff"'), "application/json"),
    (NORMAL, message('"x"', '{"input_tokens": 1e999999, "output_tokens": 2}'), "application/json"),
    (
        NORMAL,
        message('"x"', '{"input_tokens": 99999999999999999999999999, "output_tokens": -5e30}'),
        "application/json",
    ),
    (NORMAL, message('"x"', '{"input_tokens": "many", "output_tokens": {"a": 1}}'), "application/json"),
    (NORMAL, message('"x"', '{"input_tokens": ' + deep(3000) + "}"), "application/json"),
    (NORMAL, '{"not": "a message", "n": 1e999999, "s": "\\u0000"', "application/json"),
    (NORMAL, "\x00\x01 not json at all \ud800", "application/json"),
    (orjson.dumps({**orjson.loads(NORMAL), "stream": True}), stream('"streamed \\u0000 nul"'), "text/event-stream"),
    (orjson.dumps({**orjson.loads(NORMAL), "stream": True}), stream('"lone \\ud800 in a delta"'), "text/event-stream"),
    (b'{"model": "m", \xed\xa0\x80 not json', None, "application/json"),
]


def _stored(url: str, request_id: str) -> dict[str, Any] | None:
    try:
        return get_json(f"{url}/api/requests/{request_id}")  # type: ignore[no-any-return]
    except OSError:
        return None


def test_poison_requests_and_replies_never_stop_storage(
    upstream_url: str, migrated_db: str, tmp_path: Path, fake: FakeControl
) -> None:
    env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path), **FAST}
    ids: list[str] = []
    poisoned: dict[str, int] = {}
    with run_proxy(env) as url:
        for round_ in range(2):
            for i, (request, reply, kind) in enumerate(POISON):
                if reply is not None:
                    raw = base64.b64encode(reply.encode("utf-8", "surrogatepass")).decode()
                    fake.replies({"raw_base64": raw, "content_type": kind})
                status, headers, _ = call(url, "/v1/messages", method="POST", body=request, headers=HEADERS)
                ids.append(headers["x-request-id"])
                poisoned[headers["x-request-id"]] = i
                for _ in range(2):  # normal traffic between poisons, every round
                    status, headers, _ = call(url, "/v1/messages", method="POST", body=NORMAL, headers=HEADERS)
                    assert status == 200
                    ids.append(headers["x-request-id"])
            del round_
        wait_for(lambda: all(_stored(url, rid) is not None for rid in ids), timeout_s=30, what="every request stored")
        health = get_json(url + "/health")
        assert health["storage"]["rows_quarantined"] == 0 and health["storage"]["dropped_rows"] == 0
        assert health["storage"]["spool_bytes"] == 0 and health["status"] == "healthy", health
        rows = {rid: _stored(url, rid) for rid in ids}
    with run_proxy(env) as url:  # a restart: everything still there, and it still stores
        assert all(_stored(url, rid) is not None for rid in ids)
        status, headers, _ = call(url, "/v1/messages", method="POST", body=NORMAL, headers=HEADERS)
        wait_for(lambda: _stored(url, headers["x-request-id"]) is not None, timeout_s=30, what="the next request")

    repairs = {poisoned[rid]: set(row["storage_repairs"] or []) for rid, row in rows.items() if rid in poisoned and row}
    assert repairs[0] == repairs[1] == {"content_repaired"}  # the user message, in the content store
    assert repairs[6] == {"nul_escaped", "request_not_json"}  # refused; text in the envelope, bytes kept
    assert "number_as_text" in repairs[2] and "number_as_text" in repairs[3] and "depth_limited" not in repairs[5]
    assert "surrogate_escaped" in repairs[7] and "nul_escaped" in repairs[7]
    assert "int_clamped" in repairs[9] and "usage_not_integer" in repairs[10]
    assert "not_json" in repairs[13] and "nul_escaped" in repairs[14]
    nul_reply = next(r for rid, r in rows.items() if poisoned.get(rid) == 7)
    assert nul_reply["response_body"]["content"][0]["text"] == "model says \\u0000 and \\ud800 and \\udfff"
    clamped = next(r for rid, r in rows.items() if poisoned.get(rid) == 9)
    assert clamped["input_tokens"] == 2**63 - 1 and float(clamped["usage"]["input_tokens"]) > 9e25
    lone = next(r for rid, r in rows.items() if poisoned.get(rid) == 15)  # the observer repaired the event
    assert lone["response_body"]["content"][0]["text"] == "lone \\ud800 in a delta"
    assert "surrogate_escaped" in repairs[15] and "request_not_json" in repairs[16]
    streamed = next(r for rid, r in rows.items() if poisoned.get(rid) == 14)
    assert streamed["output_tokens"] == 2**63 - 1 and "int_clamped" in repairs[14]
    with psycopg.connect(migrated_db) as conn:  # the original bytes of a repaired reply are kept
        raw = conn.execute(
            "SELECT response_raw FROM api_requests WHERE request_id = %s",
            (next(r for r in ids if poisoned.get(r) == 7),),
        ).fetchone()[0]  # type: ignore[index]
    assert bytes(raw) == message('"model says \\u0000 and \\ud800 and \\udfff"').encode()
