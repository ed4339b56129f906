"""Reference implementation for tests only, not used in production: the linker's index of requests.

The Python `LinkIndex` the proxy used until the index moved to Rust (`nexus_core/src/linkindex.rs`),
kept for what it decides, not for its memory: a property test drives both with the same operations
and checks they hold, return and count the same (`tests/test_link_index_oracle.py`).
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass
from typing import Any

from nexus.conversations.classify import COMPACTION

PENDING, OK = 0, 1
#: The bounds as the Python index had them (the Rust core's own are checked against these).
PER_KEY = 4
CHILD_HISTORIES = 3


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


class OracleIndex:
    """Requests by id, by history hash and by parent, bounded, oldest forgotten first.

    Memory matters at 100,000 entries: buckets hold a single entry until a second one arrives (most
    hashes and parents have one), and the strings many entries share (project, session, conversation
    id) are interned, so each entry costs about a third of a kilobyte (`bench.linking`).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: dict[str, Entry] = {}
        self._order: deque[Entry] = deque()
        self._by_hash: dict[bytes, Entry | HashBucket] = {}
        self._children: dict[str, Entry | list[Entry]] = {}
        #: Entries looked at by lookups and upkeep since start.
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
        self._order.append(entry)
        if entry.current is not None:
            held = self._by_hash.get(entry.current)
            if held is None:
                self._by_hash[entry.current] = entry
            elif isinstance(held, HashBucket):
                self.examined += held.add(entry)
            else:
                bucket = self._by_hash[entry.current] = HashBucket()
                self.examined += bucket.add(held) + bucket.add(entry)
        self._adopt(entry)
        while len(self.entries) > self.capacity:
            old = self._order.popleft()
            del self.entries[old.request_id]
            self._forget(old)

    def _forget(self, old: Entry) -> None:
        if old.current is not None:
            held = self._by_hash.get(old.current)
            if held is old:
                del self._by_hash[old.current]
            elif isinstance(held, HashBucket):
                self.examined += held.remove(old)
                if held.empty():
                    del self._by_hash[old.current]
        self._disown(old)

    def get(self, request_id: str) -> Entry | None:
        return self.entries.get(request_id)

    def move(self, entry: Entry, parent_request_id: str | None, parent_task_request_id: str | None) -> None:
        """Give an indexed entry another parent or parent task (a decision revised after a database
        lookup): it is filed again under its parent's children."""
        self._disown(entry)
        entry.parent_request_id, entry.parent_task_request_id = parent_request_id, parent_task_request_id
        if entry.request_id in self.entries:
            self._adopt(entry)

    def with_hash(self, project: str, digest: bytes, session: str | None, agent: str | None) -> list[Entry]:
        """Requests of `project` whose whole (normalised) history hashes to `digest` that can win the
        linker's pick for a request from `session` and `agent` (same agent, then same session, then
        not failed, then newest): the newest few of each of those groups, at most 4 x `PER_KEY`. The
        same entry may appear twice."""
        held = self._by_hash.get(digest)
        if held is None:
            return []
        if isinstance(held, Entry):
            self.examined += 1
            return [held] if held.project == project else []
        found = held.candidates(project, session, agent)
        self.examined += len(found)
        return found

    def children(self, request_id: str) -> list[Entry]:
        """Children of a request that can make a newcomer a branch (see `_adopt`), at most
        4 x `CHILD_HISTORIES`."""
        held = _get(self._children, request_id)
        self.examined += len(held)
        return held

    def _adopt(self, entry: Entry) -> None:
        """File `entry` under its parent's children, keeping only what "does the parent already have
        a child with another history?" needs. A sub-agent the parent spawned is never such a child, so
        it is not filed. Children with one history (retries, the same turn sent again) are kept by their
        oldest and newest request (the oldest passes every "sent before me" test; the newest is the last
        to be forgotten), and only the first `CHILD_HISTORIES` histories of ordinary children and of
        compactions are kept: once two are, every newcomer already has a sibling with another history."""
        parent = entry.parent_request_id
        if parent is None or entry.parent_task_request_id == parent:
            return
        held = self._children.get(parent)
        if held is None:
            self._children[parent] = entry
            return
        kids = held if isinstance(held, list) else [held]
        self.examined += len(kids)
        compaction = entry.request_type == COMPACTION
        same = [c for c in kids if c.current == entry.current and (c.request_type == COMPACTION) == compaction]
        if not same:
            histories = {c.current for c in kids if (c.request_type == COMPACTION) == compaction}
            if len(histories) >= CHILD_HISTORIES:
                return
        elif len(same) >= 2:  # kept by its oldest and its newest: the newcomer replaces one, or neither
            oldest, newest = min(same, key=_ts), max(same, key=_ts)
            if entry.timestamp >= newest.timestamp:
                _drop(kids, newest)
            elif entry.timestamp < oldest.timestamp:
                _drop(kids, oldest)
            else:
                return
        kids.append(entry)
        if held is not kids:
            self._children[parent] = kids

    def _disown(self, entry: Entry) -> None:
        parent = entry.parent_request_id
        if parent is None:
            return
        held = self._children.get(parent)
        if held is entry:
            del self._children[parent]
        elif isinstance(held, list):
            self.examined += len(held)
            if _drop(held, entry):
                if len(held) == 1:
                    self._children[parent] = held[0]
                elif not held:
                    del self._children[parent]


