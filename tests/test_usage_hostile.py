"""Hostile usage values never break the usage API, the dashboard or `/token-stats`.

An attack pass found that one upstream reply's `usage` broke `/api/token-usage/*` (400 "a parameter was
refused by the database", for the whole 30-day default range), the overview and usage pages (500) and
that request's own page (500): sums were cast back to `bigint`, the 5-minute / 1-hour split was cast
from JSON text with `::bigint`, integers past 64 bits could not be written by orjson, and the request
page assumed `usage.cache_creation` was an object with both keys. Here every such shape is stored in a
real PostgreSQL (as the storage writer leaves it: the bigint columns clamped, the `usage` JSON as it
came) and read through a real proxy and a real dashboard process.
"""

from __future__ import annotations

import base64
import html
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import orjson
import psycopg
import pytest

from nexus._core import SseObserver
from nexus.api.routes import ApiRoutes
from nexus.errors import ProxyError
from nexus.proxy.relay import Outcome
from nexus.usage import service
from nexus.usage.counters import TokenCounters
from nexus.usage.counts import sql_token_count, token_count
from nexus.usage.repo import Filters
from tests.harness.control import FakeControl
from tests.harness.servers import run_dashboard, run_proxy
from tests.helpers import FAST, wait_for
from tests.usage_rows import insert_row

MAX = 2**63 - 1  # what the storage encoder clamps a count too large for bigint to
MIN = -(2**63)
BIG30 = "123456789012345678901234567890"
E300 = "15" + "0" * 299  # 1.5e300 as PostgreSQL's jsonb prints it back


@dataclass(frozen=True)
class Shape:
    """One stored row: its `usage` JSON as text, its bigint columns as storage writes them, what the
    5-minute / 1-hour split must count for it, and what its request page must show as odd."""

    name: str
    usage: str
    input_tokens: int = 10
    output_tokens: int = 5
    cache_creation: int = 0
    cache_read: int = 0
    split_5m: int = 0
    split_1h: int = 0
    odd: tuple[str, ...] = ()


def _split(five: str, one: str = "7") -> str:
    return (
        '{"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 8, '
        f'"cache_creation": {{"ephemeral_5m_input_tokens": {five}, "ephemeral_1h_input_tokens": {one}}}}}'
    )


def _cache_creation(value: str) -> str:
    return f'{{"input_tokens": 10, "output_tokens": 5, "cache_creation": {value}}}'


