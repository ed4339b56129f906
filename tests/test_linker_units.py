"""The linker's decisions one branch at a time (`nexus/conversations/linker.py`).

tests/test_linker.py drives whole synthetic Claude Code sessions and tests/test_linking_fixtures.py
replays recorded ones; these tests pin each rule of the module docstring (and of the reference
system's algorithm, REFERENCE-SYSTEM.md sec. 4) on its own, with histories built from their hashes:
what evidence wins, what each decision copies from its parent, which candidates do not count
(later ones, other projects, claimed sub-agent calls), when a miss may send the proxy to the database,
and what a reply leaves behind for the requests after it.
"""

from __future__ import annotations

import hashlib
import itertools
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from nexus._core import analyze_request, prompt_key
from nexus.conversations.classify import AUXILIARY, COMPACTION, COUNT_TOKENS, MAIN, SUBAGENT
from nexus.conversations.compaction import canonical
from nexus.conversations.index import FAILED, OK, PENDING, Entry, LinkIndex
from nexus.conversations.linker import HASH, Link, Linker, LinkRequest, spawned_prompts

T0 = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC
SUMMARY = "1. Primary Request and Intent: the user asked for a config parser; 2. Files: src/parse.rs (new)."
CONTINUATION = (
    "This session is being continued from a previous conversation that ran out of context.\n\n"
    f"Summary:\n{SUMMARY}\n\nIf you need specific details from before compaction, read the transcript."
)


def hist(*turns: str) -> bytes:
    """Prefix hashes of a history: 16 bytes per message, each hashing the messages up to it."""
    return b"".join(
        hashlib.blake2b("\x00".join(turns[: k + 1]).encode(), digest_size=HASH).digest() for k in range(len(turns))
    )


def rid(n: int) -> str:
    return f"00000000-0000-7000-8000-{n:012x}"


class Driver:
    """Decides, registers and completes requests the way the proxy does, one call each."""

    def __init__(self, index: LinkIndex | None = None, project: str = "p") -> None:
        self.conversations = itertools.count(1)
        index = LinkIndex(100) if index is None else index
        self.linker = Linker(index, new_id=lambda: f"conv-{next(self.conversations)}")
        self.index = self.linker.index
        self.ids = itertools.count(1)
        self.clock = itertools.count(int(T0), 10)
        self.project = project

    def request(
        self,
        *turns: str,
        kind: str = MAIN,
        session: str | None = "s1",
        agent: str | None = None,
        at: float | None = None,
        prompt: str | None = None,
        continuation: str | None = None,
        project: str | None = None,
    ) -> LinkRequest:
        return LinkRequest(
            rid(next(self.ids)),
            project or self.project,
            float(next(self.clock)) if at is None else at,
            kind,
            hist(*turns),
            session,
            agent,
            prompt_key(prompt) if prompt is not None else None,
            continuation,
        )

    def send(
        self, *turns: str, ok: bool = True, message: dict[str, Any] | None = None, **kw: Any
    ) -> tuple[LinkRequest, Link]:
        req = self.request(*turns, **kw)
        link = self.linker.decide(req)
        self.linker.register(req, link)
        self.linker.complete(req.request_id, ok, message)
        return req, link


def reply(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": list(blocks)}


def agent_call(tool_id: str, prompt: str, name: str = "Agent") -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_id, "name": name, "input": {"description": "d", "prompt": prompt}}


def summary_reply(summary: str = SUMMARY) -> dict[str, Any]:
    return reply({"type": "text", "text": f"<analysis>\nnotes\n</analysis>\n\n<summary>\n{summary}\n</summary>"})


# --- the request -------------------------------------------------------------------------------------


