"""Dashboard auth tokens and display shaping, without a server."""

from __future__ import annotations

import pytest

from nexus.dashboard import live, render
from nexus.dashboard.app import _safe_next
from nexus.dashboard.auth import DashboardAuth, parse_cookies
from nexus.dashboard.live import LiveFeed, Subscriber
from nexus.security.access import host_name, is_loopback_peer


def test_session_tokens_are_signed_expiring_and_bound_to_the_key() -> None:
    auth = DashboardAuth("the-key-abcdef", session_hours=1)
    token = auth.issue_session(now=1000)
    session = auth.verify_session(token, now=1000 + 3599)
    assert session is not None and session.expires_at == 1000 + 3600
    assert auth.verify_session(token, now=1000 + 3600) is None  # expired
    assert DashboardAuth("another-key-123").verify_session(token, now=1000) is None  # rotated key: logged out
    payload, mac = token.split(".")
    assert auth.verify_session(payload + "." + mac[::-1], now=1000) is None
    assert auth.verify_session("garbage", now=1000) is None and auth.verify_session("a.b", now=1000) is None
    assert "the-key" not in token
    assert auth.issue_session(now=1000) != token  # a fresh nonce each time
    csrf = auth.csrf_for(session)
    assert auth.csrf_matches(session, csrf) and not auth.csrf_matches(session, csrf[:-1] + "x")
    other = auth.verify_session(auth.issue_session(now=1000), now=1000)
    assert not auth.csrf_matches(other, csrf)  # bound to its session


def test_key_comparison_and_header_access() -> None:
    auth = DashboardAuth("the-key-abcdef")
    assert auth.key_matches("the-key-abcdef")
    assert not auth.key_matches("the-key-abcde") and not auth.key_matches("") and not auth.key_matches(None)
    assert auth.access("10.0.0.5", {"x-api-key": "the-key-abcdef"}, {}).allowed
    assert auth.access("10.0.0.5", {"authorization": "Bearer the-key-abcdef"}, {}).by_header
    wrong = auth.access("10.0.0.5", {"x-api-key": "nope"}, {})
    assert not wrong.allowed and wrong.status == 401 and wrong.reason.startswith("Wrong API key")
    assert auth.access("127.0.0.1", {}, {}).reason == "login required"  # loopback is no exception with a key
    cookie = {"nexus_session": auth.issue_session()}
    assert auth.access("10.0.0.5", {}, cookie).session is not None


def test_loopback_policy_without_key() -> None:
    auth = DashboardAuth(None)
    assert not auth.key_required
    assert auth.access("127.0.0.1", {"host": "localhost:3001"}, {}).allowed
    assert auth.access("::1", {"host": "[::1]:3001"}, {}).allowed
    assert not auth.access("192.168.1.4", {"host": "localhost:3001"}, {}).allowed
    assert not auth.access("127.0.0.1", {"host": "localhost:3001", "x-real-ip": "1.2.3.4"}, {}).allowed
    assert not auth.access("127.0.0.1", {"host": "attacker.example"}, {}).allowed
    assert not auth.access(None, {"host": "localhost"}, {}).allowed
    assert is_loopback_peer("127.8.9.1") and not is_loopback_peer("not-an-ip")
    assert host_name("LOCALHOST:3001") == "localhost" and host_name("[::1]:1") == "[::1]"


def test_cookies_and_redirect_targets() -> None:
    assert parse_cookies("a=1; nexus_session=abc.def") == {"a": "1", "nexus_session": "abc.def"}
    assert parse_cookies(None) == {} and parse_cookies('bad"cookie') == {}
    assert _safe_next("/usage?x=1") == "/usage?x=1"
    for target in ("//evil.example", "https://evil.example", "/\\evil", "", None):
        assert _safe_next(target) == "/"


