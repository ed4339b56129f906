"""Each phase of a proxied request (nexus/proxy/phases) on its own, with small real inputs.

The wire tests (test_proxy_wire, test_shutdown, test_auth_oauth, security/test_forwarding) prove the
phases together through real processes; these pin each phase's decisions so a one-line change fails
in a second: what the client gets when forwarding fails, what the record keeps for each ending, when
an OAuth token is refreshed and the request sent again, and that a disconnect cancels only while the
request runs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from nexus._core import analyze_request
from nexus.auth.credentials import Credential
from nexus.auth.service import Authorization, RequestAuthorizer
from nexus.conversations.index import LinkIndex
from nexus.conversations.linker import Linker
from nexus.conversations.service import ConversationService
from nexus.errors import ProxyError
from nexus.proxy import drain
from nexus.proxy.forward import OpenResponse
from nexus.proxy.phases import credential
from nexus.proxy.phases import record as recording
from nexus.proxy.phases.admit import check_selectors_readable
from nexus.proxy.phases.exchange import Admitted, Arrival, Exchange
from nexus.proxy.phases.forward import FAILURES, failure, open_exchange, watch_client
from nexus.proxy.phases.link import ANALYSIS_TYPE, link
from nexus.proxy.phases.relay import count, relay_exchange
from nexus.proxy.recording import SHUTDOWN_ERROR
from nexus.proxy.retry import RetryPolicy
from nexus.proxy.services import build_services
from nexus.proxy.stats import ProxyStats
from nexus.settings import Settings, load_settings, settings_markdown
from nexus.usage.counters import TokenCounters
from tests.test_forward_units import Head, ScriptedUpstream

FAST = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.01, budget_s=5.0)
BODY = b'{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}'


def oauth(token: str) -> Credential:
    return Credential(Path("acct.json"), "oauth", "acct-1", access_token=token, refresh_token="r")


def exchange(
    path: str = "/v1/messages", auth: Authorization | None = None, *, job: int | None = None, body: bytes = BODY
) -> Exchange:
    auth = auth or Authorization("proj", None, [("x-api-key", "sk-test")], None)
    headers = [("x-api-key", "sk-test"), ("user-agent", "t")]
    admitted = Admitted(auth, path, body, analyze_request(body, strict=True), headers, analysis_job=job)
    arrival = Arrival("0190aaaa-0000-7000-8000-000000000001", "POST", path, 1_700_000_000_000_000, 0.0, [])
    return Exchange.begin(arrival, admitted)


# --- forward: what the client gets when forwarding ends badly ---------------------------------------
def test_the_server_limit_is_a_504_in_anthropics_shape() -> None:
    ex = exchange()
    ended = failure(TimeoutError(), ex, server_timeout_s=2.5, drain_expired=False)
    assert isinstance(ended, ProxyError) and ended.status == 504
    body = orjson.loads(ended.body("r1"))
    assert body["type"] == "error" and body["error"]["type"] == "timeout_error"
    assert "2.5 s" in body["error"]["message"]
    assert (ex.record.outcome, ex.record.response_status) == ("timeout", 504)


def test_a_proxy_error_reaches_the_client_as_it_is_and_the_record_keeps_its_attempts() -> None:
    ex = exchange()
    ex.record.attempts = 1
    error = ProxyError(502, "Could not reach the upstream API after 3 attempt(s).", "api_error")
    error.attempts = 3
    assert failure(error, ex, server_timeout_s=1, drain_expired=False) is error
    record = ex.record
    assert (record.outcome, record.response_status, record.error, record.attempts) == (
        "proxy_error",
        502,
        error.message,
        3,
    )
    plain = exchange()
    plain.record.attempts = 2  # an error that did not count attempts keeps the ones the forward counted
    failure(ProxyError(504, "slow body", "timeout_error"), plain, server_timeout_s=1, drain_expired=False)
    assert plain.record.attempts == 2


async def cancelled_inside(ex: Exchange, *args: Any, drain_expired: bool = False) -> tuple[Any, int]:
    """Run `failure` inside a task cancelled the way the request task is; what it returned, and how many
    cancellations are still pending on the task afterwards."""
    started = asyncio.Event()

    async def request() -> tuple[Any, int]:
        try:
            started.set()
            await asyncio.sleep(10)
        except asyncio.CancelledError as exc:
            ended = failure(exc, ex, server_timeout_s=1, drain_expired=drain_expired)
            task = asyncio.current_task()
            assert task is not None
            return ended, task.cancelling()
        raise AssertionError("not cancelled")

    task = asyncio.ensure_future(request())
    await started.wait()
    task.cancel(*args)
    return await task


async def test_a_client_that_left_ends_the_request_quietly_and_uncancelled() -> None:
    ex = exchange()
    ex.disconnected = True
    ended, pending = await cancelled_inside(ex)
    assert ended is None and pending == 0  # the record phase after it still runs
    assert ex.record.outcome == "client_disconnected"


async def test_shutdown_before_the_head_is_a_503_the_sdks_retry() -> None:
    ex = exchange()
    ended, pending = await cancelled_inside(ex, drain.SHUTDOWN)
    assert isinstance(ended, ProxyError) and ended.status == 503 and ended.error_type == "overloaded_error"
    assert pending == 0
    assert (ex.record.outcome, ex.record.response_status, ex.record.error) == ("shutdown", 503, SHUTDOWN_ERROR)
    assert ex.outcome.error == "shutdown"


async def test_shutdown_after_the_head_is_marked_and_sends_nothing_more() -> None:
    ex = exchange()
    ex.outcome.status = 200  # the stream began: its own error event tells the client
    ended, pending = await cancelled_inside(ex, drain.SHUTDOWN)
    assert ended is None and pending == 0
    assert (ex.record.outcome, ex.record.response_status, ex.record.error) == ("shutdown", None, SHUTDOWN_ERROR)
    kept = exchange()
    kept.outcome.status, kept.outcome.error = 200, "stream_idle_timeout"
    await cancelled_inside(kept, drain.SHUTDOWN)
    assert kept.outcome.error == "stream_idle_timeout"  # what happened first is kept


async def test_a_cancellation_whose_message_was_lost_is_a_shutdown_once_the_drain_expired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(drain, "_deadline_passed", False)
    ex = exchange()
    ended, _ = await cancelled_inside(ex, drain_expired=True)
    assert isinstance(ended, ProxyError) and ended.status == 503
    other = exchange()
    ended, pending = await cancelled_inside(other)  # neither the client nor a shutdown: not ours
    assert isinstance(ended, asyncio.CancelledError) and pending == 1
    assert other.record.outcome == "completed"


def test_only_the_forwarding_failures_are_mapped() -> None:
    error = ValueError("a bug")
    ex = exchange()
    assert failure(error, ex, server_timeout_s=1, drain_expired=True) is error
    assert ex.record.outcome == "completed"
    assert not isinstance(error, FAILURES)


class Proto:
    def __init__(self) -> None:
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def client_disconnect(self) -> asyncio.Future[None]:
        return self.gone


async def test_a_disconnect_cancels_the_request_only_while_it_runs() -> None:
    ex = exchange()
    proto = Proto()

    async def request() -> None:
        watch_client(proto, ex)
        await asyncio.sleep(10)

    task = asyncio.ensure_future(request())
    await asyncio.sleep(0)
    proto.gone.set_result(None)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ex.disconnected

    done = exchange()
    late = Proto()

    async def finished() -> str:
        watch_client(late, done)
        done.done = True  # the request path ended; the client leaving now cancels nothing
        late.gone.set_result(None)
        await asyncio.sleep(0.01)
        return "finished"

    assert await finished() == "finished"
    assert not done.disconnected


# --- credential and forward: the OAuth replay --------------------------------------------------------
class Refreshing:
    """The authorizer's two OAuth calls (the real rule for `refreshable`), refreshing to a new token."""

    refreshable = staticmethod(RequestAuthorizer.refreshable)

    def __init__(self) -> None:
        self.refreshed = 0

    async def after_unauthorized(self, auth: Authorization) -> Authorization:
        self.refreshed += 1
        fresh = oauth("new")
        return Authorization(auth.project_id, fresh.account_id, fresh.auth_headers(), fresh)


