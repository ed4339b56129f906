"""Deciding, for each request, the conversation it belongs to and the request it continues.

Evidence, strongest first, all scoped to the request's project:
1. *Retry*: an earlier request with the same normalised history, from the same session and agent
   (Claude Code re-sends a byte-identical body after a 529). It gets that request's conversation,
   branch and parent: a retry is never a branch.
2. *Sub-agent start*: a one-message request whose user text equals the `input.prompt` of an unclaimed
   `Agent`/`Task` tool_use in a recent reply. It joins that reply's conversation on a new
   `subtask_N` branch, with the spawning request as parent and parent task.
3. *Prefix*: the longest proper prefix of the history that is some request's whole history: that
   request is the parent (tool loops, turns, compaction requests, background task notifications).
   If the parent already has another child with a different history, this one starts a new branch;
   otherwise it stays on the parent's branch. A compaction merged into the last user turn (Claude
   Code 2.1.197) continues the request of that turn instead (`_compacted_turn`).
4. *Compaction continuation*: a first user message quoting the summary a compaction request wrote
   (checked after the prefix, because every later turn of the compacted session still opens with it).
   The restarted history is a segment of its own: a new `compact_…` branch under the compaction.
Otherwise a new conversation starts. The session header only breaks ties between equal candidates and
scopes retries; it is never enough on its own. `decide` reads the index and changes nothing, so a caller
can load more candidates from the database on a miss and decide again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from nexus._core import Reply, read_reply
from nexus.conversations.classify import COMPACTION, LINKED_TYPES, SUBAGENT
from nexus.conversations.compaction import summary_probe
from nexus.conversations.index import FAILED, OK, Compaction, Entry, Invocation, LinkIndex

HASH = 16
SUBAGENT_TOOLS = frozenset({"Agent", "Task"})
MAIN_BRANCH = "main"


@dataclass(slots=True)  # pragma: no mutate (slots save memory; no behaviour depends on them)
class LinkRequest:
    """What the linker needs to know about one request."""

    request_id: str
    project: str
    timestamp: float  # Unix seconds, the request's start
    request_type: str
    prefix_hashes: bytes = b""
    session: str | None = None
    agent_id: str | None = None
    first_user_key: bytes | None = None  # pragma: no mutate (no invocation has an empty key either)
    continuation_text: str | None = None
    #: The history without the last block of its last user message (`RequestAnalysis.trimmed_hash`).
    trimmed_hash: bytes | None = None

    def hashes(self) -> list[bytes]:
        raw = self.prefix_hashes
        return [raw[i : i + HASH] for i in range(0, len(raw), HASH)]

    def hash_count(self) -> int:
        return len(self.prefix_hashes) // HASH

    def hash_at(self, k: int) -> bytes:
        """The `k`th prefix hash (0: the first message's), taken alone: `decide` reads the last two or
        three of a history of a hundred, so slicing them all (`hashes`) was most of its own cost."""
        return self.prefix_hashes[k * HASH : (k + 1) * HASH]

    def lookup_hashes(self, n: int) -> list[bytes]:
        """The histories whose requests could be evidence, for a database read: the last `n` prefix
        hashes and, for a compaction merged into its last turn, that turn's history, just before the
        request's own (it is the nearest possible parent: `Linker._compacted_turn`)."""
        count = self.hash_count()
        hashes = [self.hash_at(k) for k in range(max(0, count - n), count)]
        if self.request_type == COMPACTION and self.trimmed_hash is not None and hashes:
            hashes.insert(len(hashes) - 1, self.trimmed_hash)
        return hashes


@dataclass(slots=True)  # pragma: no mutate (slots save memory; no behaviour depends on them)
class Link:
    """The linker's decision for one request (what is stored with it)."""

    request_type: str
    conversation_id: str | None = None
    branch_id: str | None = None
    parent_request_id: str | None = None
    is_subtask: bool = False
    parent_task_request_id: str | None = None
    current_hash: bytes | None = None
    parent_hash: bytes | None = None
    evidence: str = "none"  # retry | subtask | compaction | prefix | new | none
    #: No evidence in memory, but the database might have some (after a restart, or from another worker).
    missed: bool = False


class Linker:
    def __init__(self, index: LinkIndex | None = None, new_id: Callable[[], str] | None = None) -> None:
        self.index = index if index is not None else LinkIndex()
        self.new_id = new_id or (lambda: str(uuid.uuid4()))

    # --- deciding --------------------------------------------------------------------------------
    def decide(self, req: LinkRequest) -> Link:
        if req.request_type not in LINKED_TYPES:
            return Link(req.request_type)
        count = req.hash_count()
        if not count:
            return self._new(req, None, missed=False)
        current = req.hash_at(count - 1)
        same = self.index.with_hash(req.project, current, req.session, req.agent_id)
        retry_of = self._pick(req, [e for e in same if self._is_retry(req, e)])
        if retry_of is not None:
            return Link(
                req.request_type,
                retry_of.conversation_id,
                retry_of.branch_id,
                retry_of.parent_request_id,
                retry_of.is_subtask,
                retry_of.parent_task_request_id,
                current,
                None,
                "retry",
            )
        if count == 1 and req.first_user_key is not None:
            inv = self._invocation(req)
            if inv is not None:
                spawner = self.index.get(inv.request_id)
                conversation = spawner.conversation_id if spawner is not None else inv.conversation_id
                number = self.index.subtask_count(conversation or "") + 1  # pragma: no mutate ("": never None)
                return Link(
                    req.request_type,
                    conversation,
                    f"subtask_{number}",
                    inv.request_id,
                    True,
                    inv.request_id,
                    current,
                    None,
                    "subtask",
                )
        turn = self._compacted_turn(req)
        if turn is not None:
            assert req.trimmed_hash is not None
            return self._child_of(req, turn, req.trimmed_hash, current, "prefix")
        for k in range(count - 2, -1, -1):
            earlier = req.hash_at(k)
            candidates = self.index.with_hash(req.project, earlier, req.session, req.agent_id)
            parent = self._pick(req, [e for e in candidates if e.timestamp <= req.timestamp])
            if parent is not None:
                link = self._child_of(req, parent, earlier, current, "prefix")
                # A turn normally adds two messages (the reply and the new user turn). A parent found
                # further back may stand for a nearer one this index has not seen (another worker's), and
                # so may the turn a compaction was merged into (`_compacted_turn`).
                link.missed = k < count - 3 or self._may_merge(req)
                return link
        if req.continuation_text is not None:  # after the prefix: later turns still open with the summary
            compaction = self._compaction(req, req.continuation_text)
            if compaction is not None:
                parent = self.index.get(compaction.request_id)
                if parent is not None:  # the history restarts from the summary: a segment of its own
                    return Link(
                        req.request_type,
                        parent.conversation_id,
                        self._branch_name(req, "compact"),
                        parent.request_id,
                        parent.is_subtask,
                        parent.parent_task_request_id,
                        current,
                        None,
                        "compaction",
                    )
        could_find = count > 1 or req.continuation_text is not None or req.request_type == SUBAGENT
        return self._new(req, current, missed=could_find)

    @staticmethod
    def _may_merge(req: LinkRequest) -> bool:
        return req.request_type == COMPACTION and req.trimmed_hash is not None

    def _compacted_turn(self, req: LinkRequest) -> Entry | None:
        """The request a compaction continues when the client merged it into the last user turn.

        Claude Code 2.1.197 (what `npm install @anthropic-ai/claude-code` gave in 2026-12) sends
        `/compact` as the session's last user turn *without that turn's reply*, with the summary prompt
        appended to it as one more block: `[..., reply of P, user(turn text, summary prompt)]`. By prefix,
        its parent would be P, the request *before* that turn, which already has a child (the turn
        itself), so the compaction would open a side branch. It compacts the line that ends with the
        turn: the request whose whole history is this one's without the appended block is its parent,
        on that request's branch (`tests/fixtures/claude_code/compact_merged`). Later shapes (2.1.332:
        the whole history, the last reply, the prompt as a message of its own) continue their parent by
        prefix and never reach here with a match. Only a compaction: any other request whose last block
        is left out is a different turn (an edited prompt is a real branch)."""
        if not self._may_merge(req):
            return None
        assert req.trimmed_hash is not None
        candidates = self.index.with_hash(req.project, req.trimmed_hash, req.session, req.agent_id)
        return self._pick(req, [e for e in candidates if e.timestamp <= req.timestamp])

    def _new(self, req: LinkRequest, current: bytes | None, *, missed: bool) -> Link:
        return Link(req.request_type, self.new_id(), MAIN_BRANCH, current_hash=current, evidence="new", missed=missed)

    @staticmethod
    def _is_retry(req: LinkRequest, e: Entry) -> bool:
        if e.request_id == req.request_id or e.timestamp > req.timestamp or e.agent_id != req.agent_id:
            return False
        if req.session is not None or e.session is not None:
            return e.session == req.session
        # No session to go by (plain SDK clients): an identical one-message request is a new
        # conversation unless the first one failed; an identical history is the same conversation.
        return len(req.prefix_hashes) > HASH or e.status == FAILED

    @staticmethod
    def _pick(req: LinkRequest, candidates: Iterable[Entry]) -> Entry | None:
        """Same agent, then same session, then not failed, then newest."""
        best, best_rank = None, None
        for e in candidates:
            if e.request_id == req.request_id:
                continue
            rank = (
                req.agent_id is not None and e.agent_id == req.agent_id,
                req.session is not None and e.session == req.session,
                e.status != FAILED,
                e.timestamp,
            )
            if best_rank is None or rank > best_rank:
                best, best_rank = e, rank
        return best

    def _child_of(self, req: LinkRequest, parent: Entry, parent_hash: bytes | None, current: bytes, how: str) -> Link:
        siblings = [
            c
            for c in self.index.children(parent.request_id)
            if c.request_id != req.request_id
            and c.timestamp <= req.timestamp
            and c.current != current
            and c.parent_task_request_id != parent.request_id  # a sub-agent it spawned is no sibling
            and not (c.request_type == COMPACTION and req.request_type == COMPACTION)  # a compaction retry
        ]
        branch = self._branch_name(req) if siblings else parent.branch_id or MAIN_BRANCH
        return Link(
            req.request_type,
            parent.conversation_id,
            branch,
            parent.request_id,
            parent.is_subtask,
            parent.parent_task_request_id,
            current,
            parent_hash,
            how,
        )

    @staticmethod
    def _branch_name(req: LinkRequest, kind: str = "branch") -> str:
        at = datetime.fromtimestamp(req.timestamp, UTC)
        return f"{kind}_{at:%Y%m%d%H%M%S}_{req.request_id[-4:]}"  # ids are UUIDs: the last four hex digits

    def _invocation(self, req: LinkRequest) -> Invocation | None:
        assert req.first_user_key is not None
        candidates = [
            i
            for i in self.index.invocations(req.project, req.first_user_key)
            if not i.claimed and i.timestamp <= req.timestamp
        ]
        if not candidates:
            return None
        same_session = [i for i in candidates if req.session is not None and i.session == req.session]
        return (same_session or candidates)[0]  # the oldest unclaimed: agents start in launch order

    def _compaction(self, req: LinkRequest, continuation_text: str) -> Compaction | None:
        probe = summary_probe(continuation_text)
        if probe is None:
            return None
        found = None
        for n, c in enumerate(reversed(self.index.compactions), 1):
            if c.project == req.project and c.timestamp <= req.timestamp and probe in c.text:
                if req.session is None or c.session == req.session:
                    self.index.examined += n
                    return c
                found = found or c  # another session's: only when the request's own session wrote none
        self.index.examined += len(self.index.compactions)
        return found

    # --- remembering -----------------------------------------------------------------------------
    def register(self, req: LinkRequest, link: Link) -> None:
        """Remember a decided request, so its children and retries can find it; a request decided
        again (after a database lookup) has its entry revised in place."""
        key = req.first_user_key
        if link.evidence == "subtask" and key is not None and link.conversation_id is not None:
            self.index.note_subtask(link.conversation_id, int(str(link.branch_id).removeprefix("subtask_")))
            for inv in self.index.invocations(req.project, key):
                if inv.request_id == link.parent_request_id and not inv.claimed:
                    inv.claimed = True
                    break
        if link.conversation_id is None:
            return
        entry = self.index.get(req.request_id)
        if entry is not None:
            self.index.revise(req.request_id, link.conversation_id, link.branch_id, link.is_subtask)
            if (entry.parent_request_id, entry.parent_task_request_id) != (
                link.parent_request_id,
                link.parent_task_request_id,
            ):
                self.index.move(req.request_id, link.parent_request_id, link.parent_task_request_id)
            return
        self.index.add(Entry(*decided_fields(req, link)))

    def complete(self, request_id: str, ok: bool, message: Any) -> list[bytes]:
        """`complete_reply` for a reply held as a parsed message (a replay, generated data), read by
        the same Rust reader as a live reply."""
        reply = read_reply(orjson.dumps(message)) if ok and isinstance(message, dict) else None
        return self.complete_reply(request_id, ok, reply)

    def complete_reply(self, request_id: str, ok: bool, reply: Reply | None) -> list[bytes]:
        """Record how a request ended and what its reply spawned; return the reply's sub-agent prompt
        keys. `reply` was read once on the request path: its launches carry their keys already."""
        entry = self.index.get(request_id)
        if entry is None:
            return []
        self.index.set_status(request_id, OK if ok else FAILED)
        if not ok or reply is None:
            return []
        keys = []
        for tool_use_id, key in reply.launches:
            keys.append(key)
            self.index.add_invocation(
                Invocation(
                    request_id, tool_use_id, entry.project, entry.conversation_id, entry.session, entry.timestamp, key
                )
            )
        if entry.request_type == COMPACTION:
            text = reply.text
            if text:
                self.index.compactions.append(
                    Compaction(
                        request_id,
                        entry.project,
                        entry.conversation_id,
                        entry.branch_id,
                        entry.timestamp,
                        text,
                        entry.session,
                    )
                )
        return keys


def decided_fields(req: LinkRequest, link: Link) -> tuple[Any, ...]:
    """A decided request as the index's `Entry` holds it, field by field (the shared tables' row is the
    same, its timestamp as a datetime: `shared.py`)."""
    return (
        req.request_id,
        req.project,
        req.timestamp,
        req.request_type,
        link.current_hash,
        link.conversation_id,
        link.branch_id,
        link.parent_request_id,
        link.is_subtask,
        link.parent_task_request_id,
        req.session,
        req.agent_id,
    )


def spawned_prompts(message: dict[str, Any]) -> list[tuple[str, str]]:
    """`(tool_use id, input.prompt)` of each sub-agent tool call in a reply."""
    out = []
    for block in message.get("content") or []:
        if isinstance(block, dict) and block.get("type") == "tool_use" and block.get("name") in SUBAGENT_TOOLS:
            tool_input = block.get("input")
            if isinstance(tool_input, dict) and isinstance(tool_input.get("prompt"), str):
                out.append((str(block.get("id") or ""), tool_input["prompt"]))
    return out
