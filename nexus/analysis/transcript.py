"""A branch's transcript, rebuilt from stored requests and cut to a token budget.

Bodies are content-addressed (docs/storage.md): a request row keeps the keys of its messages, and each
distinct message is stored once in `content_blobs`. Claude Code re-sends the whole history every turn,
so the transcript is one turn per answered request, as the reference system built it: the request's
last message (the new user prompt or the tool results) and the reply the gateway stored. Retries that
repeat a turn are dropped. Rows are read a page at a time and only the head and the tail that fit the
budget are kept, so a conversation of thousands of requests never sits in memory whole.

Secrets are not passed on to the model: Anthropic keys and this gateway's client keys in the text are
replaced, and `<system-reminder>` injections of the client are dropped.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from psycopg import AsyncConnection

from nexus.auth.client_keys import redact_client_keys

#: Rows read per query.
PAGE = 200
#: A turn's new messages are looked for among the last few of each request.
NEW_MESSAGES_WINDOW = 4
#: Most rows of one branch read (a branch longer than this is analysed from its first rows).
MAX_ROWS = 20_000
#: Longest text kept of one message before the budget is applied (the reference's cap).
MAX_MESSAGE_CHARS = 50_000
MAX_TOOL_TEXT = 2_000
MAX_TOOL_INPUT = 500

_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.S)
_ANTHROPIC_KEY = re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}")
GAP = "[... {n} turns omitted: the transcript was cut to its head and tail ...]"

ROWS_SQL = """
SELECT r.request_id::text, r."timestamp",
       r.message_keys[greatest(1, array_length(r.message_keys, 1) - %(window)s + 1):] AS last_keys, r.response_body
FROM api_requests r
WHERE r.conversation_id = %(conversation)s AND r.branch_id = %(branch)s AND r.response_status = 200
  AND r.message_keys IS NOT NULL
  AND (r."timestamp", r.request_id) > (%(after_ts)s::timestamptz, %(after_id)s::uuid)
ORDER BY r."timestamp", r.request_id
LIMIT %(limit)s
"""


@dataclass(slots=True)
class Turn:
    role: str  # "user" | "assistant"
    text: str

    def render(self) -> str:
        return f"[{self.role}]\n{self.text}"


@dataclass(slots=True)
class Transcript:
    """What the model reads: the head, the tail, and how many turns between them were left out."""

    head: list[Turn] = field(default_factory=list)
    tail: list[Turn] = field(default_factory=list)
    omitted: int = 0
    requests: int = 0

    @property
    def turns(self) -> int:
        return len(self.head) + len(self.tail) + self.omitted

    def render(self) -> str:
        parts = [t.render() for t in self.head]
        if self.omitted:
            parts.append(GAP.format(n=self.omitted))
        parts += [t.render() for t in self.tail]
        return "\n\n".join(parts)


def sanitize(text: str) -> str:
    text = _REMINDER.sub("", text)
    text = _ANTHROPIC_KEY.sub("[redacted key]", text)
    text = redact_client_keys(text) if "cnp_" in text.lower() else text
    text = text.replace("\x00", "").strip()
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + f" …[{len(text) - MAX_MESSAGE_CHARS} characters cut]"
    return text


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return ""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "tool_result":
        inner = block.get("content")
        text = inner if isinstance(inner, str) else " ".join(_block_text(b) for b in inner or [])
        return f"[tool result] {text[:MAX_TOOL_TEXT]}"
    if kind in ("tool_use", "server_tool_use", "mcp_tool_use"):
        tool_input = orjson.dumps(block.get("input", {})).decode()[:MAX_TOOL_INPUT]
        return f"[tool use: {str(block.get('name', '?'))[:100]}] {tool_input}"
    if kind in ("thinking", "redacted_thinking"):
        return ""
    return f"[{str(kind)[:40]}]"


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(t for t in (_block_text(b) for b in content) if t)
    return ""


def new_user_text(messages: list[Any]) -> str:
    """The user's part of this turn: the user messages after the last assistant message (Claude Code
    puts `role: "system"` entries in `messages`; they are the client's, not the user's)."""
    start = 0
    for i, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") == "assistant":
            start = i + 1
    texts = [
        content_text(m.get("content")) for m in messages[start:] if isinstance(m, dict) and m.get("role") == "user"
    ]
    return "\n".join(t for t in texts if t)


def tokens(text: str, chars_per_token: float) -> int:
    return int(len(text) / chars_per_token) + 1


class Budget:
    """Keeps the first `head` tokens of turns and the last `tail` tokens, counting what falls between."""

    def __init__(self, target: int, head: int, tail: int, chars_per_token: float) -> None:
        self.head_limit = min(head, target)
        self.tail_limit = min(tail, target - self.head_limit)
        self.cpt = chars_per_token
        self.result = Transcript()
        self._head_used = 0
        self._head_open = True
        self._tail: deque[tuple[Turn, int]] = deque()
        self._tail_used = 0

    def add(self, turn: Turn) -> None:
        cost = tokens(turn.text, self.cpt)
        if self._head_open and self._head_used + cost <= self.head_limit:
            self.result.head.append(turn)
            self._head_used += cost
            return
        self._head_open = False  # whole turns only, and in order: the head ends at the first that does not fit
        if cost > self.tail_limit:  # one turn larger than the whole tail: its end is what matters most
            keep = max(0, int(self.tail_limit * self.cpt) - 40)
            turn = Turn(turn.role, ("…[start cut] " + turn.text[-keep:]) if keep else "")
            cost = tokens(turn.text, self.cpt)
        self._tail.append((turn, cost))
        self._tail_used += cost
        while self._tail_used > self.tail_limit and self._tail:
            _, dropped = self._tail.popleft()
            self._tail_used -= dropped
            self.result.omitted += 1

    def finish(self) -> Transcript:
        self.result.tail = [t for t, _ in self._tail if t.text]
        return self.result


async def load_transcript(
    conn: AsyncConnection[Any], conversation_id: str, branch_id: str, budget: Budget
) -> Transcript:
    """The branch's turns in time order, through `budget`."""
    after: tuple[Any, str] = ("-infinity", "00000000-0000-0000-0000-000000000000")
    previous: tuple[str, str] | None = None
    read = 0
    while read < MAX_ROWS:
        cur = await conn.execute(
            ROWS_SQL,  # type: ignore[arg-type]
            {
                "conversation": conversation_id,
                "branch": branch_id,
                "after_ts": after[0],
                "after_id": after[1],
                "limit": PAGE,
                "window": NEW_MESSAGES_WINDOW,
            },
        )
        rows = await cur.fetchall()
        if not rows:
            break
        read += len(rows)
        after = (rows[-1][1], rows[-1][0])
        keys = list({bytes(k) for r in rows for k in r[2] or []})
        blobs: dict[bytes, Any] = {}
        if keys:
            cur = await conn.execute("SELECT key, body FROM content_blobs WHERE key = ANY(%s)", (keys,))
            blobs = {bytes(k): body for k, body in await cur.fetchall()}
        for _, _, last_keys, response in rows:
            user = sanitize(new_user_text([blobs.get(bytes(k)) for k in last_keys or []]))
            reply = sanitize(content_text(response.get("content")) if isinstance(response, dict) else "")
            if (user, reply) == previous:  # a retry that repeated the turn
                continue
            previous = (user, reply)
            budget.result.requests += 1
            if user:
                budget.add(Turn("user", user))
            if reply:
                budget.add(Turn("assistant", reply))
        if len(rows) < PAGE:
            break
    return budget.finish()