SHAPES = [
    Shape("sane", _split("30", "40"), input_tokens=100, output_tokens=10, cache_creation=70, split_5m=30, split_1h=40),
    Shape(
        "sane, no split",
        '{"input_tokens": 200, "output_tokens": 20, "cache_read_input_tokens": 500}',
        200,
        20,
        cache_read=500,
    ),
    Shape("int64 max", '{"input_tokens": 9223372036854775807, "output_tokens": 1}', MAX, 1),
    Shape("30 digits, clamped", f'{{"input_tokens": {BIG30}, "output_tokens": 2}}', MAX, 2, odd=(BIG30,)),
    Shape("5m fraction", _split("1.5"), cache_creation=8, split_1h=7, odd=("1.5",)),
    Shape("5m string", _split('"x"'), cache_creation=8, split_1h=7, odd=('"x"',)),
    Shape("5m 30 digits", _split(BIG30), cache_creation=8, split_1h=7, odd=(BIG30,)),
    Shape("5m negative", _split("-5"), cache_creation=8, split_1h=7, odd=("-5",)),
    Shape("5m boolean", _split("true"), cache_creation=8, split_1h=7, odd=("true",)),
    Shape("5m nested junk", _split('{"a": [1, {"b": null}]}'), cache_creation=8, split_1h=7, odd=('{"a"',)),
    Shape("5m 1.5e300", _split("1.5e300"), cache_creation=8, split_1h=7, odd=(E300[:12],)),
    Shape(
        "5m and 1h past int64",
        _split("9223372036854775808", "-9223372036854775809"),
        cache_creation=8,
        odd=("9223372036854775808", "-9223372036854775809"),
    ),
    Shape("5m whole float", _split("3.0"), cache_creation=8, split_5m=3, split_1h=7),
    Shape("only 5m", _cache_creation('{"ephemeral_5m_input_tokens": 10}'), split_5m=10),
    Shape("only 1h", _cache_creation('{"ephemeral_1h_input_tokens": 11}'), split_1h=11),
    Shape("cache_creation empty", _cache_creation("{}")),
    Shape("cache_creation string", _cache_creation('"x"'), odd=('"x"',)),
    Shape("cache_creation list", _cache_creation("[1, 2]"), odd=("[1,",)),
    Shape("cache_creation number", _cache_creation("5"), odd=("5",)),
    Shape("cache_creation null", _cache_creation("null")),
    Shape(
        "counts past 64 bits",
        f'{{"input_tokens": -9223372036854775809, "output_tokens": 1.5e300, "cache_read_input_tokens": {BIG30}}}',
        MIN,
        MAX,
        cache_read=MAX,
        odd=("-9223372036854775809", E300[:12], BIG30),
    ),
    Shape(
        "SSE 21-digit output",
        '{"input_tokens": 3, "output_tokens": 123456789012345678901}',
        3,
        MAX,
        odd=("123456789012345678901",),
    ),
    Shape(
        "huge int elsewhere", f'{{"input_tokens": 1, "output_tokens": 1, "server_tool_use": {{"n": {BIG30}}}}}', 1, 1
    ),
    Shape("usage a string", '"junk"', 1, 1, odd=('"junk"',)),
    Shape("usage a list", "[1, 2, 3]", 1, 1, odd=("[1, 2, 3]",)),
    Shape("usage a number", "42", 1, 1, odd=("42",)),
    Shape("usage JSON null", "null", 1, 1),
]


def expected() -> dict[str, int]:
    """The sums of every shape: the columns as stored, the split only where it is a token count."""
    return {
        "requests": len(SHAPES),
        "input_tokens": sum(s.input_tokens for s in SHAPES),
        "output_tokens": sum(s.output_tokens for s in SHAPES),
        "cache_creation_input_tokens": sum(s.cache_creation for s in SHAPES),
        "cache_read_input_tokens": sum(s.cache_read for s in SHAPES),
        "cache_creation_5m_input_tokens": sum(s.split_5m for s in SHAPES),
        "cache_creation_1h_input_tokens": sum(s.split_1h for s in SHAPES),
    }


def test_the_expected_sums_need_more_than_64_bits() -> None:
    sums = expected()
    assert sums["input_tokens"] > MAX and sums["output_tokens"] > 2**64  # orjson cannot write these
    assert (sums["cache_creation_5m_input_tokens"], sums["cache_creation_1h_input_tokens"]) == (43, 40 + 7 * 8 + 11)


@pytest.fixture
def hostile_db(migrated_db: str) -> tuple[str, dict[str, str], datetime]:
    """Every shape stored two minutes ago in project `hostile`; returns (url, name -> request id, now)."""
    now = datetime.now(UTC)
    ids = {}
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        for shape in SHAPES:
            ids[shape.name] = insert_row(
                conn,
                now - timedelta(minutes=2),
                project="hostile",
                account="acc-hostile",
                input_tokens=shape.input_tokens,
                output_tokens=shape.output_tokens,
                cache_creation=shape.cache_creation,
                cache_read=shape.cache_read,
                usage_json=shape.usage,
            )
    return migrated_db, ids, now


def _sums_of(row: dict[str, Any]) -> dict[str, int]:
    return {k: int(row[k]) for k in expected()}


async def test_every_query_sums_the_hostile_rows_exactly(hostile_db: tuple[str, dict[str, str], datetime]) -> None:
    db, _, now = hostile_db
    f = Filters(project_id="hostile")
    async with await psycopg.AsyncConnection.connect(db) as conn:
        assert _sums_of(await service.current_window(conn, f, now=now)) == expected()
        assert _sums_of(await service.current_window(conn, Filters(), now=now)) == expected()
        (grouped,) = await service.window_by(conn, "model", now=now)
        assert _sums_of(grouped) == expected()
        days = await service.daily_usage(conn, f, 2, now=now)
        assert {k: sum(int(d[k]) for d in days) for k in expected()} == expected()
        points = await service.rolling_series(conn, f, span=timedelta(hours=1), now=now)
        assert _sums_of(points[-1]) == expected()