class HashBucket:
    """The requests that share one history hash (two or more), kept per group a pick can prefer.

    `Linker._pick` ranks same agent, then same session, then not failed, then newest, and a retry must
    match session and agent exactly: so the best candidate for any request is among the newest few of
    its (project, session, agent), its (project, agent), its (project, session) or its project. Each of
    those groups keeps `PER_KEY` entries: the newest, and always the newest that succeeded (a pick
    prefers a request that did not fail, and a pending one may still fail). The same body sent ten
    thousand times, from one session or from a new one each time, costs a lookup of at most
    4 x `PER_KEY` entries; a thousand sessions that open with the same prompt each find their own.
    """

    __slots__ = ("groups",)

    def __init__(self) -> None:
        self.groups: dict[tuple[Any, ...], list[Entry]] = {}

    @staticmethod
    def _keys(entry: Entry) -> list[tuple[Any, ...]]:
        keys: list[tuple[Any, ...]] = [("sa", entry.project, entry.session, entry.agent_id), ("p", entry.project)]
        if entry.agent_id is not None:
            keys.append(("a", entry.project, entry.agent_id))
        if entry.session is not None:
            keys.append(("s", entry.project, entry.session))
        return keys

    def add(self, entry: Entry) -> int:
        """File `entry`; return how many entries were looked at."""
        seen = 0
        for key in self._keys(entry):
            group = self.groups.get(key)
            if group is None:
                self.groups[key] = [entry]
                continue
            group.append(entry)
            seen += len(group)
            if len(group) > PER_KEY:  # drop the oldest, unless it is the newest that succeeded
                ok = max((e for e in group if e.status == OK), key=_ts, default=None)
                _drop(group, min((e for e in group if e is not ok), key=_ts))
        return seen

    def remove(self, entry: Entry) -> int:
        seen = 0
        for key in self._keys(entry):
            group = self.groups.get(key)
            if group is not None:
                seen += len(group)
                if _drop(group, entry) and not group:
                    del self.groups[key]
        return seen

    def empty(self) -> bool:
        return not self.groups

    def candidates(self, project: str, session: str | None, agent: str | None) -> list[Entry]:
        out = [*self.groups.get(("sa", project, session, agent), ()), *self.groups.get(("p", project), ())]
        if agent is not None:
            out += self.groups.get(("a", project, agent), ())
        if session is not None:
            out += self.groups.get(("s", project, session), ())
        return out


def _ts(entry: Entry) -> float:
    return entry.timestamp


def _drop(items: list[Any], item: object) -> bool:
    """Remove `item` itself (not an equal one) from `items`; False when it is not there."""
    for n, x in enumerate(items):
        if x is item:
            del items[n]
            return True
    return False


def _get(table: dict[Any, Entry | list[Entry]], key: object) -> list[Entry]:
    held = table.get(key)
    if held is None:
        return []
    return held if isinstance(held, list) else [held]