def test_only_a_401_for_a_held_oauth_token_is_replayed() -> None:
    held = Authorization("p", "acct-1", oauth("old").auth_headers(), oauth("old"))
    api_key = Authorization("p", None, [("x-api-key", "k")], None)
    authorizer: Any = Refreshing()
    assert credential.replayable(authorizer, held, 401)
    assert not credential.replayable(authorizer, held, 403)
    assert not credential.replayable(authorizer, api_key, 401)


async def test_a_refused_oauth_token_is_refreshed_once_and_the_request_sent_again() -> None:
    ex = exchange(auth=Authorization("p", "acct-1", oauth("old").auth_headers(), oauth("old")))
    upstream: Any = ScriptedUpstream(Head(401), Head(200))
    authorizer: Any = Refreshing()
    opened = await open_exchange(
        ex,
        upstream,
        FAST,
        authorizer,
        None,
        server_timeout_s=5,
        head_timeout_s=5,
        on_retry=None,
    )
    assert opened.response.status == 200 and authorizer.refreshed == 1
    assert [dict(c[2])["authorization"] for c in upstream.calls] == ["Bearer old", "Bearer new"]
    assert upstream.log == ["open", "close", "open"]  # the refused answer was closed before the replay
    assert ex.record.attempts == 2
    again = exchange(auth=Authorization("p", "acct-1", oauth("old").auth_headers(), oauth("old")))
    twice: Any = ScriptedUpstream(Head(401), Head(401))
    opened = await open_exchange(
        again,
        twice,
        FAST,
        authorizer,
        None,
        server_timeout_s=5,
        head_timeout_s=5,
        on_retry=None,
    )
    assert opened.response.status == 401 and len(twice.calls) == 2  # once more, never a loop