#: JSON values the split may hold, and whether each is a token count (and which).
SPLIT_VALUES = [
    ("0", 0),
    ("30", 30),
    ("3.0", 3),
    ("1e3", 1000),
    (str(MAX), MAX),
    (str(MAX + 1), None),
    ("1.5", None),
    ("-5", None),
    ("-0", 0),
    ("1.5e300", None),
    ("1e-300", None),
    (BIG30, None),
    ('"7"', None),
    ('"x"', None),
    ("true", None),
    ("null", None),
    ("[7]", None),
    ('{"n": 7}', None),
]


@pytest.mark.parametrize(("text", "count"), SPLIT_VALUES)
def test_sql_and_python_agree_on_what_a_token_count_is(migrated_db: str, text: str, count: int | None) -> None:
    """The sums (SQL) and the request page (Python) read a stored value the same way."""
    assert token_count(json.loads(text)) == count
    with psycopg.connect(migrated_db) as conn:
        sql = f"SELECT {sql_token_count('v')} FROM (SELECT %s::jsonb AS v) AS s"  # noqa: S608 (constant SQL)
        row = conn.execute(sql, (text,)).fetchone()  # type: ignore[arg-type]
    assert row is not None and row[0] == count


async def test_a_stored_value_a_query_cannot_read_is_never_blamed_on_a_parameter(
    hostile_db: tuple[str, dict[str, str], datetime],
) -> None:
    """Were a query to meet a stored value it cannot read, the answer is a 500 with the cause logged,
    not a 400 telling the caller to change a parameter it never sent."""
    db, _, _ = hostile_db

    async def reads_a_count_as_bigint(pool: Any, _: str, query: dict[str, list[str]]) -> Any:
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT sum((usage ->> 'input_tokens')::bigint) FROM api_requests")
            return await cur.fetchone()

    api = ApiRoutes(db)
    api.route("/api/test-broken", reads_a_count_as_bigint)
    scope = SimpleNamespace(path="/api/test-broken", method="GET", query_string="")
    try:
        with pytest.raises(ProxyError) as raised:
            await api.handle(scope, SimpleNamespace(), "req-1")
    finally:
        await api.close()
    assert raised.value.status == 500 and "parameter" not in raised.value.message


# --- the JSON API, through a real proxy ---------------------------------------------------------------

API_FIELDS = {
    "totalRequests": "requests",
    "totalInputTokens": "input_tokens",
    "totalOutputTokens": "output_tokens",
    "cacheCreationInputTokens": "cache_creation_input_tokens",
    "cacheReadInputTokens": "cache_read_input_tokens",
    "cacheCreation5mInputTokens": "cache_creation_5m_input_tokens",
    "cacheCreation1hInputTokens": "cache_creation_1h_input_tokens",
}


def _api_sums(item: dict[str, Any]) -> dict[str, int]:
    return {API_FIELDS[k]: v for k, v in item.items() if k in API_FIELDS}


