"""What kind of request this is, from the analysed body and the path.

`main` and `subagent` turns are what conversations are made of; `compaction` is Claude Code summarising
its history (`/compact` or auto-compact: the history plus a final "create a detailed summary" turn);
`auxiliary` covers client housekeeping that is no part of a conversation (session titles, quota
probes, `/v1/models`, the `HEAD /api/hello` probe); `count_tokens` is `/v1/messages/count_tokens`.
Markers come from recorded Claude Code 2.1 traffic (tests/fixtures/claude_code) and from older
versions the reference system saw.
"""

from __future__ import annotations

from typing import Protocol

MAIN, SUBAGENT, COMPACTION, AUXILIARY, COUNT_TOKENS = "main", "subagent", "compaction", "auxiliary", "count_tokens"
#: Request types that take part in conversations (and are linked).
LINKED_TYPES = frozenset({MAIN, SUBAGENT, COMPACTION})

COMPACTION_TURN_MARKERS = (
    "CRITICAL: Respond with TEXT ONLY",
    "create a detailed summary of the conversation",
)
SUMMARIZER_SYSTEM = "You are a helpful AI assistant tasked with summarizing conversations"


class Facts(Protocol):
    """The part of `nexus._core.RequestAnalysis` classification reads."""

    @property
    def kept_roles(self) -> bytes: ...
    @property
    def is_subagent(self) -> bool: ...
    @property
    def has_tools(self) -> bool: ...
    @property
    def system_head(self) -> str: ...
    @property
    def first_user_head(self) -> str: ...
    @property
    def last_user_head(self) -> str: ...


def classify(path: str, facts: Facts | None, agent_id: str | None = None) -> str:
    route = path.partition("?")[0]
    if route == "/v1/messages/count_tokens":
        return COUNT_TOKENS
    if route != "/v1/messages" or facts is None:
        return AUXILIARY
    last = facts.last_user_head
    if facts.kept_roles.endswith(b"u") and (
        any(marker in last for marker in COMPACTION_TURN_MARKERS) or SUMMARIZER_SYSTEM in facts.system_head
    ):
        return COMPACTION
    if len(facts.kept_roles) == 1 and not facts.has_tools and facts.first_user_head.startswith("<session>"):
        return AUXILIARY  # session title generation
    if last.strip().lower() == "quota":
        return AUXILIARY  # Claude Code's quota probe
    if facts.is_subagent or agent_id:
        return SUBAGENT
    return MAIN