async def test_the_server_limit_covers_waiting_for_the_head() -> None:
    ex = exchange()
    upstream: Any = ScriptedUpstream(None)  # the head never comes
    authorizer: Any = Refreshing()
    with pytest.raises(TimeoutError):
        await open_exchange(
            ex,
            upstream,
            FAST,
            authorizer,
            None,
            server_timeout_s=0.05,
            head_timeout_s=5,
            on_retry=None,
        )


# --- relay --------------------------------------------------------------------------------------
class JsonResponse:
    def __init__(self, status: int) -> None:
        self.status = status
        self.headers = {"content-type": "application/json", "request-id": "req_1"}

    def get_header(self, name: str) -> str | None:
        return self.headers.get(name)

    async def bytes(self) -> bytes:
        return b'{"type":"message"}'


class Client:
    def __init__(self) -> None:
        self.sent: list[tuple[int, list[tuple[str, str]], bytes]] = []

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.sent.append((status, headers, body))


class Request:
    def __init__(self) -> None:
        self.closed = 0

    async def __aexit__(self, *exc: object) -> None:
        self.closed += 1


async def test_the_relay_sends_the_answer_closes_the_response_and_counts_errors() -> None:
    stats = ProxyStats()
    for status in (200, 529):
        ex = exchange()
        ex.arrival.extra = [("access-control-allow-origin", "https://a.example")]
        request, client, response = Request(), Client(), JsonResponse(status)
        opened = OpenResponse(response, 1, request)  # type: ignore[arg-type]
        await relay_exchange(client, opened, ex, stats, idle_timeout_s=1, body_timeout_s=1)
        assert request.closed == 1 and ex.relayed is not None
        assert client.sent[0][0] == status and ex.outcome.status == status
        assert ("access-control-allow-origin", "https://a.example") in client.sent[0][1]
    assert (stats.streams, stats.upstream_errors) == (0, 1)


