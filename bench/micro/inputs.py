"""Real-size inputs: a Claude Code body from bench/traffic.py, a long stream from the fake upstream's
own encoder, a batch of storage rows built the way the writer builds them."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import orjson

from bench import traffic
from nexus._core import SseObserver, analyze_request
from nexus.fake_upstream.server import FakeAnthropic
from nexus.storage.records import ExchangeRecord
from tests.oracles.python_rows import to_row  # rows as Python values, for the encoder alone

#: A mid-session Claude Code body of about 50 KiB (system blocks, 20 tools, ~20 messages).
BODY = traffic.one_body(stream=True, kb=50)

_FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "claude_code"
#: A recorded Claude Code request body (third request of a session, about 50 KiB), as compact JSON: the
#: recording keeps the body parsed, so it is re-encoded the way a client sends it (no escaped non-ASCII).
RECORDED_BODY = orjson.dumps(orjson.loads((_FIXTURES / "tool_loop" / "0003-messages.json").read_bytes())["body"])


def long_stream() -> list[bytes]:
    """A long answer as network chunks: 2,000 words of text (one event a chunk, as a paced stream
    arrives) and a tool call with a 4 KB input, usage and stop events: about 700 events, 160 KB."""
    fake = FakeAnthropic()
    words = "Hello! This is a deterministic reply from the fake Anthropic API: naïve café ✓.".split()
    blocks: list[dict[str, object]] = [{"type": "text", "text": " ".join(words[i % len(words)] for i in range(2000))}]
    blocks.append({"type": "tool_use", "id": "toolu_01bench", "name": "Write", "input": {"content": "x" * 4000}})
    usage = {"input_tokens": 12000, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 11000}
    message = {
        "id": "msg_01bench",
        "type": "message",
        "role": "assistant",
        "model": traffic.MODEL,
        "content": blocks,
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 2100},
    }
    return fake._stream_events(message)


STREAM = long_stream()


def _rebuilt(stream: list[bytes]) -> bytes:
    observer = SseObserver()
    for chunk in stream:
        observer.feed(chunk)
    message = observer.message_json()
    assert message is not None
    return message


def _fixture_reply(name: str) -> bytes:
    return orjson.dumps(orjson.loads((_FIXTURES / name).read_bytes())["response"]["body"])


#: JSON replies as upstream sends them: a recorded one launching two background sub-agents (862 B), a
#: recorded compaction summary (1 KB), and the long answer of `STREAM` in one piece (about 20 KB).
REPLY_LAUNCH = _fixture_reply("subagents_background/0001-messages.json")
REPLY_COMPACTION = _fixture_reply("compact/0004-messages.json")
REPLY_LONG = _rebuilt(STREAM)


def storage_records(n: int = 200) -> list[ExchangeRecord]:
    """A writer batch: `n` records as the proxy hands them over, from a real corpus."""
    requests = traffic.corpus(12, stream_share=0.8)[:n]
    now = int(time.time() * 1_000_000)
    records = []
    for i, req in enumerate(requests):
        body = req.body.replace(traffic.TOKEN.encode(), b"a1b2c3")
        rec = ExchangeRecord(
            str(uuid.uuid4()), now + i, "bench", None, "POST", traffic.PATH, list(req.headers.items()), body
        )
        rec.response_status, rec.response_headers, rec.streamed = 200, [("request-id", "req_1")], req.stream
        rec.response_body = b'{"id":"msg_1","type":"message","content":[{"type":"text","text":"done"}]}'
        rec.analysis = analyze_request(body, strict=False)
        records.append(rec)
    return records


def storage_rows(n: int = 200) -> tuple[list[list[object]], list[list[object]]]:
    """A writer batch as Python rows (the Python builder's) and its distinct content blobs."""
    blobs: dict[bytes, tuple[int, bytes]] = {}
    rows = [to_row(rec, blobs) for rec in storage_records(n)]
    return rows, [[k, kind, raw, None] for k, (kind, raw) in blobs.items()]