def test_prefix_hashes_are_the_rust_cores_sixteen_byte_hashes_one_per_kept_message() -> None:
    body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "a"}]}
    body["messages"] += [{"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    analysis = analyze_request(orjson.dumps(body))
    req = LinkRequest("r", "p", T0, MAIN, analysis.prefix_hashes)
    assert HASH == 16 and len(analysis.prefix_hashes) == 48
    assert req.hashes() == [analysis.prefix_hashes[i : i + 16] for i in (0, 16, 32)]
    assert LinkRequest("r", "p", T0, MAIN).hashes() == []
    assert req.hash_count() == 3 and [req.hash_at(k) for k in range(3)] == req.hashes()
    assert req.lookup_hashes(2) == req.hashes()[-2:] and req.lookup_hashes(9) == req.hashes()
    assert LinkRequest("r", "p", T0, MAIN).lookup_hashes(2) == []


def test_deciding_reads_only_the_hashes_it_compares_never_the_whole_history(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Claude Code history holds a hundred messages; a turn's decision compares its last two or three
    hashes, so slicing them all per request (`hashes()`) was most of the linker's own cost."""
    d = Driver()
    parent = d.request("a", "b", "c")
    d.linker.register(parent, d.linker.decide(parent))
    monkeypatch.setattr(LinkRequest, "hashes", lambda self: pytest.fail("every hash sliced"))
    child = d.request("a", "b", "c", "d", "e")
    link = d.linker.decide(child)
    assert (link.evidence, link.parent_request_id) == ("prefix", parent.request_id)


def test_a_request_with_no_history_is_a_new_conversation_with_nothing_to_look_up() -> None:
    """A body whose messages all normalise away (only system-role entries, empty texts)."""
    d = Driver()
    link = d.linker.decide(LinkRequest(rid(1), "p", T0, MAIN))
    assert (link.evidence, link.conversation_id, link.branch_id, link.current_hash) == ("new", "conv-1", "main", None)
    assert link.parent_hash is None
    assert link.missed is False and link.parent_request_id is None and link.is_subtask is False


def test_conversation_ids_are_fresh_uuids_by_default() -> None:
    linker = Linker()
    assert len(linker.index) == 0 and linker.index.capacity == 100_000
    first = linker.decide(LinkRequest(rid(1), "p", T0, MAIN, hist("a")))
    second = linker.decide(LinkRequest(rid(2), "p", T0, MAIN, hist("b")))
    assert uuid.UUID(first.conversation_id or "").version == 4
    assert first.conversation_id != second.conversation_id


@pytest.mark.parametrize("kind", [AUXILIARY, COUNT_TOKENS])
def test_requests_outside_conversations_get_no_decision(kind: str) -> None:
    d = Driver()
    d.send("hello")
    req = d.request("hello", "hi", "more", kind=kind)
    link = d.linker.decide(req)
    assert link == Link(kind)
    assert (link.conversation_id, link.branch_id, link.evidence, link.missed, link.is_subtask) == (
        None,
        None,
        "none",
        False,
        False,
    )
    assert link.current_hash is None and link.parent_hash is None  # stored as NULL
    d.linker.register(req, link)
    assert d.index.get(req.request_id) is None and len(d.index) == 1
    assert d.linker.complete(req.request_id, True, reply(agent_call("t", "Go"))) == []


def test_a_request_built_without_session_agent_or_continuation_has_none() -> None:
    """`link_request` leaves them out for a body it could not analyse; a request built that way is a
    sessionless, agentless one (the same as one built with `None`), and a new link carries no hashes."""
    d = Driver()
    _, first = d.send("hi", "hello", "more", session=None)
    bare = LinkRequest(rid(50), "p", T0 + 500, MAIN, hist("hi", "hello", "more"))
    assert (bare.session, bare.agent_id, bare.continuation_text) == (None, None, None)
    again = d.linker.decide(bare)
    assert (again.evidence, again.conversation_id) == ("retry", first.conversation_id)
    d.send("ping", session=None)
    one = d.linker.decide(LinkRequest(rid(51), "p", T0 + 500, MAIN, hist("ping")))
    assert (one.evidence, one.missed, one.parent_hash) == ("new", False, None)
    assert Link(MAIN).current_hash is None and Link(MAIN).parent_hash is None


# --- retries ----------------------------------------------------------------------------------------


def test_a_retry_copies_the_whole_decision_of_the_request_it_repeats() -> None:
    d = Driver()
    spawner, _ = d.send("go", message=reply(agent_call("t1", "Check alpha.")))
    _, sub = d.send("Check alpha.", kind=SUBAGENT, agent="a1", prompt="Check alpha.", ok=False)
    again = d.request("Check alpha.", kind=SUBAGENT, agent="a1", prompt="Check alpha.")
    link = d.linker.decide(again)
    assert sub.evidence == "subtask"
    assert link == Link(
        SUBAGENT,
        sub.conversation_id,
        "subtask_1",
        spawner.request_id,
        True,
        spawner.request_id,
        again.hashes()[-1],
        None,
        "retry",
    )
    assert link.missed is False


def test_a_retry_stamped_in_the_same_instant_is_still_a_retry_but_never_one_from_the_future() -> None:
    d = Driver()
    root, _ = d.send("hi")
    _, first = d.send("hi", "hello", "more", at=T0 + 100, ok=False)
    same = d.linker.decide(d.request("hi", "hello", "more", at=T0 + 100))
    assert (same.evidence, same.conversation_id, same.parent_request_id) == (
        "retry",
        first.conversation_id,
        root.request_id,
    )
    earlier = d.linker.decide(d.request("hi", "hello", "more", at=T0 + 99))
    assert (earlier.evidence, earlier.parent_request_id) == ("prefix", root.request_id)


def test_a_retry_needs_the_same_session_and_the_same_agent() -> None:
    d = Driver()
    root, _ = d.send("hi")
    d.send("hi", "hello", "more", session="s1", agent=None)
    assert d.linker.decide(d.request("hi", "hello", "more", session="s1")).evidence == "retry"
    for session, agent in (("s2", None), ("s1", "a1"), (None, None)):
        link = d.linker.decide(d.request("hi", "hello", "more", session=session, agent=agent))
        assert (link.evidence, link.parent_request_id) == ("prefix", root.request_id), (session, agent)


def test_without_any_session_only_a_failed_one_message_body_is_retried() -> None:
    """Plain SDK clients send no session: the same one-message body twice is two conversations
    (a health prompt), unless the first failed; the same longer history is the same conversation."""
    d = Driver()
    _, ok = d.send("ping", session=None)
    assert d.linker.decide(d.request("ping", session=None)).conversation_id != ok.conversation_id
    _, failed = d.send("flaky", session=None, ok=False)
    retried = d.linker.decide(d.request("flaky", session=None))
    assert (retried.evidence, retried.conversation_id) == ("retry", failed.conversation_id)
    _, long = d.send("ping", "pong", "again", session=None)
    again = d.linker.decide(d.request("ping", "pong", "again", session=None))
    assert (again.evidence, again.conversation_id) == ("retry", long.conversation_id)
    # a one-message body with a session on one side only is no retry either
    d.send("solo", session=None, ok=False)
    assert d.linker.decide(d.request("solo", session="s9")).evidence == "new"


# --- picking among candidates ------------------------------------------------------------------------


def entry(n: int, *, at: float, session: str | None = "s1", agent: str | None = None, status: int = OK) -> Entry:
    e = Entry(rid(n), "p", at, MAIN, None, f"conv-{n}", "main", None, False, None, session, agent)
    e.status = status
    return e


def test_the_pick_prefers_the_same_agent_then_session_then_success_then_the_newest() -> None:
    req = LinkRequest(rid(99), "p", T0 + 1000, SUBAGENT, session="s1", agent_id="a1")
    same_agent = entry(1, at=T0, session="s2", agent="a1", status=FAILED)
    same_session = entry(2, at=T0 + 1, session="s1", agent=None, status=FAILED)
    succeeded = entry(3, at=T0 + 2, session="s3", agent="a2")
    newest = entry(4, at=T0 + 3, session="s3", agent="a2", status=FAILED)
    pool = [newest, succeeded, same_session, same_agent]
    assert Linker._pick(req, pool) is same_agent
    assert Linker._pick(req, pool[:3]) is same_session
    assert Linker._pick(req, pool[:2]) is succeeded
    assert Linker._pick(req, [newest, entry(5, at=T0 + 2.5, session="s3", status=FAILED)]) is newest
    assert Linker._pick(req, []) is None


def test_a_request_without_agent_or_session_is_picked_for_by_success_and_age_alone() -> None:
    req = LinkRequest(rid(99), "p", T0 + 1000, MAIN)
    plain = entry(1, at=T0, session=None)
    newer = entry(2, at=T0 + 1, session="s1", agent="a1")
    assert Linker._pick(req, [plain, newer]) is newer
    assert Linker._pick(req, [newer, plain]) is newer


def test_of_two_identical_requests_in_one_instant_the_first_is_the_parent() -> None:
    """Recordings stamp to the second: the same turn sent twice in one second (a retry) is one step,
    and its next turn continues the first request, however many copies the index holds."""
    d = Driver()
    first, _ = d.send("hi", "hello", "more", at=T0)
    second, again = d.send("hi", "hello", "more", at=T0)
    assert again.evidence == "retry"
    link = d.linker.decide(d.request("hi", "hello", "more", "ok", "next", at=T0 + 1))
    assert link.parent_request_id == first.request_id != second.request_id


def test_the_request_itself_is_never_its_own_candidate() -> None:
    req = LinkRequest(rid(1), "p", T0 + 1000, MAIN, session="s1")
    itself, other = entry(1, at=T0 + 1000), entry(2, at=T0)
    assert Linker._pick(req, [itself, other]) is other
    assert Linker._pick(req, [itself]) is None


# --- prefixes -----------------------------------------------------------------------------------------


def test_a_turn_continues_the_request_whose_history_it_extends() -> None:
    d = Driver()
    parent, first = d.send("hi")
    req = d.request("hi", "hello", "more")
    link = d.linker.decide(req)
    hashes = req.hashes()
    assert link == Link(
        MAIN, first.conversation_id, "main", parent.request_id, False, None, hashes[2], hashes[0], "prefix"
    )
    assert link.missed is False


def test_the_nearest_ancestor_wins_and_a_far_one_may_stand_for_an_unseen_nearer_one() -> None:
    d = Driver()
    root, _ = d.send("u1")
    mid, _ = d.send("u1", "a1", "u2")
    cases = {
        ("u1", "a1"): (root, False),  # one message on (a prefilled reply)
        ("u1", "a1", "u2", "a2", "u3"): (mid, False),  # the usual turn: two on
        ("u1", "a1", "u2", "a2", "u3", "a3"): (mid, True),  # three on: a nearer one may be unseen
        ("u1", "a1", "u2", "a2", "u3", "a3", "u4"): (mid, True),  # four on: another worker's turn between
        ("u1", "x1", "u9", "a9", "u8"): (root, True),
    }
    for turns, (parent, missed) in cases.items():
        link = d.linker.decide(d.request(*turns))
        assert (link.evidence, link.parent_request_id, link.missed) == ("prefix", parent.request_id, missed), turns


def test_an_ancestor_stamped_after_the_request_is_no_parent_one_in_the_same_instant_is() -> None:
    d = Driver()
    parent, _ = d.send("hi", at=T0 + 50)
    assert d.linker.decide(d.request("hi", "hello", "more", at=T0 + 50)).parent_request_id == parent.request_id
    late = d.linker.decide(d.request("hi", "hello", "more", at=T0 + 49))
    assert (late.evidence, late.parent_request_id, late.missed) == ("new", None, True)


def test_a_child_keeps_its_parents_branch_and_sub_agent_marks() -> None:
    d = Driver()
    sub = Entry(rid(50), "p", T0, SUBAGENT, hist("sub"), "conv-x", "subtask_3", rid(40), True, rid(40), "s1", "a1")
    d.index.add(sub)
    link = d.linker.decide(d.request("sub", "done", "next", kind=SUBAGENT, agent="a1"))
    assert (link.conversation_id, link.branch_id, link.is_subtask, link.parent_task_request_id) == (
        "conv-x",
        "subtask_3",
        True,
        rid(40),
    )
    stored = Entry(rid(51), "p", T0, MAIN, hist("old")[-16:], "conv-y", None, None, False, None, "s1", None)
    d.index.add(stored)  # a row from before branches were stored
    assert d.linker.decide(d.request("old", "r", "next")).branch_id == "main"


def test_a_new_history_under_a_parent_that_has_a_child_is_a_branch_named_by_time_and_id() -> None:
    d = Driver()
    parent, _ = d.send("hi")
    d.send("hi", "hello", "go on")
    fork = d.request("hi", "hello", "other way", at=T0 + 3723)
    link = d.linker.decide(fork)
    assert link.parent_request_id == parent.request_id
    stamp = datetime.fromtimestamp(T0 + 3723, UTC).strftime("%Y%m%d%H%M%S")
    assert link.branch_id == f"branch_{stamp}_{fork.request_id[-4:]}" == "branch_20260528212843_0003"


def test_the_same_history_again_or_a_sibling_from_the_future_is_no_branch() -> None:
    d = Driver()
    d.send("hi")
    d.send("hi", "hello", "go on", session="s1")
    same_elsewhere = d.linker.decide(d.request("hi", "hello", "go on", session="s2"))
    assert (same_elsewhere.evidence, same_elsewhere.branch_id) == ("prefix", "main")
    d = Driver()
    d.send("hi")
    d.send("hi", "hello", "later way", at=T0 + 500)
    before = d.linker.decide(d.request("hi", "hello", "earlier way", at=T0 + 499))
    assert before.branch_id == "main"
    same_instant = d.linker.decide(d.request("hi", "hello", "earlier way", at=T0 + 500))
    assert same_instant.branch_id.startswith("branch_")


def test_a_sub_agent_its_parent_launched_is_no_sibling_of_the_next_turn() -> None:
    d = Driver()
    d.send("go", message=reply(agent_call("t1", "Check alpha.")))
    d.send("Check alpha.", kind=SUBAGENT, agent="a1", prompt="Check alpha.")
    assert d.linker.decide(d.request("go", "launched", "results")).branch_id == "main"


def test_compactions_of_one_parent_are_retries_not_branches_of_each_other_or_of_its_turns() -> None:
    d = Driver()
    parent, _ = d.send("hi")
    _, k1 = d.send("hi", "hello", "summarise", kind=COMPACTION)
    _, k2 = d.send("hi", "hello", "summarise (retry)", kind=COMPACTION)
    assert k1.branch_id == k2.branch_id == "main"
    turn = d.linker.decide(d.request("hi", "hello", "go on"))  # a turn beside a compaction is a fork
    assert turn.parent_request_id == parent.request_id and turn.branch_id.startswith("branch_")
    d2 = Driver()
    d2.send("hi")
    d2.send("hi", "hello", "go on")
    compaction = d2.linker.decide(d2.request("hi", "hello", "summarise", kind=COMPACTION))
    assert compaction.branch_id.startswith("branch_")  # and a compaction beside a turn is one too


# --- sub-agents ---------------------------------------------------------------------------------------


def test_a_sub_agent_joins_the_conversation_of_the_call_that_launched_it() -> None:
    d = Driver()
    spawner, first = d.send("go", message=reply(agent_call("t1", "Check alpha.")))
    req = d.request("Check alpha.", kind=SUBAGENT, agent="a1", prompt="Check alpha.")
    link = d.linker.decide(req)
    assert link == Link(
        SUBAGENT,
        first.conversation_id,
        "subtask_1",
        spawner.request_id,
        True,
        spawner.request_id,
        req.hashes()[0],
        None,
        "subtask",
    )
    assert link.missed is False


def test_an_older_clients_task_tool_launches_sub_agents_too() -> None:
    d = Driver()
    spawner, _ = d.send("go", message=reply(agent_call("t1", "Check beta.", name="Task")))
    link = d.linker.decide(d.request("Check beta.", kind=SUBAGENT, agent="a1", prompt="Check beta."))
    assert (link.evidence, link.parent_request_id) == ("subtask", spawner.request_id)


def test_sub_agent_numbers_follow_the_highest_in_the_conversation() -> None:
    d = Driver()
    _, first = d.send("go", message=reply(agent_call("t1", "A"), agent_call("t2", "B"), agent_call("t3", "C")))
    d.index.note_subtask(first.conversation_id or "", 4)  # e.g. loaded from the database
    _, a = d.send("A", kind=SUBAGENT, agent="a1", prompt="A")
    _, b = d.send("B", kind=SUBAGENT, agent="a2", prompt="B")
    assert (a.branch_id, b.branch_id) == ("subtask_5", "subtask_6")
    assert d.index.subtask_count(first.conversation_id or "") == 6


def test_a_sub_agents_later_turns_continue_it_even_while_the_same_prompt_waits_unclaimed() -> None:
    d = Driver()
    d.send("go", message=reply(agent_call("t1", "Same"), agent_call("t2", "Same")))
    first, a = d.send("Same", kind=SUBAGENT, agent="a1", prompt="Same")
    _, turn = d.send("Same", "working", "result", kind=SUBAGENT, agent="a1", prompt="Same")
    assert (turn.evidence, turn.parent_request_id, turn.branch_id) == ("prefix", first.request_id, a.branch_id)
    _, b = d.send("Same", kind=SUBAGENT, agent="a2", prompt="Same")
    assert (b.evidence, b.branch_id) == ("subtask", "subtask_2")


def test_a_one_message_request_without_a_prompt_key_is_no_sub_agent_start() -> None:
    d = Driver()
    d.send("go", message=reply(agent_call("t1", "Check alpha.")))
    link = d.linker.decide(d.request("Check alpha.", kind=SUBAGENT, agent="a1", prompt=None))
    assert (link.evidence, link.missed) == ("new", True)


def test_the_spawners_current_conversation_wins_over_the_one_its_call_was_recorded_with() -> None:
    """A spawner relinked after a database lookup has moved conversations: its sub-agents follow it."""
    d = Driver()
    spawner, first = d.send("go", message=reply(agent_call("t1", "Check alpha.")))
    revised = Link(MAIN, "conv-older", "main", None, False, None, first.current_hash, None, "prefix")
    d.linker.register(spawner, revised)
    link = d.linker.decide(d.request("Check alpha.", kind=SUBAGENT, agent="a1", prompt="Check alpha."))
    assert (link.conversation_id, link.parent_request_id) == ("conv-older", spawner.request_id)


def test_a_forgotten_spawners_call_still_names_its_conversation() -> None:
    d = Driver(LinkIndex(capacity=2))
    spawner, first = d.send("go", message=reply(agent_call("t1", "Check alpha.")))
    d.send("other 1")
    d.send("other 2")
    assert d.index.get(spawner.request_id) is None
    link = d.linker.decide(d.request("Check alpha.", kind=SUBAGENT, agent="a1", prompt="Check alpha."))
    assert (link.evidence, link.conversation_id, link.parent_request_id) == (
        "subtask",
        first.conversation_id,
        spawner.request_id,
    )


def test_a_sub_agent_claims_the_oldest_open_call_of_its_own_session_first() -> None:
    d = Driver()
    one, _ = d.send("go", session="s1", message=reply(agent_call("t1", "Same")))
    two, _ = d.send("go too", session="s2", message=reply(agent_call("t2", "Same")))
    three, _ = d.send("go three", session="s2", message=reply(agent_call("t3", "Same")))
    _, a = d.send("Same", kind=SUBAGENT, agent="a1", session="s2", prompt="Same")
    _, b = d.send("Same", kind=SUBAGENT, agent="a2", session="s2", prompt="Same")
    _, c = d.send("Same", kind=SUBAGENT, agent="a3", session=None, prompt="Same")
    _, late = d.send("Same", kind=SUBAGENT, agent="a4", session="s2", prompt="Same")
    assert [x.parent_request_id for x in (a, b, c)] == [two.request_id, three.request_id, one.request_id]
    assert (late.evidence, late.missed) == ("new", True)  # every call claimed: the database may know more


def test_a_call_launched_after_the_request_or_in_another_project_is_not_its_spawner() -> None:
    d = Driver()
    d.send("go", at=T0 + 100, message=reply(agent_call("t1", "Same")))
    early = d.linker.decide(d.request("Same", kind=SUBAGENT, agent="a1", prompt="Same", at=T0 + 99))
    assert early.evidence == "new"
    elsewhere = d.linker.decide(d.request("Same", kind=SUBAGENT, agent="a1", prompt="Same", project="q"))
    assert elsewhere.evidence == "new"
    now = d.linker.decide(d.request("Same", kind=SUBAGENT, agent="a1", prompt="Same", at=T0 + 100))
    assert now.evidence == "subtask"


def test_each_sub_agent_claims_one_call_of_its_own_spawner() -> None:
    d = Driver()
    one, _ = d.send("go", session="s1", message=reply(agent_call("t1", "Same"), agent_call("t2", "Same")))
    two, _ = d.send("go too", session="s2", message=reply(agent_call("t3", "Same")))
    d.send("Same", kind=SUBAGENT, agent="a1", session="s2", prompt="Same")
    claimed = [(i.request_id, i.tool_use_id, i.claimed) for i in d.index.invocations("p", prompt_key("Same"))]
    assert claimed == [
        (one.request_id, "t1", False),
        (one.request_id, "t2", False),
        (two.request_id, "t3", True),
    ]
    d.send("Same", kind=SUBAGENT, agent="a2", session="s1", prompt="Same")
    assert [i.claimed for i in d.index.invocations("p", prompt_key("Same"))] == [True, False, True]


# --- compaction ---------------------------------------------------------------------------------------


def compacted(d: Driver, *, at: float | None = None, project: str | None = None) -> tuple[LinkRequest, Link]:
    d.send("hi", at=None if at is None else at - 2, project=project)
    return d.send("hi", "hello", "summarise", kind=COMPACTION, at=at, project=project, message=summary_reply())


def test_the_history_after_a_compaction_is_a_segment_under_it() -> None:
    d = Driver()
    compaction, k = compacted(d)
    req = d.request(CONTINUATION, continuation=CONTINUATION, at=T0 + 7200)
    link = d.linker.decide(req)
    stamp = datetime.fromtimestamp(T0 + 7200, UTC).strftime("%Y%m%d%H%M%S")
    assert link == Link(
        MAIN,
        k.conversation_id,
        f"compact_{stamp}_{req.request_id[-4:]}",
        compaction.request_id,
        False,
        None,
        req.hashes()[-1],
        None,
        "compaction",
    )
    assert link.missed is False


def test_a_sub_agents_compaction_keeps_its_sub_agent_marks() -> None:
    d = Driver()
    parent = Entry(rid(90), "p", T0, COMPACTION, None, "conv-x", "subtask_2", rid(80), True, rid(80), "s1", "a1")
    d.index.add(parent)
    d.linker.complete(parent.request_id, True, summary_reply())
    link = d.linker.decide(d.request(CONTINUATION, kind=SUBAGENT, agent="a1", continuation=CONTINUATION))
    assert (link.evidence, link.is_subtask, link.parent_task_request_id) == ("compaction", True, rid(80))


def test_a_hostile_reply_launches_nothing_and_still_records_its_compaction() -> None:
    """A tool call named by a list (unhashable) or a `content` that is a number made the Python reader
    raise TypeError out of the completion: the summary was lost (and, with shared linking, the request
    was never handed to storage)."""
    d = Driver()
    parent = Entry(rid(91), "p", T0, COMPACTION, None, "conv-y", "main", None, False, None, "s1", None)
    d.index.add(parent)
    hostile = summary_reply()
    hostile["content"].append({"type": "tool_use", "id": "t", "name": ["Agent"], "input": {"prompt": "x"}})
    assert d.linker.complete(parent.request_id, True, hostile) == []
    link = d.linker.decide(d.request(CONTINUATION, continuation=CONTINUATION))
    assert (link.evidence, link.parent_request_id) == ("compaction", parent.request_id)
    odd = d.request("go")
    d.linker.register(odd, d.linker.decide(odd))
    assert d.linker.complete(odd.request_id, True, {"content": 5, "usage": {}}) == []


def test_only_a_compaction_of_this_project_written_before_the_request_is_evidence() -> None:
    d = Driver()
    compacted(d, at=T0 + 100)
    for kw in ({"at": T0 + 99}, {"project": "q"}):
        link = d.linker.decide(d.request(CONTINUATION, continuation=CONTINUATION, **kw))
        assert (link.evidence, link.missed) == ("new", True), kw
    link = d.linker.decide(d.request(CONTINUATION, continuation=CONTINUATION, at=T0 + 100))
    assert link.evidence == "compaction"


def test_a_summary_no_compaction_wrote_or_too_short_to_trust_starts_a_conversation() -> None:
    d = Driver()
    compacted(d)
    other = CONTINUATION.replace("config parser", "web server")
    short = "This session is being continued.\n\nSummary:\nFixed the bug.\n"
    for text in (other, short):
        link = d.linker.decide(d.request(text, continuation=text))
        assert (link.evidence, link.missed) == ("new", True)


def test_a_compaction_whose_request_was_forgotten_is_no_evidence() -> None:
    d = Driver(LinkIndex(capacity=2))
    compacted(d)
    d.send("x")
    d.send("y")
    assert len(d.index.compactions) == 1
    link = d.linker.decide(d.request(CONTINUATION, continuation=CONTINUATION))
    assert (link.evidence, link.missed) == ("new", True)


def test_the_newest_compaction_that_wrote_the_summary_is_found_and_the_search_is_counted() -> None:
    d = Driver()
    old, _ = compacted(d)
    d.send("other", "r", "summarise", kind=COMPACTION, message=summary_reply("Another summary " * 8))
    new, _ = compacted(d)
    d.send("third", "r", "summarise", kind=COMPACTION, message=summary_reply("A third summary " * 8))
    req = d.request(CONTINUATION, continuation=CONTINUATION)
    before = d.index.examined
    assert d.linker._compaction(req, CONTINUATION).request_id == new.request_id  # type: ignore[union-attr]
    assert d.index.examined - before == 2  # the newest first, stopping at the match
    before = d.index.examined
    text = CONTINUATION.replace("config parser", "web server")
    assert d.linker._compaction(d.request(text, continuation=text), text) is None
    assert d.index.examined - before == 4
    assert old.request_id != new.request_id


def test_only_a_compaction_reply_with_text_is_remembered() -> None:
    d = Driver()
    d.send("hi", "hello", "write a summary", message=summary_reply())  # a main turn quoting a summary
    d.send("hi", "hello", "summarise", kind=COMPACTION, message=reply({"type": "tool_use", "id": "t"}))
    d.send("hi", "hello", "summarise again", kind=COMPACTION, ok=False, message=summary_reply())
    assert len(d.index.compactions) == 0
    req, _ = d.send("hi", "hello", "summarise!", kind=COMPACTION, message=summary_reply())
    [c] = d.index.compactions
    assert (c.request_id, c.project, c.branch_id, c.timestamp) == (req.request_id, "p", "main", req.timestamp)
    assert c.text == canonical(f"<analysis>\nnotes\n</analysis>\n\n<summary>\n{SUMMARY}\n</summary>")


# --- misses: when the database may know better ---------------------------------------------------------


def test_a_new_conversation_asks_the_database_only_where_it_could_have_evidence() -> None:
    d = Driver()
    cases = [
        ({"turns": ("first words",)}, False),  # a one-message main request: nothing to find
        ({"turns": ("unseen", "reply")}, True),  # a history: its parent may be in the database
        ({"turns": ("Check it.",), "kind": SUBAGENT, "agent": "a1", "prompt": "Check it."}, True),
        ({"turns": ("Check it.",), "kind": SUBAGENT, "agent": "a1"}, True),
        ({"turns": ("quoted",), "continuation": CONTINUATION}, True),
        ({"turns": ("summarise",), "kind": COMPACTION}, False),
    ]
    for kw, missed in cases:
        turns = kw.pop("turns")
        link = d.linker.decide(d.request(*turns, **kw))
        assert (link.evidence, link.missed) == ("new", missed), (turns, kw)


# --- remembering ----------------------------------------------------------------------------------------


def test_a_registered_request_is_found_by_its_history_session_and_agent() -> None:
    d = Driver()
    req, link = d.send("hi", "hello", "more", session="s7", agent="a7", kind=SUBAGENT, ok=False)
    e = d.index.get(req.request_id)
    assert e is not None
    assert (e.project, e.timestamp, e.request_type, e.current, e.session, e.agent_id, e.status) == (
        "p",
        req.timestamp,
        SUBAGENT,
        req.hashes()[-1],
        "s7",
        "a7",
        FAILED,
    )
    assert (e.conversation_id, e.branch_id, e.parent_request_id) == (link.conversation_id, "main", None)


def test_a_revised_decision_refiles_the_request_under_its_new_parent() -> None:
    d = Driver()
    p1, _ = d.send("one")
    p2, l2 = d.send("two")
    req, _ = d.send("one", "r", "next")
    assert [c.request_id for c in d.index.children(p1.request_id)] == [req.request_id]
    revised = Link(MAIN, l2.conversation_id, "branch_x", p2.request_id, True, p2.request_id, req.hashes()[-1])
    d.linker.register(req, revised)
    e = d.index.get(req.request_id)
    assert e is not None
    assert (e.conversation_id, e.branch_id, e.is_subtask) == (l2.conversation_id, "branch_x", True)
    assert (e.parent_request_id, e.parent_task_request_id) == (p2.request_id, p2.request_id)
    assert d.index.children(p1.request_id) == []
    assert len(d.index) == 3
    moved = Link(MAIN, l2.conversation_id, "main", p2.request_id, False, None, req.hashes()[-1])
    d.linker.register(req, moved)  # the parent task alone changes: filed again as an ordinary child
    assert [c.request_id for c in d.index.children(p2.request_id)] == [req.request_id]


def test_completion_records_the_outcome_and_what_the_reply_launched() -> None:
    d = Driver()
    req = d.request("go", session="s5")
    d.linker.register(req, d.linker.decide(req))
    e = d.index.get(req.request_id)
    assert e is not None and e.status == PENDING
    launch = reply({"type": "text", "text": "launching"}, agent_call("t1", "Alpha"), agent_call("t2", " Beta\r\n"))
    assert d.linker.complete(req.request_id, True, launch) == [prompt_key("Alpha"), prompt_key("Beta")]
    done = d.index.get(req.request_id)  # an entry is read from the index as it is now
    assert done is not None and done.status == OK and e.status == PENDING
    [a] = d.index.invocations("p", prompt_key("Alpha"))
    assert (a.request_id, a.tool_use_id, a.project, a.conversation_id, a.session, a.timestamp, a.claimed) == (
        req.request_id,
        "t1",
        "p",
        e.conversation_id,
        "s5",
        req.timestamp,
        False,
    )
    assert d.linker.complete(rid(999), True, launch) == []  # a request the index never saw


def test_a_failed_reply_launched_nothing_and_a_reply_that_is_no_message_neither() -> None:
    d = Driver()
    failed = d.request("go")
    d.linker.register(failed, d.linker.decide(failed))
    assert d.linker.complete(failed.request_id, False, reply(agent_call("t1", "Alpha"))) == []
    assert d.index.get(failed.request_id).status == FAILED  # type: ignore[union-attr]
    assert d.index.invocations("p", prompt_key("Alpha")) == []
    odd = d.request("go again")
    d.linker.register(odd, d.linker.decide(odd))
    assert d.linker.complete(odd.request_id, True, [agent_call("t1", "Alpha")]) == []
    assert d.index.get(odd.request_id).status == OK  # type: ignore[union-attr]


def test_spawned_prompts_reads_only_sub_agent_calls_with_a_text_prompt() -> None:
    message = reply(
        agent_call("t1", "One"),
        {"type": "tool_use", "id": "t2", "name": "Bash", "input": {"prompt": "not a sub-agent"}},
        {"type": "text", "name": "Agent", "input": {"prompt": "a text block"}},
        {"type": "tool_use", "id": "t3", "name": "Agent", "input": {"prompt": 7}},
        {"type": "tool_use", "id": "t4", "name": "Agent", "input": "prompt"},
        "tool_use",
        {"type": "tool_use", "name": "Task", "input": {"prompt": "Two"}},
        agent_call("t5", "Three", name="Task"),
    )
    assert spawned_prompts(message) == [("t1", "One"), ("", "Two"), ("t5", "Three")]
    assert spawned_prompts({"content": None}) == spawned_prompts({}) == []


def test_a_compaction_of_the_requests_own_session_wins_over_a_newer_one_of_another() -> None:
    """Two sessions compacted to the same summary: each continuation follows its own session's
    compaction; another session's is taken only when its own wrote none."""
    d = Driver()
    d.send("hi", session="s1")
    own, own_link = d.send("hi", "hello", "summarise", kind=COMPACTION, session="s1", message=summary_reply())
    d.send("hi", session="s2")
    other, _ = d.send("hi", "hello", "summarise", kind=COMPACTION, session="s2", message=summary_reply())
    mine = d.linker.decide(d.request(CONTINUATION, continuation=CONTINUATION, session="s1"))
    assert (mine.evidence, mine.parent_request_id, mine.conversation_id) == (
        "compaction",
        own.request_id,
        own_link.conversation_id,
    )
    stranger = d.linker.decide(d.request(CONTINUATION, continuation=CONTINUATION, session="s3"))
    assert (stranger.evidence, stranger.parent_request_id) == ("compaction", other.request_id)
    sessionless = d.linker.decide(d.request(CONTINUATION, continuation=CONTINUATION, session=None))
    assert (sessionless.evidence, sessionless.parent_request_id) == ("compaction", other.request_id)