def test_the_relay_counts_streams_and_broken_answers() -> None:
    stats = ProxyStats()
    ex = exchange()
    ex.outcome.status, ex.outcome.streamed, ex.outcome.error = 200, True, "upstream_disconnected"
    count(stats, ex)
    assert (stats.streams, stats.upstream_errors) == (1, 1)


# --- link ---------------------------------------------------------------------------------------
async def test_the_analysis_workers_requests_are_never_a_conversation_turn() -> None:
    conversations = ConversationService(Linker(LinkIndex(100)), None)
    ex = exchange(job=7)
    await link(ex, conversations, {})
    assert ex.record.request_type == ANALYSIS_TYPE and ex.record.link is not None
    assert ex.record.link.request_type == ANALYSIS_TYPE and ex.record.link.conversation_id is None
    turn = exchange()
    await link(turn, conversations, {})
    assert turn.record.request_type != ANALYSIS_TYPE and turn.record.link is not None
    assert turn.record.analysis is not None
    off = exchange()
    await link(off, None, {})
    assert off.record.link is None and off.record.request_type is None


# --- record -------------------------------------------------------------------------------------
class Writer:
    def __init__(self) -> None:
        self.rows: list[Any] = []

    def submit(self, record: Any) -> None:
        self.rows.append(record)


ENDINGS = [
    (TimeoutError(), 0, ("timeout", 504, None)),
    (ProxyError(502, "Could not reach the upstream API.", "api_error"), 0, ("proxy_error", 502, "Could not")),
    ("disconnected", 0, ("client_disconnected", None, None)),
    (drain.SHUTDOWN, 0, ("shutdown", 503, SHUTDOWN_ERROR)),
    (drain.SHUTDOWN, 200, ("shutdown", 200, SHUTDOWN_ERROR)),
]


@pytest.mark.parametrize(("ending", "head", "stored"), ENDINGS)
async def test_the_stored_row_says_how_the_request_ended(ending: Any, head: int, stored: tuple[Any, ...]) -> None:
    ex = exchange()
    ex.outcome.status = head
    if isinstance(ending, BaseException):
        failure(ending, ex, server_timeout_s=1, drain_expired=False)
    else:
        ex.disconnected = ending == "disconnected"
        await cancelled_inside(ex, *([ending] if ending != "disconnected" else []))
    writer: Any = Writer()
    recording.store(ex.record, ex.outcome, ex.started, writer, None, None, set())
    assert writer.rows == [ex.record]
    outcome, status, error = stored
    assert (ex.record.outcome, ex.record.response_status) == (outcome, status)
    assert (ex.record.error or "").startswith(error or "") and (error is not None) == (ex.record.error is not None)
    assert ex.record.duration_ms is not None and ex.record.duration_ms >= 0


async def test_an_upstream_error_is_stored_as_one_and_a_completed_turn_feeds_the_linker() -> None:
    conversations = ConversationService(Linker(LinkIndex(100)), None)
    writer: Any = Writer()
    failed = exchange()
    await link(failed, conversations, {})
    failed.outcome.status, failed.outcome.response_body = 529, b'{"type":"error"}'
    failed.record.attempts = 3
    recording.store(failed.record, failed.outcome, failed.started, writer, conversations, None, set())
    assert (failed.record.outcome, failed.record.error) == ("upstream_error", "upstream answered 529 after 3 attempts")
    assert writer.rows == [failed.record]


def test_tokens_are_counted_for_messages_only() -> None:
    counters = TokenCounters()
    ex = exchange()
    ex.outcome.status = 200
    ex.outcome.response_body = orjson.dumps({"type": "message", "usage": {"input_tokens": 5, "output_tokens": 7}})
    recording.count_tokens(ex, counters, {})
    assert ex.tokens is not None and ex.tokens[:2] == (5, 7)
    other = exchange("/v1/messages/count_tokens")
    other.outcome.status, other.outcome.response_body = 200, ex.outcome.response_body
    recording.count_tokens(other, counters, {})
    assert other.tokens is None
    assert counters.projects["proj"].request_count == 1  # the count_tokens request was not counted