@pytest.mark.parametrize(
    ("content", "kinds"),
    [
        ("plain", ["text"]),
        (
            [{"type": "text", "text": "a"}, {"type": "tool_use", "name": "Bash", "input": {"cmd": "ls"}}],
            ["text", "tool_use"],
        ),
        ([{"type": "tool_result", "content": [{"type": "text", "text": "ok"}], "is_error": True}], ["tool_result"]),
        (
            [{"type": "thinking", "thinking": "hmm"}, {"type": "image", "source": {"data": "AAAA"}}],
            ["thinking", "image"],
        ),
        ([{"type": "server_tool_use", "name": "web_search", "input": {}}, {"type": "mystery"}], ["tool_use", "other"]),
        ({"weird": 1}, ["other"]),
    ],
)
def test_message_blocks(content: object, kinds: list[str]) -> None:
    assert [b["kind"] for b in render.blocks(content)] == kinds


def test_conversation_and_hidden_headers() -> None:
    conv = render.conversation(
        {"system": "sys", "messages": [{"role": "user", "content": "hi"}], "tools": [{"name": "Read"}]},
        {"type": "message", "content": [{"type": "text", "text": "hello"}]},
    )
    assert conv["system"][0]["text"] == "sys" and conv["tool_names"] == ["Read"]
    assert conv["messages"][0]["role"] == "user" and conv["answer"]["blocks"][0]["text"] == "hello"
    assert render.conversation(None, None)["messages"] == []
    assert render.shown_response_headers({"Set-Cookie": "x", "request-id": "r"}) == {"request-id": "r"}
    assert render.number(1234567) == "1,234,567" and render.number(None) == render.DASH
    line = render.sparkline([0, 5, 10])
    assert line["max"] == 10 and len(line["points"].split()) == 3


async def test_live_feed_drops_slow_and_vanished_viewers() -> None:
    feed = LiveFeed(None, lambda row: f"<tr>{row['request_id']}</tr>", interval_s=1)  # type: ignore[arg-type]
    slow, gone, fine, other = (Subscriber(None), Subscriber(None), Subscriber(None), Subscriber("elsewhere"))
    feed.subscribers |= {slow, gone, fine, other}
    for i in range(live.QUEUE_SIZE):
        feed._publish({"request_id": f"r{i}", "project_id": "p"})
        fine.queue.get_nowait()  # this one keeps up
    assert slow.queue.qsize() == live.QUEUE_SIZE and not slow.dropped
    feed._publish({"request_id": "one-too-many", "project_id": "p"})
    assert slow.dropped and slow not in feed.subscribers and slow.queue.get_nowait() is None  # its stream ends
    assert "one-too-many" in fine.queue.get_nowait()  # type: ignore[operator]
    assert other.queue.empty()  # another project's page got nothing
    gone.pulled_at -= live.STALE_SECONDS + 1  # its stream stopped being read
    feed.prune()
    assert gone.dropped and feed.subscribers == {fine, other}


def test_the_daily_table_rows_are_escaped_and_formatted_like_the_template() -> None:
    """/usage writes its daily table in one pass (`render.daily_rows`, ~5,600 rows at 1,000,000 stored
    requests): hostile names are escaped, counts past 64 bits and missing values shown as elsewhere."""
    from datetime import date
    from decimal import Decimal

    from nexus.dashboard.render import daily_rows

    html = str(
        daily_rows(
            [
                {
                    "date": date(2026, 3, 1),
                    "account_id": "<b>acc</b>",
                    "project_id": 'p"1',
                    "model": None,
                    "requests": 1234,
                    "input_tokens": Decimal(2**70),
                    "output_tokens": 0,
                    "cache_read_input_tokens": None,
                    "cache_creation_input_tokens": 5,
                    "cost_usd": 1.5,
                    "unpriced_requests": 2,
                }
            ]
        )
    )
    assert "<b>" not in html and "&lt;b&gt;acc&lt;/b&gt;" in html and "p&#34;1" in html
    assert "<td>2026-03-01</td>" in html and "<td>\u2013</td>" in html  # no model: a dash
    assert f'<td class="n">{2**70:,}</td>' in html and '<td class="n">1,234</td>' in html
    assert "$1.50 + 2 unpriced" in html
    assert daily_rows("not rows") == ""
