"""The bounded in-memory index of recent requests that the linker consults first.

Writes are batched, so a parent may not be in the database when its child arrives a few milliseconds
later; this index knows every request the moment it is linked. It is bounded: the oldest requests are
forgotten first (`LINK_INDEX_SIZE`), after which (and after a restart) the database answers instead.
Everything is scoped by project, so identical content in two projects never links them.

The work of one lookup is bounded too, whatever the traffic: identical bodies are everyday traffic
(retries, health prompts, the same sub-agent prompt) and anyone can send them, so no bucket is allowed
to grow with how often a body was seen. Each keeps only what can still change a decision (see
`with_hash`, `children` and `add_invocation`); an entry dropped from a bucket stays reachable by id.
The requests themselves are held by the Rust core (`nexus_core/src/linkindex.rs`, the rules there).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from nexus._core import LINK_CHILD_HISTORIES, LINK_PER_KEY, IndexEntry, LinkEntries
from nexus.conversations.classify import COMPACTION

#: An entry's status: its request still running, answered 200 and complete, or failed.
PENDING, OK, FAILED = 0, 1, 2
#: Entries kept per history hash for each (project, session, agent), each (project, agent), each
#: (project, session) and each project: the newest, and always the newest that succeeded.
PER_KEY: int = LINK_PER_KEY
#: Distinct child histories kept per parent, for ordinary children and for compactions apart (two are
#: enough for "has a sibling with another history"; one more for the child that is moved or forgotten),
#: each by its oldest and its newest request.
CHILD_HISTORIES: int = LINK_CHILD_HISTORIES
#: Sub-agent invocations kept per (project, prompt): claimed ones are dropped first, then the oldest.
PER_PROMPT = 32


#: What the linker remembers of one request: request_id, project, timestamp, request_type, current (the
#: history hash), conversation_id, branch_id, parent_request_id, is_subtask, parent_task_request_id,
#: session, agent_id, status. Held in Rust (`LinkEntries`); an `Entry` is built on each lookup, so a
#: change to one is made through the index (`revise`, `move`, `set_status`).
Entry = IndexEntry


@dataclass(slots=True)
class Invocation:
    """An `Agent` / `Task` tool_use in a response: a sub-agent about to start with this prompt."""

    request_id: str
    tool_use_id: str
    project: str
    conversation_id: str | None
    session: str | None
    timestamp: float
    prompt_key: bytes
    claimed: bool = False


@dataclass(slots=True)
class Compaction:
    """A finished compaction request and the summary text it produced (lower-cased, spaces collapsed)."""

    request_id: str
    project: str
    conversation_id: str | None
    branch_id: str | None
    timestamp: float
    text: str
    session: str | None = None


class LinkIndex:
    """Requests by id, by history hash and by parent (`_core.LinkEntries`, bounded, oldest forgotten
    first), and the sub-agent launches and compaction summaries replies added.

    Memory matters at 50,000 entries: in Python each cost ~0.35 KB of objects and ~0.57 KB of a
    worker's resident size (the pools they pinned); in Rust an entry is a slot of a vector, its ids
    16 bytes, the strings entries share (project, session, agent, branch) interned once.
    """

    def __init__(self, capacity: int = 100_000, invocations: int = 20_000, compactions: int = 500) -> None:
        self._entries = LinkEntries(capacity, COMPACTION)
        self._tasks: dict[tuple[str, bytes], list[Invocation]] = {}
        self._task_order: deque[Invocation] = deque()
        self._task_capacity = invocations
        self.compactions: deque[Compaction] = deque(maxlen=compactions)
        self._subtasks: OrderedDict[str, int] = OrderedDict()
        #: Work of the lookups in Python (invocations, compactions) beside what the entries count.
        self._examined = 0

    @property
    def capacity(self) -> int:
        return self._entries.capacity

    @property
    def examined(self) -> int:
        """Entries and invocations looked at by lookups and upkeep since start: the linker's work,
        counted rather than timed so a test can tell whether it grows with repeated traffic."""
        return self._entries.examined + self._examined

    @examined.setter
    def examined(self, value: int) -> None:
        self._examined = value - self._entries.examined

    def __len__(self) -> int:
        return len(self._entries)

    # --- requests ------------------------------------------------------------------------------
    def add(self, entry: Entry) -> None:
        """File a decided request (one already held, by id, is left as it is)."""
        self._entries.add(entry)

    def get(self, request_id: str) -> Entry | None:
        return self._entries.get(request_id)

    def entries(self) -> list[Entry]:
        """Every entry, oldest first."""
        return self._entries.entries_in_order()

    def revise(self, request_id: str, conversation_id: str | None, branch_id: str | None, is_subtask: bool) -> None:
        """A decision taken again after a database lookup: the entry's conversation, branch and mark."""
        self._entries.revise(request_id, conversation_id, branch_id, is_subtask)

    def move(self, request_id: str, parent_request_id: str | None, parent_task_request_id: str | None) -> None:
        """Give an indexed entry another parent or parent task (a decision revised after a database
        lookup): it is filed again under its parent's children."""
        self._entries.move(request_id, parent_request_id, parent_task_request_id)

    def set_status(self, request_id: str, status: int) -> None:
        self._entries.set_status(request_id, status)

    def with_hash(self, project: str, digest: bytes, session: str | None, agent: str | None) -> list[Entry]:
        """Requests of `project` whose whole (normalised) history hashes to `digest` that can win the
        linker's pick for a request from `session` and `agent` (same agent, then same session, then
        not failed, then newest): the newest `PER_KEY` of each of its (project, session, agent), its
        (project, agent), its (project, session) and its project, the newest that succeeded always
        among them. The same entry may appear twice. The same body sent ten thousand times, from one
        session or a new one each time, costs a lookup of at most 4 x `PER_KEY` entries."""
        return self._entries.with_hash(project, digest, session, agent)

    def children(self, request_id: str) -> list[Entry]:
        """Children of a request that can make a newcomer a branch, at most 4 x `CHILD_HISTORIES`: a
        sub-agent the parent spawned is never such a child; children with one history (retries, the
        same turn sent again) are kept by their oldest and newest request, and only the first
        `CHILD_HISTORIES` histories of ordinary children and of compactions are kept (once two are,
        every newcomer already has a sibling with another history)."""
        return self._entries.children(request_id)

    def consistent(self) -> bool:
        """Every entry a bucket or a parent holds is live, each within its bound (for tests)."""
        return self._entries.consistent()

    # --- sub-agent invocations ---------------------------------------------------------------------
    def add_invocation(self, inv: Invocation) -> None:
        """Remember a launched sub-agent prompt. At most `PER_PROMPT` per (project, prompt): the same
        prompt launched over and over drops claimed invocations first (they are never candidates
        again), then the oldest unclaimed one (a sub-agent starts within seconds of its launch)."""
        bucket = self._tasks.setdefault((inv.project, inv.prompt_key), [])
        self._examined += len(bucket)
        if any(i.request_id == inv.request_id and i.tool_use_id == inv.tool_use_id for i in bucket):
            return
        bucket.append(inv)
        if len(bucket) > PER_PROMPT:
            del bucket[next((n for n, i in enumerate(bucket) if i.claimed), 0)]
        self._task_order.append(inv)
        while len(self._task_order) > self._task_capacity:
            old = self._task_order.popleft()
            key = (old.project, old.prompt_key)
            held = self._tasks.get(key)
            if held is not None:
                self._examined += len(held)
                if _drop(held, old) and not held:
                    del self._tasks[key]

    def invocations(self, project: str, prompt_key: bytes) -> list[Invocation]:
        held = self._tasks.get((project, prompt_key), [])
        self._examined += len(held)
        return held

    def subtask_count(self, conversation_id: str) -> int:
        """The highest `subtask_N` number seen in a conversation (0 when none)."""
        return self._subtasks.get(conversation_id, 0)

    def note_subtask(self, conversation_id: str, number: int) -> None:
        if number > self._subtasks.get(conversation_id, 0):
            self._subtasks[conversation_id] = number
            self._subtasks.move_to_end(conversation_id)
            while len(self._subtasks) > self.capacity:
                self._subtasks.popitem(last=False)


def _drop(items: list[Any], item: object) -> bool:
    """Remove `item` itself (not an equal one) from `items`; False when it is not there."""
    for n, x in enumerate(items):
        if x is item:
            del items[n]
            return True
    return False