class Hub:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def finished(self, record: Any) -> None:
        self.seen.append((record.response_status, record.analysis is not None, record.duration_ms))


def test_with_storage_off_the_integrations_still_get_a_completed_record() -> None:
    ex = exchange()
    ex.outcome.status = 200
    hub: Any = Hub()
    recording.notify(ex, hub, stored=False)
    assert hub.seen[0][:2] == (200, True) and hub.seen[0][2] is not None
    stored = exchange()
    stored.outcome.status = 200
    recording.notify(stored, hub, stored=True)
    assert hub.seen[1] == (None, False, None)  # `store` completed it already; nothing is done twice


class Scope:
    method = "GET"

    def __init__(self, path: str, query: str, headers: dict[str, str]) -> None:
        self.path, self.query_string, self.headers = path, query, headers


def test_a_refusal_is_stored_with_its_reason_and_without_a_key_sent_in_the_url() -> None:
    error = ProxyError(400, "Client keys may not be sent in the URL; send them as x-api-key.")
    error.secret = "Sk-Secret"
    scope = Scope("/v1/models", "key=sk%2Dsecret&x=%C3%A9", {"train-id": "team-a"})
    record = recording.refusal_record(scope, "rid", 1_700_000_000_000_000, b"{}", error, "fallback")
    assert record.path == "/v1/models?key=[redacted]&x=é"
    assert (record.project_id, record.outcome, record.response_status) == ("team-a", "refused", 400)
    assert record.error == error.message and record.request_body == b"{}"
    bad = Scope("/v1/x", "", {"train-id": "no spaces allowed"})
    assert recording.refusal_record(bad, "r", 0, None, error, "fallback").project_id == "fallback"
    long = Scope("/v1/" + "a" * 5000, "", {})
    assert len(recording.refusal_record(long, "r", 0, None, error, None).path) == 2048


# --- admit --------------------------------------------------------------------------------------
class Headers(dict[str, str]):
    """Granian's headers: a value that is not ASCII is in `keys()` but not readable with `get`."""

    def __init__(self, readable: dict[str, str], unreadable: list[str]) -> None:
        super().__init__(readable)
        self.unreadable = unreadable

    def keys(self) -> list[str]:  # type: ignore[override]
        return [*super().keys(), *self.unreadable]


def test_a_selector_that_cannot_be_read_is_refused_not_ignored() -> None:
    with pytest.raises(ProxyError) as refused:
        check_selectors_readable(Headers({"x-api-key": "k"}, ["train-id"]))
    assert refused.value.status == 400 and "train-id" in refused.value.message
    check_selectors_readable(Headers({"x-api-key": "k"}, ["x-some-other"]))  # not a selector: no matter


class RequestHeaders(dict[str, str]):
    def items(self) -> list[tuple[str, str]]:  # type: ignore[override]
        return list(super().items())


