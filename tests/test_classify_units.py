"""What kind of request a body is (`nexus/conversations/classify.py`), one rule at a time.

The type is stored with every request and decides whether it is linked at all: a compaction that
passed for a main turn would start no `compact_` segment, a title request that passed for one would
open a conversation of its own. Bodies are real Claude Code shapes analysed by the Rust core; the
stored type names are the API's (`request_type` in `/api/requests`), so they are pinned as text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from nexus._core import analyze_request
from nexus.conversations.classify import LINKED_TYPES, classify
from tests.test_linker import assistant, system, text, user

COMPACT_TURN = (
    "CRITICAL: Respond with TEXT ONLY. Do NOT call any tools.\n\n"
    "Your task is to create a detailed summary of the conversation so far"
)


def facts(messages: list[dict[str, Any]], *, subagent: bool = False, tools: bool = True, sys: Any = None) -> Any:
    body: dict[str, Any] = {"model": "claude-opus-5-5", "max_tokens": 64, "messages": messages}
    body["system"] = system(subagent) if sys is None else sys
    if tools:
        body["tools"] = [{"name": "Bash"}]
    return analyze_request(orjson.dumps(body))


@dataclass
class Facts:
    """For shapes a body cannot give directly (e.g. a marker in the last user turn of a prefill)."""

    kept_roles: bytes = b"u"
    is_subagent: bool = False
    has_tools: bool = True
    system_head: str = ""
    first_user_head: str = "hello"
    last_user_head: str = "hello"


def test_the_stored_type_names() -> None:
    assert classify("/v1/messages", facts([user("hello")])) == "main"
    assert classify("/v1/messages", facts([user("hello")], subagent=True)) == "subagent"
    assert classify("/v1/messages", facts([user("hi"), assistant(text("a")), user(COMPACT_TURN)])) == "compaction"
    assert classify("/v1/messages/count_tokens", facts([user("hello")])) == "count_tokens"
    assert classify("/v1/models", None) == "auxiliary"
    assert sorted(LINKED_TYPES) == ["compaction", "main", "subagent"]


def test_the_route_ignores_the_query_string() -> None:
    f = facts([user("hello")])
    assert classify("/v1/messages?beta=true", f) == "main"
    assert classify("/v1/messages/count_tokens?beta=true", f) == "count_tokens"
    assert classify("/v1/messages/count_tokens?beta=true", None) == "count_tokens"


def test_other_routes_and_unparsed_bodies_are_auxiliary() -> None:
    f = facts([user("hello")])
    assert classify("/v1/models", f) == "auxiliary"
    assert classify("/v1/messages/batches", f) == "auxiliary"
    assert classify("/api/hello", f) == "auxiliary"
    assert classify("/v1/messages", None) == "auxiliary"  # not JSON: nothing to link


@pytest.mark.parametrize(
    "last",
    [
        "CRITICAL: Respond with TEXT ONLY. Do NOT call any tools.",
        "Your task is to create a detailed summary of the conversation so far, paying attention to ...",
        COMPACT_TURN,
    ],
)
def test_either_compaction_marker_in_the_last_user_turn_is_a_compaction(last: str) -> None:
    f = facts([user("hi"), assistant(text("hello")), user(last)])
    assert classify("/v1/messages", f) == "compaction"
    assert classify("/v1/messages", f, agent_id="a1") == "compaction"  # a sub-agent compacts too


def test_a_marker_in_an_earlier_turn_is_not_a_compaction() -> None:
    f = facts([user(COMPACT_TURN), assistant(text("summary")), user("thanks, go on")])
    assert classify("/v1/messages", f) == "main"


def test_the_summarizer_system_prompt_of_older_clients_is_a_compaction() -> None:
    old = "You are a helpful AI assistant tasked with summarizing conversations."
    f = facts([user("hi"), assistant(text("hello")), user("Summarise please")], sys=old)
    assert classify("/v1/messages", f) == "compaction"


def test_a_history_ending_in_an_assistant_turn_is_not_a_compaction() -> None:
    """A prefilled reply continues a turn; the markers in the user turn before it do not make it one."""
    prefill = Facts(kept_roles=b"uau", last_user_head=COMPACT_TURN)
    assert classify("/v1/messages", prefill) == "compaction"
    prefill.kept_roles = b"uaua"
    assert classify("/v1/messages", prefill) == "main"
    prefill.last_user_head, prefill.system_head = "go on", "You are a helpful AI assistant tasked with summarizing"
    assert classify("/v1/messages", prefill) == "main"
    prefill.system_head += " conversations."
    assert classify("/v1/messages", prefill) == "main"


def test_session_title_generation_is_auxiliary() -> None:
    title = [user("<session>\nTURN-ONE hello\n</session>\n\nWrite a 5-10 word title ...")]
    assert classify("/v1/messages", facts(title, tools=False)) == "auxiliary"
    # the same text with tools, or after a reply, is somebody's real turn
    assert classify("/v1/messages", facts(title, tools=True)) == "main"
    later = [user("<session> notes"), assistant(text("ok")), user("<session> again")]
    assert classify("/v1/messages", facts(later, tools=False)) == "main"
    assert classify("/v1/messages", facts([user("session title please")], tools=False)) == "main"


def test_the_quota_probe_is_auxiliary() -> None:
    assert classify("/v1/messages", facts([user("quota")])) == "auxiliary"
    assert classify("/v1/messages", facts([user("  Quota\n")])) == "auxiliary"
    assert classify("/v1/messages", facts([user("quota left?")])) == "main"


def test_a_sub_agent_is_known_by_its_billing_line_or_its_agent_header() -> None:
    assert classify("/v1/messages", facts([user("Check alpha.")], subagent=True)) == "subagent"
    assert classify("/v1/messages", facts([user("Check alpha.")]), agent_id="a1") == "subagent"
    assert classify("/v1/messages", facts([user("Check alpha.")]), agent_id="") == "main"
    assert classify("/v1/messages", facts([user("Check alpha.")]), agent_id=None) == "main"
