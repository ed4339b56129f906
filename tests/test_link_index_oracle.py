"""The Rust index of the linker decides as the Python one it replaced (`tests/oracles/link_index.py`).

Random sequences of what the linker does to its index (file a request, revise or move it after a
database lookup, record its outcome, look up by history hash and by parent) run against both, on a
small index so that forgetting, full buckets and full child lists happen often; every answer must be
the same entries in the same order, and the work counted (`examined`) the same.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.conversations.classify import COMPACTION
from nexus.conversations.index import FAILED, OK, PENDING, Entry, LinkIndex
from tests.oracles.link_index import Entry as OracleEntry
from tests.oracles.link_index import OracleIndex

IDS = [f"0190b5c1-7e2a-7000-8000-{n:012x}" for n in range(60)] + ["not-a-uuid-1", "not-a-uuid-2"]
#: Few histories, the first most often: buckets fill, and a parent's children reach their distinct
#: histories' bound (CHILD_HISTORIES) only with a fourth one.
HASHES = [bytes([n]) * 16 for n in (0, 0, 0, 1, 2, 3)]
PROJECTS = ["p", "p", "p", "q"]
SESSIONS = [None, "s1", "s2"]
AGENTS = [None, "a1"]
CONVERSATIONS = [None, "conv-1", "0190b5c1-7e2a-4000-8000-00000000c0de"]
BRANCHES = [None, "main", "subtask_1"]
TYPES = ["main", COMPACTION]

ids = st.sampled_from(IDS)
maybe_id = st.none() | ids
#: Parents among a few ids, so that parents have many children (retries, branches, compactions).
parents = st.none() | st.sampled_from(IDS[:2])
fields = st.tuples(
    ids,
    st.sampled_from(PROJECTS),
    st.integers(0, 3).map(float),  # ties: a retry stamped like its newest twin
    st.sampled_from(TYPES),
    st.none() | st.sampled_from(HASHES),
    st.sampled_from(CONVERSATIONS),
    st.sampled_from(BRANCHES),
    parents,
    st.booleans(),
    parents,
    st.sampled_from(SESSIONS),
    st.sampled_from(AGENTS),
)
operations = st.lists(
    st.one_of(
        *[st.tuples(st.just("add"), fields)] * 6,
        st.tuples(st.just("revise"), st.tuples(ids, st.sampled_from(CONVERSATIONS), st.sampled_from(BRANCHES))),
        st.tuples(st.just("move"), st.tuples(ids, parents, parents)),
        st.tuples(st.just("status"), st.tuples(ids, st.sampled_from([PENDING, OK, FAILED]))),
        st.tuples(
            st.just("with_hash"),
            st.tuples(
                st.sampled_from(PROJECTS), st.sampled_from(HASHES), st.sampled_from(SESSIONS), st.sampled_from(AGENTS)
            ),
        ),
        st.tuples(st.just("children"), st.tuples(ids)),
        st.tuples(st.just("get"), st.tuples(ids)),
    ),
    min_size=60,  # hypothesis draws short lists: few would fill a bucket or a parent's children
    max_size=200,
)


def view(entry: Any) -> tuple[Any, ...] | None:
    if entry is None:
        return None
    return (
        entry.request_id,
        entry.project,
        entry.timestamp,
        entry.request_type,
        entry.current,
        entry.conversation_id,
        entry.branch_id,
        entry.parent_request_id,
        entry.is_subtask,
        entry.parent_task_request_id,
        entry.session,
        entry.agent_id,
        entry.status,
    )


@settings(max_examples=250, deadline=None)
@given(st.integers(1, 30), operations)
def test_the_rust_index_holds_returns_and_counts_what_the_python_one_did(capacity: int, ops: list[Any]) -> None:
    rust, oracle = LinkIndex(capacity), OracleIndex(capacity)
    for op, args in ops:
        if op == "add":
            rust.add(Entry(*args))
            oracle.add(OracleEntry(*args))
        elif op == "revise":
            request_id, conversation, branch = args
            rust.revise(request_id, conversation, branch, True)
            held = oracle.get(request_id)
            if held is not None:
                held.conversation_id, held.branch_id, held.is_subtask = conversation, branch, True
        elif op == "move":
            request_id, parent, task = args
            rust.move(request_id, parent, task)
            held = oracle.get(request_id)
            if held is not None:
                oracle.move(held, parent, task)
        elif op == "status":
            request_id, status = args
            rust.set_status(request_id, status)
            held = oracle.get(request_id)
            if held is not None:
                held.status = status
        elif op == "with_hash":
            assert [view(e) for e in rust.with_hash(*args)] == [view(e) for e in oracle.with_hash(*args)]
        elif op == "children":
            assert [view(e) for e in rust.children(*args)] == [view(e) for e in oracle.children(*args)]
        else:
            assert view(rust.get(*args)) == view(oracle.get(*args))
        assert len(rust) == len(oracle) and rust.examined == oracle.examined
    assert [view(e) for e in rust.entries()] == [view(e) for e in oracle.entries.values()]
    assert rust.consistent()


def test_strings_are_forgotten_with_the_last_entry_that_names_them() -> None:
    """Sessions are new every day: an index that interned them for good would grow without bound."""
    index = LinkIndex(10)
    for n in range(1000):
        index.add(Entry(f"req-{n}", "p", float(n), "main", None, f"conv-{n}", "main", None, False, None, f"s{n}", None))
    # 10 entries: each its id, conversation and session, and the project and "main" (their type and
    # their branch: one string) they share
    assert len(index) == 10 and index._entries.symbol_count() == 10 * 3 + 2


def test_strings_no_utf8_can_hold_are_held_apart_like_any_other() -> None:
    """A session or agent with a lone surrogate (no UTF-8 holds one: an escaped `\\ud800` in JSON) made
    the Rust index raise where the Python one did not, and no two such strings may be taken for one."""
    index, oracle = LinkIndex(10), OracleIndex(10)
    digest = bytes(16)
    for n, session in enumerate(["s\ud800", "s\udc00", "s\ud800", "s"]):
        args = (IDS[n], "p", float(n), "main", digest, None, "main", None, False, None, session, "a\udfff")
        index.add(Entry(*args))
        oracle.add(OracleEntry(*args))
    for session in ["s\ud800", "s\udc00", "s", None]:
        got = [view(e) for e in index.with_hash("p", digest, session, "a\udfff")]
        assert got == [view(e) for e in oracle.with_hash("p", digest, session, "a\udfff")]
    assert [e.session for e in index.entries()] == ["s\ud800", "s\udc00", "s\ud800", "s"]