class Upload:
    """Granian's request body: read in one call."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def __call__(self) -> bytes:
        return self.body


class Request2:
    client = "127.0.0.1:50000"

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> None:
        self.method, self.path, self.query_string = method, path, ""
        self.headers = RequestHeaders({"x-api-key": "sk-caller", **headers})
        if body:
            self.headers["content-length"] = str(len(body))


@pytest.fixture
def admission(tmp_path: Path) -> Any:
    from nexus.proxy.app import ProxyApp

    settings = load_settings(storage_enabled=False, credentials_dir=tmp_path, claude_api_base_url="http://127.0.0.1:9")
    return ProxyApp(settings).admission


async def admit(admission: Any, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> Any:
    request = Request2(method, path, {"content-type": "application/json", **headers}, body)
    return await admission.admit(request, Upload(body), path, method)


async def test_admission_passes_a_good_request_with_its_body_analysed_once(admission: Any) -> None:
    admitted = await admit(admission, "POST", "/v1/messages", {}, BODY)
    assert (admitted.target, admitted.body, admitted.analysis.model) == ("/v1/messages", BODY, "claude-sonnet-4-5")
    assert ("x-api-key", "sk-caller") in admitted.header_items and admitted.analysis_job is None
    counted = await admit(admission, "POST", "/v1/messages/count_tokens", {}, b"not json")
    assert counted.analysis is None  # only /v1/messages is refused for a body it cannot read
    lenient = await admit(admission, "POST", "/v1/messages/count_tokens", {}, b'{"no": "messages"}')
    assert lenient.analysis is not None  # read leniently: what /v1/messages would refuse is still analysed
    listed = await admit(admission, "GET", "/v1/models", {})
    assert listed.body is None and listed.analysis is None


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "fragment"),
    [
        ("DELETE", "/v1/messages", {}, b"", 405, "use POST"),
        ("TRACE", "/v1/models", {}, b"", 405, "is not forwarded"),
        ("POST", "/v1/messages", {"sec-fetch-site": "cross-site"}, BODY, 403, "Cross-site"),
        ("POST", "/v1/messages", {"origin": "https://evil.example"}, BODY, 403, "evil.example"),
        ("POST", "/v1/messages", {}, b'{"model": 1}', 400, ""),
    ],
)
async def test_admission_refuses_before_anything_goes_upstream(
    admission: Any, method: str, path: str, headers: dict[str, str], body: bytes, status: int, fragment: str
) -> None:
    with pytest.raises(ProxyError) as refused:
        await admit(admission, method, path, headers, body)
    assert refused.value.status == status and fragment in refused.value.message
    if status == 400:
        assert refused.value.body_read == body  # stored with the refusal


# --- services and settings ----------------------------------------------------------------------
def test_services_without_storage_are_the_upstream_alone_and_close() -> None:
    settings = load_settings(storage_enabled=False, claude_api_base_url="http://127.0.0.1:9")
    services = build_services(settings, storage_metrics=False)
    assert (services.writer, services.tracer, services.conversations, services.lookup_pool) == (None,) * 4
    loop = asyncio.new_event_loop()
    try:
        services.close(loop, can_run=True)
    finally:
        loop.close()


def test_durations_in_seconds_are_derived_not_settings() -> None:
    s = load_settings(
        storage_enabled=False,
        link_lookup_timeout_ms=250,
        storage_batch_interval_ms=40,
        proxy_server_timeout=700_000,
        claude_api_timeout=600_000,
        stream_idle_timeout_ms=90_000,
        shutdown_timeout_ms=12_000,
    )
    assert (s.link_lookup_timeout_s, s.storage_batch_interval_s) == (0.25, 0.04)
    assert (s.server_timeout_s, s.head_timeout_s, s.stream_idle_timeout_s) == (700.0, 600.0, 90.0)
    assert s.shutdown_timeout_s == 12.0
    derived = {name for name, value in vars(Settings).items() if isinstance(value, property) and name.endswith("_s")}
    assert {"link_lookup_timeout_s", "server_timeout_s", "head_timeout_s"} <= derived
    assert not derived & set(Settings.model_fields)
    table = settings_markdown()
    assert not [name for name in derived if f"`{name.upper()}`" in table]
    assert "`LINK_LOOKUP_TIMEOUT_MS`" in table  # the table is the one that names settings


@pytest.mark.parametrize("shared", ["off", "on"])
def test_services_with_storage_link_through_the_database_and_close_in_reverse(
    migrated_db: str, tmp_path: Path, shared: str
) -> None:
    from nexus.conversations.shared import SharedConversationService

    settings = load_settings(
        storage_enabled=True, database_url=migrated_db, nexus_home=tmp_path, link_shared=shared, proxy_workers=2
    )
    loop = asyncio.new_event_loop()
    try:
        services = build_services(settings, storage_metrics=False)
        assert services.writer is not None and services.lookup_pool is not None
        assert isinstance(services.conversations, SharedConversationService) == (shared == "on")
        assert services.writer._thread.is_alive()  # started: rows queue from the first request
        services.close(loop, can_run=True)
        assert not services.writer._thread.is_alive()  # flushed and stopped
    finally:
        loop.close()
