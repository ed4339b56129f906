"""The session a request says it is in, from the header or from `metadata.user_id` (older Claude
Code), and that it keeps two sessions opening with the same prompt apart."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from nexus._core import analyze_request
from nexus.conversations.linker import Linker
from nexus.conversations.service import link_request
from nexus.conversations.session import session_in_user_id, session_of

S1 = "6a1e49c3-0000-4000-8000-000000000001"
S2 = "6a1e49c3-0000-4000-8000-000000000002"
HEX = "783c3bb607fe3631b85552952c8acde5fbbc32423ddad2c31a11568e27f3a393"


def envelope(user_id: Any) -> bytes:
    return orjson.dumps({"model": "m", "max_tokens": 8, "metadata": {"user_id": user_id}})


@pytest.mark.parametrize(
    ("user_id", "want"),
    [
        (f"user_{HEX}_account__session_{S1}", S1),  # Claude Code 1.0
        (f"user_{HEX}_account_{S2}_session_{S1}", S1),  # 2.0, logged in
        (orjson.dumps({"device_id": HEX, "account_uuid": "", "session_id": S1}).decode(), S1),  # 2.1
        (f"user_{HEX}", None),
        ("{not json", None),
        ('{"session_id": 7}', None),
        ("x" * 600 + f"_session_{S1}", None),
        (f"user_{HEX}_session_{S1}; DROP TABLE", None),
    ],
)
def test_the_session_in_user_id(user_id: str, want: str | None) -> None:
    assert session_in_user_id(user_id) == want


def test_the_header_wins_and_a_body_without_metadata_has_no_session() -> None:
    legacy = envelope(f"user_{HEX}_account__session_{S1}")
    assert session_of({"x-claude-code-session-id": S2}, legacy) == S2
    assert session_of({}, legacy) == S1
    assert session_of({}, orjson.dumps({"model": "m"})) is None
    assert session_of({}, None) is None
    assert session_of({}, b"[1, 2]") is None
    assert session_of({}, orjson.dumps({"metadata": ["user_id"]})) is None


def body(session: str, *texts: str) -> bytes:
    roles = ["user", "assistant"]
    messages = [{"role": roles[n % 2], "content": t} for n, t in enumerate(texts)]
    user_id = f"user_{HEX}_account__session_{session}"
    return orjson.dumps({"model": "m", "max_tokens": 8, "messages": messages, "metadata": {"user_id": user_id}})


def test_two_sessions_opening_with_the_same_prompt_are_never_crossed() -> None:
    """Claude Code 1.0 and 2.0 name their session only in `metadata.user_id`. Session 1 opens, then
    session 2 with the same prompt; session 1's second turn continues session 1's first request, not
    the newer one of session 2 (before, with no session known, the newest candidate won)."""
    linker = Linker()
    decided = {}
    for n, (rid, session, texts) in enumerate(
        [
            ("00000000-0000-7000-8000-000000000001", S1, ("fix the bug",)),
            ("00000000-0000-7000-8000-000000000002", S2, ("fix the bug",)),
            ("00000000-0000-7000-8000-000000000003", S1, ("fix the bug", "done in lexer.rs", "and now the tests")),
            ("00000000-0000-7000-8000-000000000004", S2, ("fix the bug", "done in parser.rs", "thanks")),
        ]
    ):
        req = link_request(rid, "p", 1_700_000_000 + n, "/v1/messages", {}, analyze_request(body(session, *texts)))
        assert req.session == session
        link = linker.decide(req)
        linker.register(req, link)
        decided[rid[-1]] = link
    assert decided["3"].parent_request_id == "00000000-0000-7000-8000-000000000001"
    assert decided["3"].conversation_id == decided["1"].conversation_id
    assert decided["4"].parent_request_id == "00000000-0000-7000-8000-000000000002"
    assert decided["4"].conversation_id == decided["2"].conversation_id != decided["1"].conversation_id
