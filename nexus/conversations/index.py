"""The bounded in-memory index of recent requests that the linker consults first.

Writes are batched, so a parent may not be in the database when its child arrives a few milliseconds
later; this index knows every request the moment it is linked. It is bounded: the oldest requests are
forgotten first (`LINK_INDEX_SIZE`), after which (and after a restart) the database answers instead.
Everything is scoped by project, so identical content in two projects never links them.
"""

from __future__ import annotations

import sys
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

PENDING, OK, FAILED = 0, 1, 2


@dataclass(slots=True)
class Entry:
    """What the linker remembers of one request."""

    request_id: str
    project: str
    timestamp: float
    request_type: str
    current: bytes | None
    conversation_id: str | None
    branch_id: str | None
    parent_request_id: str | None
    is_subtask: bool
    parent_task_request_id: str | None
    session: str | None
    agent_id: str | None
    status: int = PENDING


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


class LinkIndex:
    """Requests by id, by history hash and by parent, bounded, oldest forgotten first.

    Memory matters at 100,000 entries: buckets hold a single entry until a second one arrives (most
    hashes and parents have one), and the strings many entries share (project, session, conversation
    id) are interned, so each entry costs about a third of a kilobyte.
    """

    def __init__(self, capacity: int = 100_000, invocations: int = 20_000, compactions: int = 500) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self._by_hash: dict[bytes, Entry | list[Entry]] = {}
        self._children: dict[str, Entry | list[Entry]] = {}
        self._tasks: dict[tuple[str, bytes], list[Invocation]] = {}
        self._task_order: deque[Invocation] = deque()
        self._task_capacity = invocations
        self.compactions: deque[Compaction] = deque(maxlen=compactions)
        self._subtasks: OrderedDict[str, int] = OrderedDict()
        #: Entries and invocations looked at by lookups and upkeep since start: the linker's work,
        #: counted rather than timed so a test can tell whether it grows with repeated traffic.
        self.examined = 0

    def __len__(self) -> int:
        return len(self.entries)

    # --- requests ------------------------------------------------------------------------------
    def add(self, entry: Entry) -> None:
        if entry.request_id in self.entries:
            return
        entry.project = sys.intern(entry.project)
        if entry.session is not None:
            entry.session = sys.intern(entry.session)
        if entry.conversation_id is not None:
            entry.conversation_id = sys.intern(entry.conversation_id)
        self.entries[entry.request_id] = entry
        if entry.current is not None:
            _put(self._by_hash, entry.current, entry)
        if entry.parent_request_id is not None:
            _put(self._children, entry.parent_request_id, entry)
        while len(self.entries) > self.capacity:
            self._forget(self.entries.popitem(last=False)[1])

    def _forget(self, old: Entry) -> None:
        if old.current is not None:
            self.examined += _remove(self._by_hash, old.current, old)
        if old.parent_request_id is not None:
            self.examined += _remove(self._children, old.parent_request_id, old)

    def get(self, request_id: str) -> Entry | None:
        return self.entries.get(request_id)

    def move(self, entry: Entry, parent_request_id: str | None) -> None:
        """Give an indexed entry another parent (a decision revised after a database lookup)."""
        if entry.parent_request_id is not None:
            self.examined += _remove(self._children, entry.parent_request_id, entry)
        entry.parent_request_id = parent_request_id
        if parent_request_id is not None and entry.request_id in self.entries:
            _put(self._children, parent_request_id, entry)

    def with_hash(self, project: str, digest: bytes) -> list[Entry]:
        """Requests of `project` whose whole (normalised) history hashes to `digest`, oldest first."""
        held = _get(self._by_hash, digest)
        self.examined += len(held)
        return [e for e in held if e.project == project]

    def children(self, request_id: str) -> list[Entry]:
        held = _get(self._children, request_id)
        self.examined += len(held)
        return held

    # --- sub-agent invocations ---------------------------------------------------------------------
    def add_invocation(self, inv: Invocation) -> None:
        bucket = self._tasks.setdefault((inv.project, inv.prompt_key), [])
        self.examined += len(bucket)
        if any(i.request_id == inv.request_id and i.tool_use_id == inv.tool_use_id for i in bucket):
            return
        bucket.append(inv)
        self._task_order.append(inv)
        while len(self._task_order) > self._task_capacity:
            old = self._task_order.popleft()
            self.examined += _remove(self._tasks, (old.project, old.prompt_key), old)

    def invocations(self, project: str, prompt_key: bytes) -> list[Invocation]:
        held = self._tasks.get((project, prompt_key), [])
        self.examined += len(held)
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


def _put(table: dict[Any, Entry | list[Entry]], key: object, entry: Entry) -> None:
    held = table.get(key)
    if held is None:
        table[key] = entry
    elif isinstance(held, list):
        held.append(entry)
    else:
        table[key] = [held, entry]


def _get(table: dict[Any, Entry | list[Entry]], key: object) -> list[Entry]:
    held = table.get(key)
    if held is None:
        return []
    return held if isinstance(held, list) else [held]


def _remove(table: dict[Any, Any], key: object, item: object) -> int:
    """Remove `item` from the bucket at `key`; return how many items were looked at."""
    held = table.get(key)
    if held is None:
        return 0
    if not isinstance(held, list):
        if held is item:
            del table[key]
        return 1
    seen = len(held)
    try:
        held.remove(item)
    except ValueError:
        return seen
    if len(held) == 1:
        table[key] = held[0]
    elif not held:
        del table[key]
    return seen
