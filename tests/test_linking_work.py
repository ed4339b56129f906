"""The linker's work per request must not grow with how often a body was seen before.

Identical bodies are everyday traffic (Claude Code's retries, health prompts, the same sub-agent
prompt) and anyone can send them. These tests link thousands of identical requests of each shape
through `ConversationService` and compare the index's own count of entries examined (the
`entries_examined` of `/health`) over the first and the last hundred requests: counting the work,
not timing it, so the test is exact on a busy machine.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from bench import traffic
from bench.linking import measure_index
from nexus._core import RequestAnalysis, analyze_request, read_reply
from nexus.conversations.index import LinkIndex
from nexus.conversations.linker import Link, Linker
from nexus.conversations.service import ConversationService, link_request
from tests.test_linker import Session, assistant, reply, system, text, tool_use, user

REPEATS = 5_000
WINDOW = 100
#: Steps before the first window: the buckets of a body fill up to their caps within a few requests.
WARMUP = 20
#: Entries the last hundred steps may examine beyond the first hundred. Unbounded buckets give about
#: 100x the first hundred's work here.
SLACK = 20
CLAUDE_CODE = analyze_request(traffic.one_body(stream=False))
PROMPT = "Find every caller of parse_config and report the file names."


def body(messages: list[dict[str, Any]], *, subagent: bool = False, tools: bool = True) -> RequestAnalysis:
    out: dict[str, Any] = {"model": "claude-opus-5-5", "max_tokens": 1024, "messages": messages}
    if subagent or tools:
        out["system"] = system(subagent)
    if tools:
        out["tools"] = [{"name": "Bash"}, {"name": "Agent"}]
    return analyze_request(orjson.dumps(out))


class Driver:
    """Sends requests to a `ConversationService` the way the proxy does (link, then complete)."""

    def __init__(self) -> None:
        self.service = ConversationService(Linker(LinkIndex(50_000)), None)
        self.ids = itertools.count(1)
        self.clock = itertools.count(1_780_000_000)

    def send(
        self, analysis: RequestAnalysis, headers: dict[str, str], response: dict[str, Any] | None = None
    ) -> tuple[str, Link]:
        rid = f"00000000-0000-7000-8000-{next(self.ids):012d}"
        req = link_request(rid, "p", float(next(self.clock)), "/v1/messages", headers, analysis)
        link = asyncio.run(self.service.link(req))
        reply = read_reply(orjson.dumps(response)) if response is not None else None
        self.service.complete(rid, link, True, reply)
        return rid, link

    def examined(self) -> int:
        return self.service.stats()["entries_examined"]


def repeat(driver: Driver, step: Callable[[int], Link]) -> tuple[int, int, Link]:
    """Work of the first `WINDOW` steps after `WARMUP` and of the last `WINDOW` of `REPEATS` steps,
    and the last step's link."""
    first = last = 0
    link = None
    for i in range(REPEATS):
        before = driver.examined()
        link = step(i)
        if WARMUP <= i < WARMUP + WINDOW:
            first += driver.examined() - before
        elif i >= REPEATS - WINDOW:
            last += driver.examined() - before
    assert link is not None
    return first, last, link


def test_a_repeated_one_message_sdk_body_without_a_session_costs_the_same_every_time() -> None:
    d = Driver()
    probe = body([user("health check: reply ok", cached=False)], tools=False)
    conversations = set()

    def step(_: int) -> Link:
        link = d.send(probe, {}, reply(text("ok")))[1]
        conversations.add(link.conversation_id)
        return link

    first, last, link = repeat(d, step)
    assert link.evidence == "new" and len(conversations) == REPEATS  # each one a conversation of its own
    assert last <= first + SLACK, (first, last)