def fetch(
    url: str, path: str, *, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def get_json(url: str, path: str) -> tuple[int, Any]:
    """Parsed by the standard library, which keeps every digit of an integer (orjson reads one past 64
    bits as a float)."""
    status, body = fetch(url, path)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body[:500]  # not JSON: shown as it came in a failed assertion


def get_page(url: str, path: str) -> tuple[int, str]:
    status, body = fetch(url, path)
    return status, html.unescape(body.decode())


def test_usage_api_answers_exact_sums_over_hostile_rows(
    hostile_db: tuple[str, dict[str, str], datetime], upstream_url: str, tmp_path: Path
) -> None:
    db, _, _ = hostile_db
    want = expected()
    env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": db, "NEXUS_HOME": str(tmp_path), **FAST}
    with run_proxy(env) as url:
        for query in ("", "?projectId=hostile", "?window=10080"):
            status, current = get_json(url, "/api/token-usage/current" + query)
            assert status == 200, current
            assert _api_sums(current) == want
            assert current["totalTokens"] == want["input_tokens"] + want["output_tokens"]
        for query in ("?days=2", "?days=30&aggregate=true", "?projectId=hostile"):
            status, daily = get_json(url, "/api/token-usage/daily" + query)
            assert status == 200, daily
            assert {k: sum(_api_sums(d)[k] for d in daily["usage"]) for k in want} == want
        status, series = get_json(url, "/api/token-usage/time-series?hours=1&interval=15")
        assert status == 200, series
        assert _api_sums(series["points"][-1]) == want


# --- the dashboard ------------------------------------------------------------------------------------


def test_dashboard_pages_render_whatever_usage_holds(hostile_db: tuple[str, dict[str, str], datetime]) -> None:
    db, ids, _ = hostile_db
    want = expected()
    with run_dashboard({"DATABASE_URL": db}) as url:
        for path in ("/", "/usage", "/usage?project_id=hostile", "/usage?account_id=acc-hostile", "/requests"):
            status, page = get_page(url, path)
            assert status == 200, (path, page[:2000])
            if path != "/requests":
                assert f"{want['input_tokens']:,}" in page and f"{want['output_tokens']:,}" in page, path
                assert f"{want['cache_creation_1h_input_tokens']:,} 1h" in page, path
        wrong = {}
        for shape in SHAPES:
            status, page = get_page(url, f"/requests/{ids[shape.name]}")
            if status != 200:
                wrong[shape.name] = status
                continue
            marked = [text for text in shape.odd if not _marked_odd(page, text)]
            if marked or (not shape.odd and 'class="odd"' in page):
                wrong[shape.name] = f"odd values not marked as such: {marked or 'none expected'}"
        assert wrong == {}
        page = get_page(url, f"/requests/{ids['sane']}")[1]
        assert "30 5m" in page and "40 1h" in page
        page = get_page(url, f"/requests/{ids['only 5m']}")[1]
        assert "10 5m" in page and "\u2013 1h" in page
        page = get_page(url, f"/requests/{ids['huge int elsewhere']}")[1]
        assert BIG30 in page  # the raw usage JSON, every digit kept


def _marked_odd(page: str, text: str) -> bool:
    """`text` appears inside an element the page marks as odd (`class="odd"`)."""
    start = 0
    while (at := page.find('class="odd"', start)) != -1:
        end = page.find("</", at)
        if text in page[at:end]:
            return True
        start = at + 1
    return False


# --- /token-stats -------------------------------------------------------------------------------------


def _streamed(usage_start: str, usage_delta: str) -> Outcome:
    observer = SseObserver()
    observer.feed(
        (
            'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message",'
            f'"role":"assistant","model":"claude-sonnet-4-6","content":[],"usage":{usage_start}}}}}\n\n'
            'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
            f'"usage":{usage_delta}}}\n\n'
        ).encode()
    )
    return Outcome(status=200, streamed=True, observer=observer)


def _json(usage: str) -> Outcome:
    body = f'{{"type":"message","content":[{{"type":"tool_use","id":"t","name":"x","input":{{}}}}],"usage":{usage}}}'
    return Outcome(status=200, response_body=body.encode())


def test_token_counters_count_what_storage_stores() -> None:
    counters = TokenCounters()
    for _ in range(3):  # three u64-max counts: the storage columns hold int64 max for each
        counters.observe("p", _streamed('{"input_tokens":1}', '{"output_tokens":18446744073709551615}'))
    counters.observe("p", _json(f'{{"input_tokens": {BIG30}, "output_tokens": 1.5, "cache_read_input_tokens": "x"}}'))
    counters.observe("p", _json('{"input_tokens": 7, "output_tokens": true, "cache_creation_input_tokens": [1]}'))
    counters.observe("p", _json('{"input_tokens": -9223372036854775809, "output_tokens": 2.0}'))
    counters.observe("p", _json('{"input_tokens": 1e400, "output_tokens": 1}'))  # infinity, past a double
    stats = counters.snapshot("p")
    assert stats["requestCount"] == 7 and stats["errorCount"] == 0 and stats["toolCallCount"] == 4
    assert stats["outputTokens"] == 3 * MAX + 0 + 0 + 2 + 1
    assert stats["inputTokens"] == 3 + MAX + 7 + 0 + 0  # a negative count is no count (it would pull sums down)
    assert stats["cacheReadInputTokens"] == 0 and stats["cacheCreationInputTokens"] == 0


# --- the finding, end to end: poisoned replies through a real proxy -----------------------------------

STREAM_REPLY = "".join(
    f"event: {name}\ndata: {data}\n\n"
    for name, data in [
        (
            "message_start",
            '{"type":"message_start","message":{"id":"msg_s","type":"message","role":"assistant",'
            '"model":"claude-sonnet-4-6","content":[],"stop_reason":null,"usage":{"input_tokens":3,"output_tokens":1,'
            '"cache_creation":{"ephemeral_5m_input_tokens":1.5}}}}',
        ),
        ("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}'),
        ("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}'),
        ("content_block_stop", '{"type":"content_block_stop","index":0}'),
        (
            "message_delta",
            '{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":18446744073709551615}}',
        ),
        ("message_stop", '{"type":"message_stop"}'),
    ]
)
JSON_REPLY = (
    '{"id": "msg_p", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6", '
    '"content": [{"type": "text", "text": "x"}], "stop_reason": "end_turn", '
    '"usage": {"input_tokens": 9223372036854775807, "output_tokens": 1, '
    '"cache_creation": {"ephemeral_5m_input_tokens": "x"}}}'
)
HEADERS = {
    "content-type": "application/json",
    "anthropic-version": "2023-06-01",
    "x-api-key": "sk-ant-api03-x",
    "train-id": "poisoned",
}


@pytest.fixture
def poisoned_proxy(upstream_url: str, migrated_db: str, tmp_path: Path) -> Iterator[str]:
    env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path), **FAST}
    with run_proxy(env) as url:
        yield url


def test_poisoned_replies_leave_the_usage_api_and_token_stats_answering(poisoned_proxy: str, fake: FakeControl) -> None:
    url = poisoned_proxy
    request = orjson.dumps(
        {"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    )
    streamed = orjson.dumps({**orjson.loads(request), "stream": True})
    replies = [(request, JSON_REPLY, "application/json")] + [(streamed, STREAM_REPLY, "text/event-stream")] * 3
    for body, reply, kind in replies:
        fake.replies({"raw_base64": base64.b64encode(reply.encode()).decode(), "content_type": kind})
        status, _ = fetch(url, "/v1/messages", method="POST", body=body, headers=HEADERS)
        assert status == 200
    status, _ = fetch(url, "/v1/messages", method="POST", body=request, headers=HEADERS)  # a normal one
    assert status == 200

    def stored() -> bool:
        status, current = get_json(url, "/api/token-usage/current?projectId=poisoned")
        assert status == 200, current  # was 400 "A parameter was refused by the database: bigint out of range"
        return bool(current["totalRequests"] == 5)

    wait_for(stored, timeout_s=20, what="the five requests stored")
    _, current = get_json(url, "/api/token-usage/current?projectId=poisoned")
    assert current["totalInputTokens"] >= MAX + 9 and current["totalOutputTokens"] > 3 * MAX
    assert current["cacheCreation5mInputTokens"] == 0  # "x" and 1.5 are not token counts
    for path in ("/api/token-usage/daily?projectId=poisoned", "/api/token-usage/time-series?projectId=poisoned"):
        status, answer = get_json(url, path)
        assert status == 200, (path, answer)
    status, stats = get_json(url, "/token-stats?projectId=poisoned")
    assert status == 200, stats  # was a 500: orjson refused a counter past 64 bits
    assert stats["inputTokens"] == current["totalInputTokens"]
    assert stats["outputTokens"] == current["totalOutputTokens"]
