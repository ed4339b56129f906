"""Opening the upstream exchange (nexus/proxy/forward.py) against a scripted in-process upstream, and
the path rules (nexus/proxy/paths.py) case by case.

The wire tests (test_proxy_wire, security/test_forwarding) prove the same through real processes;
these pin each decision so a one-line change fails in a second (`make mutation`'s first guard).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pyreqwest.exceptions import ConnectError, RequestError

from nexus.errors import ProxyError
from nexus.proxy.forward import open_upstream
from nexus.proxy.paths import FORWARDED_METHODS, join_upstream, upstream_target
from nexus.proxy.retry import RetryPolicy

FAST = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.01, budget_s=5.0)


class Head:
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = headers or {}

    def get_header(self, name: str) -> str | None:
        return self.headers.get(name)


class Exchange:
    """One scripted attempt: a response head, an exception, or a head that never comes."""

    def __init__(self, outcome: Head | BaseException | None, log: list[str]) -> None:
        self.outcome = outcome
        self.log = log

    async def __aenter__(self) -> Head:
        self.log.append("open")
        if self.outcome is None:
            await asyncio.sleep(10)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        assert isinstance(self.outcome, Head)
        return self.outcome

    async def __aexit__(self, *exc: object) -> None:
        self.log.append("close")


class ScriptedUpstream:
    def __init__(self, *outcomes: Head | BaseException | None) -> None:
        self.outcomes = list(outcomes)
        self.log: list[str] = []
        self.calls: list[tuple[Any, ...]] = []

    def request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None) -> Exchange:
        self.calls.append((method, target, headers, body))
        return Exchange(self.outcomes.pop(0), self.log)


async def open_with(upstream: ScriptedUpstream, policy: RetryPolicy = FAST, head_timeout_s: float = 5.0) -> Any:
    return await open_upstream(upstream, policy, "POST", "/v1/messages", [("a", "b")], b"{}", head_timeout_s)  # type: ignore[arg-type]


async def test_a_good_answer_is_returned_at_once() -> None:
    upstream = ScriptedUpstream(Head(200))
    opened = await open_with(upstream)
    assert (opened.response.status, opened.attempts) == (200, 1)
    assert upstream.calls == [("POST", "/v1/messages", [("a", "b")], b"{}")]
    assert upstream.log == ["open"]  # left open for the caller to stream
    await opened.close()
    assert upstream.log == ["open", "close"]


@pytest.mark.parametrize("status", [400, 401, 404, 413, 429])
async def test_client_errors_and_rate_limits_are_not_retried(status: int) -> None:
    upstream = ScriptedUpstream(Head(status), Head(200))
    opened = await open_with(upstream)
    assert (opened.response.status, opened.attempts) == (status, 1)


@pytest.mark.parametrize("status", [500, 502, 503, 529])
async def test_server_errors_are_retried_and_each_failed_attempt_closed(status: int) -> None:
    upstream = ScriptedUpstream(Head(status), Head(status), Head(200))
    opened = await open_with(upstream)
    assert (opened.response.status, opened.attempts) == (200, 3)
    assert upstream.log == ["open", "close", "open", "close", "open"]


async def test_x_should_retry_false_is_honoured() -> None:
    upstream = ScriptedUpstream(Head(529, {"x-should-retry": "false"}), Head(200))
    opened = await open_with(upstream)
    assert (opened.response.status, opened.attempts) == (529, 1)
    upstream = ScriptedUpstream(Head(529, {"x-should-retry": "true"}), Head(200))
    assert (await open_with(upstream)).attempts == 2


async def test_out_of_attempts_the_client_gets_the_last_error() -> None:
    upstream = ScriptedUpstream(Head(500), Head(502), Head(503), Head(200))
    opened = await open_with(upstream)
    assert (opened.response.status, opened.attempts) == (503, 3)
    assert upstream.log == ["open", "close", "open", "close", "open"]


async def test_a_retry_after_longer_than_allowed_ends_the_retries() -> None:
    upstream = ScriptedUpstream(Head(529, {"retry-after": "60"}), Head(200))
    opened = await open_with(upstream)
    assert (opened.response.status, opened.attempts) == (529, 1)


async def test_retry_after_is_waited_for() -> None:
    policy = RetryPolicy(max_attempts=2, base_delay_s=0.001, max_delay_s=1.0, budget_s=5.0)
    upstream = ScriptedUpstream(Head(503, {"retry-after": "0.2"}), Head(200))
    loop = asyncio.get_running_loop()
    started = loop.time()
    opened = await open_with(upstream, policy)
    assert opened.attempts == 2
    assert loop.time() - started >= 0.2


@pytest.mark.parametrize("failure", [ConnectError("refused", {"causes": None}), RequestError("bad", {"causes": None})])
async def test_unreachable_upstream_is_retried_then_502(failure: BaseException) -> None:
    upstream = ScriptedUpstream(failure, Head(200))
    assert (await open_with(upstream)).attempts == 2
    upstream = ScriptedUpstream(failure, failure, failure, Head(200))
    with pytest.raises(ProxyError) as caught:
        await open_with(upstream)
    assert caught.value.status == 502
    assert caught.value.error_type == "api_error"
    assert caught.value.attempts == 3
    assert (
        caught.value.message
        == f"Could not reach the upstream API after 3 attempt(s): {type(failure).__name__}: {failure}."
    )


async def test_a_connect_timeout_of_the_client_library_is_retried() -> None:
    upstream = ScriptedUpstream(TimeoutError(), Head(200))
    assert (await open_with(upstream)).attempts == 2
    upstream = ScriptedUpstream(TimeoutError(), TimeoutError(), TimeoutError())
    with pytest.raises(ProxyError) as caught:
        await open_with(upstream)
    assert (
        caught.value.message == "Could not reach the upstream API after 3 attempt(s): connect timeout (TimeoutError)."
    )


async def test_each_retry_is_reported_with_its_reason() -> None:
    reasons: list[str] = []
    upstream = ScriptedUpstream(
        Head(529), Head(500), TimeoutError(), ConnectError("refused", {"causes": None}), Head(200)
    )
    policy = RetryPolicy(max_attempts=5, base_delay_s=0.001, max_delay_s=0.01, budget_s=5.0)
    opened = await open_upstream(upstream, policy, "POST", "/v1/messages", [], b"{}", 5.0, on_retry=reasons.append)  # type: ignore[arg-type]
    assert opened.attempts == 5
    assert reasons == ["overloaded", "server_error", "connect_timeout", "connection"]


async def test_no_head_within_the_timeout_is_504_without_retry() -> None:
    upstream = ScriptedUpstream(None, Head(200))
    with pytest.raises(ProxyError) as caught:
        await open_with(upstream, head_timeout_s=0.05)
    assert caught.value.status == 504
    assert caught.value.error_type == "timeout_error"
    assert caught.value.attempts == 1
    assert caught.value.message == "Upstream did not answer within 0.05 s."
    assert len(upstream.outcomes) == 1


@pytest.mark.parametrize(
    ("path", "query", "target"),
    [
        ("/v1/messages", "", "/v1/messages"),
        ("/v1/messages", "beta=true", "/v1/messages?beta=true"),
        ("/v1/models/claude-x_1.2~3", "", "/v1/models/claude-x_1.2~3"),
        ("/v1/a b", "", "/v1/a%20b"),
        ("/v1/a?b#c%d", "", "/v1/a%3Fb%23c%25d"),
        ("/v1/a;b=c:d@e!$&'()*+,", "", "/v1/a;b=c:d@e!$&'()*+,"),
        ("/v1/é", "", "/v1/%C3%A9"),
        ("/v1/.well-known", "", "/v1/.well-known"),
        ("/v1/a..b", "", "/v1/a..b"),
        ("/v1/.../x", "", "/v1/.../x"),
    ],
)
def test_upstream_target(path: str, query: str, target: str) -> None:
    assert upstream_target(path, query) == target


@pytest.mark.parametrize(
    "path",
    ["/v1/../x", "/v1/./x", "/v1/..", "/v1/.", "/v1/..;/x", "/v1/.;x/y", "/../v1", "/v1/a/../../b"],
)
def test_dot_segments_are_refused(path: str) -> None:
    with pytest.raises(ProxyError) as caught:
        upstream_target(path, "")
    assert (caught.value.status, caught.value.error_type) == (400, "invalid_request_error")
    assert caught.value.message == "The path may not contain '.' or '..' segments."


@pytest.mark.parametrize("path", ["/v1/a\\b", "/v1/a\x00b", "/v1/a\nb", "/v1/a\x1fb", "/v1/a\x7fb", "/v1/\\..\\x"])
def test_backslashes_and_control_characters_are_refused(path: str) -> None:
    with pytest.raises(ProxyError) as caught:
        upstream_target(path, "")
    assert (caught.value.status, caught.value.error_type) == (400, "invalid_request_error")
    assert caught.value.message == "The path may not contain backslashes or control characters."


def test_client_keys_in_the_url_are_refused() -> None:
    key = "cnp_live_" + "a" * 40
    encoded = "cnp%5Ftest_" + "b" * 40
    for path, query in ((f"/v1/{key}", ""), ("/v1/messages", f"key={key}"), ("/v1/messages", f"k={encoded}")):
        with pytest.raises(ProxyError) as caught:
            upstream_target(path, query)
        assert (caught.value.status, caught.value.error_type) == (400, "invalid_request_error")
        assert caught.value.message == "Client keys may not be sent in the URL; send them as x-api-key."


def test_join_upstream_stays_below_the_base() -> None:
    assert join_upstream("http://up:1/base", "/v1/messages") == "http://up:1/base/v1/messages"
    for bad in ("v1/messages", "//evil.com/v1", ""):
        with pytest.raises(ValueError) as caught:
            join_upstream("http://up:1", bad)
        assert str(caught.value) == f"not an origin-form request target: {bad!r}"
    with pytest.raises(ValueError) as caught:
        join_upstream("http://up:1", "x" * 100)
    assert str(caught.value) == f"not an origin-form request target: {'x' * 80!r}"


def test_forwarded_methods() -> None:
    assert frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}) == FORWARDED_METHODS