def test_a_repeated_child_of_an_indexed_parent_costs_the_same_every_time() -> None:
    """The same next turn under one parent, from one session (retries) and from a new session each
    time (not retries: each looks for siblings among the parent's children)."""
    d = Driver()
    m1 = [user("hello")]
    parent, root = d.send(body(m1), {"x-claude-code-session-id": "s0"}, reply(text("hi")))
    child = body([*m1, assistant(text("hi")), user("go on")])
    fork = body([*m1, assistant(text("hi")), user("something else")])
    d.send(fork, {"x-claude-code-session-id": "s-fork"})

    def step(i: int) -> Link:
        session = "s0" if i % 2 else f"s{i}"
        return d.send(child, {"x-claude-code-session-id": session})[1]

    first, last, link = repeat(d, step)
    assert link.parent_request_id == parent and link.conversation_id == root.conversation_id
    assert link.branch_id not in (None, "main")  # the fork makes every other history a branch
    assert last <= first + SLACK, (first, last)


def test_repeated_sub_agent_launches_cost_the_same_every_time() -> None:
    """The same spawning turn, each reply launching the same prompt twice; one sub-agent starts each
    time (a new agent id), so claimed and unclaimed invocations of one prompt pile up."""
    d = Driver()
    spawner = body([user("check the callers")])
    launch = reply(tool_use("toolu_1", "Agent", prompt=PROMPT), tool_use("toolu_2", "Agent", prompt=PROMPT))
    sub = body([user(PROMPT)], subagent=True, tools=False)
    spawners = []

    def step(i: int) -> Link:
        spawners.append(d.send(spawner, {"x-claude-code-session-id": "s1"}, launch)[0])
        headers = {"x-claude-code-session-id": "s1", "x-claude-code-agent-id": f"agent{i}"}
        return d.send(sub, headers, reply(text("found")))[1]

    first, last, link = repeat(d, step)
    assert link.evidence == "subtask" and link.is_subtask and link.parent_request_id in spawners
    assert last <= first + SLACK, (first, last)


@pytest.mark.parametrize("sessions", ["one", "new each time"])
def test_a_repeated_body_whose_parent_is_unknown_costs_the_same_every_time(sessions: str) -> None:
    """A mid-session body whose parent this index never saw (after a restart, or sent as is)."""
    d = Driver()
    _, first_link = d.send(CLAUDE_CODE, {"x-claude-code-session-id": "s1"})

    def step(i: int) -> Link:
        session = "s1" if sessions == "one" else f"fresh{i}"
        return d.send(CLAUDE_CODE, {"x-claude-code-session-id": session})[1]

    first, last, link = repeat(d, step)
    if sessions == "one":  # Claude Code re-sending after a 529: one conversation
        assert link.evidence == "retry" and link.conversation_id == first_link.conversation_id
    else:  # the same history in other sessions: conversations of their own
        assert link.evidence == "new" and link.conversation_id != first_link.conversation_id
    assert last <= first + SLACK, (first, last)


# --- what the caps keep ---------------------------------------------------------------------------------


def test_a_thousand_sessions_opening_with_the_same_prompt_each_continue_their_own() -> None:
    """Far more sessions share a first message's hash than a bucket keeps per group: each session's
    next turn (identical across sessions too) must still find its own first request."""
    s = Session(Linker(LinkIndex(10_000)))
    firsts = [s.send([user("/init")], reply(text("Created CLAUDE.md")), session=f"s{i}") for i in range(1000)]
    turn2 = [user("/init"), assistant(text("Created CLAUDE.md")), user("now run the tests")]
    for i in (999, 0, 500, 1, 998):
        first_id, first = firsts[i]
        _, link = s.send(turn2, session=f"s{i}")
        assert (link.evidence, link.parent_request_id, link.conversation_id, link.branch_id) == (
            "prefix",
            first_id,
            first.conversation_id,
            "main",
        )
        _, again = s.send(turn2, session=f"s{i}")  # and its retry stays in that session's conversation
        assert (again.evidence, again.parent_request_id, again.conversation_id) == (
            "retry",
            first_id,
            first.conversation_id,
        )


