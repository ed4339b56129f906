"""Pure pieces of the proxy: header rules, retry policy, body checks, request ids."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from granian.rsgi import ProtocolClosed

from nexus._core import NexusCoreError, analyze_request
from nexus.errors import ProxyError
from nexus.ids import new_request_id, request_id_unix_ms
from nexus.proxy import body as body_module
from nexus.proxy.body import ClientGone, UploadGuard, check_json_content_type, read_body
from nexus.proxy.deadline import Deadline
from nexus.proxy.headers import HOP_BY_HOP, PROXY_SELECTORS, client_response_headers, upstream_request_headers
from nexus.proxy.retry import RetryPolicy, is_retryable_status, parse_retry_after


def test_upstream_headers_keep_end_to_end_and_drop_the_rest() -> None:
    incoming = [
        ("host", "localhost:3000"),
        ("content-length", "12"),
        ("connection", "keep-alive, x-private"),
        ("x-private", "hop"),
        ("keep-alive", "timeout=5"),
        ("accept-encoding", "gzip"),
        ("anthropic-version", "2023-06-01"),
        ("anthropic-beta", "a-2025-01-01,b-2025-02-02"),
        ("x-api-key", "sk-ant-caller"),
        ("train-id", "proj"),
        ("msl-project-id", "proj"),
        ("x-train-account", "acct"),
        ("msl-account", "acct"),
        ("x-claude-code-session-id", "sess"),
    ]
    out = dict(upstream_request_headers(incoming))
    assert out == {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "a-2025-01-01,b-2025-02-02",
        "x-api-key": "sk-ant-caller",
        "x-claude-code-session-id": "sess",
    }


def test_hop_by_hop_and_selector_headers_are_the_standard_sets() -> None:
    assert HOP_BY_HOP == {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
        "trailer", "transfer-encoding", "upgrade",
    }  # fmt: skip
    assert PROXY_SELECTORS == {"train-id", "msl-project-id", "msl-train-id", "x-train-account", "msl-account"}
    for name in HOP_BY_HOP | PROXY_SELECTORS | {"host", "content-length", "accept-encoding", "expect"}:
        assert upstream_request_headers([(name, "v"), ("x-kept", "1"), ("anthropic-version", "2023-06-01")]) == [
            ("x-kept", "1"),
            ("anthropic-version", "2023-06-01"),
        ]
    for name in HOP_BY_HOP | {"content-length", "date", "server"}:
        assert client_response_headers([(name, "v"), ("x-kept", "1")], "r") == [("x-kept", "1"), ("x-request-id", "r")]


def test_response_headers_get_request_id_and_lose_framing() -> None:
    out = client_response_headers(
        [("content-length", "5"), ("transfer-encoding", "chunked"), ("request-id", "req_1"), ("retry-after", "3")],
        "rid",
    )
    assert out == [("request-id", "req_1"), ("retry-after", "3"), ("x-request-id", "rid")]


def test_retry_policy_bounds_attempts_budget_and_honours_retry_after() -> None:
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.1, max_delay_s=2.0, budget_s=5.0)
    for attempt in (1, 2):
        base = 0.1 * 2 ** (attempt - 1)
        delays = [policy.next_delay(attempt, elapsed_s=0.0) for _ in range(300)]
        assert all(d is not None and base <= d <= base * 1.5 for d in delays)
        assert max(delays) > base * 1.3 and min(delays) < base * 1.2  # type: ignore[operator]  # jittered
    assert policy.next_delay(3, elapsed_s=0.0) is None  # attempts spent
    assert policy.next_delay(1, elapsed_s=4.99) is None  # budget spent
    assert policy.next_delay(1, 0.0, retry_after_s=1.5) == 1.5  # never shorter than retry-after
    assert policy.next_delay(1, 0.0, retry_after_s=60) is None  # longer than we may hold the client
    assert policy.next_delay(1, 0.0, retry_after_s=2.0) == 2.0  # exactly as long as we may: waited
    assert policy.next_delay(1, 4.0, retry_after_s=1.0) == 1.0  # ends exactly at the budget: still in it
    assert policy.next_delay(1, 4.01, retry_after_s=1.0) is None
    with pytest.raises(AttributeError):
        policy.max_attempts = 5  # type: ignore[misc]  # one policy is shared by every request: frozen


def test_retryable_statuses() -> None:
    assert [s for s in (400, 401, 404, 413, 429, 500, 502, 503, 529) if is_retryable_status(s)] == [500, 502, 503, 529]


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:10 GMT", now=now) == 10.0
    assert parse_retry_after("garbage") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(" 7 ") == 7.0
    assert parse_retry_after("") is None
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:10 -0000", now=now) == 10.0  # no zone: UTC
    assert parse_retry_after("Thu, 01 Jan 2026 13:00:10 +0100", now=now) == 10.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:59:00 GMT", now=now) == 0.0  # already past
    assert 0.0 < parse_retry_after("Thu, 01 Jan 2099 00:00:00 GMT")  # type: ignore[operator]  # now by default


class _Chunks:
    def __init__(self, *chunks: bytes, pause_s: float = 0.0, closed_after: int | None = None) -> None:
        self.chunks = list(chunks)
        self.read = 0
        self.pause_s = pause_s
        self.closed_after = closed_after

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self.closed_after is not None and self.read >= self.closed_after:
            raise ProtocolClosed("RSGI transport is closed")
        if not self.chunks:
            raise StopAsyncIteration
        if self.pause_s:
            await asyncio.sleep(self.pause_s)
        self.read += 1
        return self.chunks.pop(0)


LIMITS = {"idle_s": 30.0, "total_s": 60.0}


async def test_body_limit_is_enforced_while_reading() -> None:
    src = _Chunks(b"a" * 600, b"b" * 600, b"c" * 600)
    with pytest.raises(ProxyError) as info:
        await read_body(src, None, limit=1000, **LIMITS)
    assert info.value.status == 413 and info.value.error_type == "request_too_large"
    assert src.read == 2  # stopped at the chunk that crossed the limit, the rest never read


async def test_declared_length_over_limit_is_refused_before_reading() -> None:
    src = _Chunks(b"x")
    with pytest.raises(ProxyError) as info:
        await read_body(src, "5000", limit=1000, **LIMITS)
    assert info.value.status == 413 and src.read == 0
    assert await read_body(_Chunks(b"ab", b"cd"), "4", limit=1000, **LIMITS) == b"abcd"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1,2]", "JSON object"),
        (b'{"messages": []}', "model"),
        (b'{"model": "", "messages": []}', "model"),
        (b'{"model": "m"}', "messages"),
        (b'{"model": "m", "messages": {}}', "messages"),
        (b'{"model": "m", "messages": [], "stream": "yes"}', "stream"),
    ],
)
def test_messages_body_checks(body: bytes, fragment: str) -> None:
    """The Rust analysis refuses what the proxy cannot forward, with a message for the client."""
    with pytest.raises(NexusCoreError) as info:
        analyze_request(body)
    assert fragment in str(info.value)


async def test_a_body_that_stops_arriving_is_refused_with_408() -> None:
    """Finding 3 of "Safe on a network": no body-read deadline let trickled uploads hold every slot."""
    with pytest.raises(ProxyError) as info:
        await read_body(_Chunks(b"a", b"b", b"c", pause_s=0.4), None, limit=1000, idle_s=0.2, total_s=60)
    assert info.value.status == 408 and "between two parts" in info.value.message
    with pytest.raises(ProxyError) as info:  # each part in time, the whole too slow
        await read_body(_Chunks(*[b"x"] * 20, pause_s=0.1), None, limit=1000, idle_s=0.3, total_s=0.5)
    assert info.value.status == 408 and "in all" in info.value.message
    assert await read_body(_Chunks(b"a", b"b", pause_s=0.05), None, limit=1000, idle_s=0.3, total_s=1) == b"ab"


async def test_an_aborted_upload_is_client_gone_not_an_error() -> None:
    with pytest.raises(ClientGone):
        await read_body(_Chunks(b"a", b"b", closed_after=1), "10", limit=1000, **LIMITS)
    with pytest.raises(ClientGone):  # Granian ends the iteration quietly: a short body is a client that left
        await read_body(_Chunks(b"ab"), "10", limit=1000, **LIMITS)


async def test_upload_guard_pulls_deadlines_in_only_while_crowded(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(body_module.time, "monotonic", lambda: now[0])
    guard = UploadGuard(limit=3, total_limit=5)
    first = [guard.start("10.0.0.1") for _ in range(3)]
    assert not any(u.tightened for u in first)  # at the limit, not over it
    async with Deadline(60) as deadline:
        first[0].attach(deadline)
        due = deadline.due
        now[0] += 2  # those three have been reading for two seconds
        fourth = guard.start("10.0.0.1")  # over the address's limit
        assert fourth.tightened and first[0].tightened and deadline.due < due - 50
    other = guard.start("10.0.0.2")
    assert not other.tightened  # another address is not crowded...
    crowd = [guard.start(f"10.0.1.{i}") for i in range(2)]
    assert crowd[-1].tightened  # ...until the worker is: 6 uploads > 5
    for upload in [*first, fourth, other, *crowd]:
        guard.finish(upload)
    assert not guard.start("10.0.0.1").tightened  # all done: back to normal


def test_content_type_check() -> None:
    check_json_content_type("application/json; charset=utf-8")
    check_json_content_type("Application/JSON")
    for bad in (None, "text/plain", "application/x-www-form-urlencoded", "text/plain; json", "application/jsonx"):
        with pytest.raises(ProxyError) as info:
            check_json_content_type(bad)
        assert info.value.status == 415


def test_request_ids_are_uuid7_and_ordered() -> None:
    ids = [new_request_id() for _ in range(50)]
    assert len(set(ids)) == 50
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    prefixes = [i[:13] for i in ids]  # the millisecond timestamp part never goes backwards
    assert prefixes == sorted(prefixes)


def test_request_ids_are_written_as_uuid_writes_them() -> None:
    for ms in (0, 1, 1_795_000_000_123, (1 << 48) - 1):
        rid = new_request_id(ms)
        assert rid == str(uuid.UUID(rid)) and len(rid) == 36  # lower-case hex, hyphens in place


def test_request_id_carries_its_start_time() -> None:
    rid = new_request_id(1_795_000_000_123)
    assert request_id_unix_ms(rid) == 1_795_000_000_123
    assert request_id_unix_ms(str(uuid.uuid4())) is None
    assert request_id_unix_ms("not-a-uuid") is None


async def test_deadline_fires_only_after_silence() -> None:
    # touched every 20 ms for 200 ms with a 60 ms idle limit: never fires
    async with Deadline(0.06) as idle:
        for _ in range(10):
            await asyncio.sleep(0.02)
            idle.touch()
    assert not idle.expired
    # then silence: it fires, as TimeoutError, about 60 ms after the last touch
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with Deadline(0.06):
            await asyncio.sleep(5)
    assert 0.05 <= loop.time() - started < 1.0


async def test_a_disarmed_deadline_never_fires() -> None:
    """The server limit stops once the response head is there (`open_exchange`): a stream runs on."""
    async with Deadline(0.05) as limit:
        limit.disarm()
        await asyncio.sleep(0.2)
    assert not limit.expired


async def test_deadlines_of_a_new_loop_tick_on_that_loop() -> None:
    """The last loop's wheel is remembered; a deadline entered on another loop must not use it."""

    async def fires() -> bool:
        try:
            async with Deadline(0.05):
                await asyncio.sleep(5)
        except TimeoutError:
            return True
        return False

    assert await fires()
    other = asyncio.new_event_loop()
    try:
        assert await asyncio.get_running_loop().run_in_executor(None, other.run_until_complete, fires())
    finally:
        other.close()


async def test_deadline_lets_other_cancellations_through() -> None:
    async def body() -> None:
        async with Deadline(10):
            await asyncio.sleep(5)

    task = asyncio.ensure_future(body())
    await asyncio.sleep(0.01)
    task.cancel()  # e.g. the client-disconnect watcher
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_missing_or_blank_anthropic_version_gets_the_default_and_a_given_one_is_kept() -> None:
    """The reference system added `anthropic-version`; a plain curl call must not get Anthropic's 400."""
    assert upstream_request_headers([("x-api-key", "k")]) == [("x-api-key", "k"), ("anthropic-version", "2023-06-01")]
    assert upstream_request_headers([("anthropic-version", " "), ("x-a", "1")]) == [
        ("x-a", "1"),
        ("anthropic-version", "2023-06-01"),
    ]
    assert upstream_request_headers([("anthropic-version", "2023-01-01"), ("x-a", "1")]) == [
        ("anthropic-version", "2023-01-01"),
        ("x-a", "1"),
    ]
    # a header named in Connection is dropped and the default still added
    assert upstream_request_headers([("connection", "x-hop"), ("x-hop", "1"), ("x-a", "2")]) == [
        ("x-a", "2"),
        ("anthropic-version", "2023-06-01"),
    ]