def test_a_fork_is_a_branch_however_often_the_first_child_was_retried() -> None:
    s = Session()
    m1 = [user("hello")]
    parent, root = s.send(m1, reply(text("hi")))
    child = [*m1, assistant(text("hi")), user("go on")]
    for _ in range(50):
        _, link = s.send(child, session="s1")
        assert (link.parent_request_id, link.branch_id) == (parent, "main")
    _, fork = s.send([*m1, assistant(text("hi")), user("another way")], session="s2")
    assert fork.parent_request_id == parent and fork.branch_id not in (None, "main")
    for n in range(10):  # more histories than a parent keeps: each one still a branch of its own
        _, other = s.send([*m1, assistant(text("hi")), user(f"way {n}")], session=f"f{n}")
        assert other.parent_request_id == parent and other.branch_id not in (None, "main", fork.branch_id)
    _, same_elsewhere = s.send(child, session="s3")  # the first child's history from another session
    assert same_elsewhere.evidence == "prefix" and same_elsewhere.branch_id not in (None, "main")
    _, retry = s.send(child, session="s1")
    assert (retry.evidence, retry.branch_id, retry.conversation_id) == ("retry", "main", root.conversation_id)


def test_the_newest_request_that_did_not_fail_stays_a_candidate() -> None:
    """One success, then more failed re-sends of the same body than a group keeps: the next turn
    continues the success, and a re-send is its retry."""
    s = Session()
    m1 = [user("deploy")]
    ok_id, _ = s.send(m1, reply(text("done")))
    for _ in range(10):
        s.send(m1, status=529)
    _, nxt = s.send([*m1, assistant(text("done")), user("thanks")])
    assert (nxt.evidence, nxt.parent_request_id) == ("prefix", ok_id)


def test_sub_agents_launched_together_each_claim_their_own_call() -> None:
    s = Session()
    calls = [tool_use(f"toolu_{n}", "Agent", prompt="Same task") for n in range(20)]
    spawner, _ = s.send([user("fan out")], reply(*calls))
    branches = set()
    for n in range(20):
        _, link = s.send([user("Same task")], reply(text("done")), agent=f"a{n}", subagent=True)
        assert (link.evidence, link.parent_request_id) == ("subtask", spawner)
        branches.add(link.branch_id)
    assert len(branches) == 20
    _, late = s.send([user("Same task")], agent="a20", subagent=True)  # no call left to claim
    assert late.evidence == "new"


def test_the_index_stays_consistent_when_it_forgets_and_moves_identical_requests() -> None:
    index = LinkIndex(capacity=60)
    s = Session(Linker(index))
    m1 = [user("hello")]
    s.send(m1, reply(text("hi")))
    child = [*m1, assistant(text("hi")), user("go on")]
    for i in range(400):
        s.send(child, session="s1" if i % 3 else f"s{i}")
        s.send([user("ping")], reply(text("pong")), session=None)
    assert len(index) == 60
    assert index.consistent()  # nothing forgotten is still reachable, every group within its bound
    # a decision revised after a database lookup: the entry is filed under its new parent only
    entries = index.entries()
    moved, new_parent = entries[-2], entries[-4]
    old_parent = moved.parent_request_id
    index.move(moved.request_id, new_parent.request_id, None)
    assert moved.request_id in {c.request_id for c in index.children(new_parent.request_id)}
    assert old_parent is None or all(c.request_id != moved.request_id for c in index.children(old_parent))
    index.move(moved.request_id, None, None)  # and moving an entry no bucket holds is harmless
    index.move(moved.request_id, None, None)
    assert index.consistent() and index.get(moved.request_id) is not None
    index.move("00000000-0000-7000-8000-00000000dead", None, None)  # one the index does not hold


def test_an_indexed_request_costs_about_a_quarter_of_a_kilobyte() -> None:
    """`LINK_INDEX_SIZE` is sized by what an entry costs (docs/settings.md). 50,000 entries of 10-turn
    conversations, measured as the resident size a fresh process gains: 390 bytes each in Python with
    an OrderedDict, 345 with a dict and a deque, 269 in Rust (`nexus_core/src/linkindex.rs`), where
    no Python object is left per entry."""
    cost = measure_index(50_000)
    assert cost["bytes_per_request"] < 310
    assert cost["python_bytes_per_request"] < 1
