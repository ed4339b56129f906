"""The linker on synthetic Claude Code-shaped traffic: every case the issue names, and interleavings.

The recorded real-client fixtures are checked separately (tests/test_linking_fixtures.py); these
tests build the shapes by hand so each rule is pinned on its own.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus._core import analyze_request
from nexus.conversations.classify import AUXILIARY, COMPACTION, MAIN, SUBAGENT
from nexus.conversations.index import LinkIndex
from nexus.conversations.linker import Link, Linker
from nexus.conversations.service import link_request

REMINDER = {"type": "text", "text": "<system-reminder>\nAttribution for git commits ...\n</system-reminder>\n"}
EPHEMERAL = {"type": "ephemeral"}
NOTE = "<system-reminder>\n<task-notification><tool-use-id>{}</tool-use-id></task-notification>\n</system-reminder>"


def system(subagent: bool = False) -> list[dict[str, Any]]:
    billing = "x-anthropic-billing-header: cc_version=2.1.332.bd3; cc_entrypoint=sdk-cli;"
    if subagent:
        billing += " cc_is_subagent=true;"
    return [
        {"type": "text", "text": billing},
        {"type": "text", "text": "You are a Claude agent, built on the Agent SDK.", "cache_control": EPHEMERAL},
        {"type": "text", "text": "Agent prompt" if subagent else "\nYou are an agent", "cache_control": EPHEMERAL},
    ]


def env_message() -> dict[str, Any]:
    text = "# Environment\nToday's date is 2026-12-01."
    return {"role": "system", "content": [{"type": "text", "text": text, "cache_control": EPHEMERAL}]}


def user(text: str, cached: bool = True) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text}
    if cached:
        block["cache_control"] = EPHEMERAL
    return {"role": "user", "content": [block]}


def assistant(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def tool_use(tid: str, name: str = "Bash", **inp: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": tid, "name": name, "input": inp or {"command": "ls"}}


def tool_result(tid: str, content: str = "ok") -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tid, "content": content}


def reply(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": list(blocks), "stop_reason": "end_turn"}


def uncache(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What Claude Code does to earlier turns: cache_control moved away, one-text lists become strings."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = [{k: v for k, v in b.items() if k != "cache_control"} for b in content]
            if len(content) == 1 and content[0]["type"] == "text" and m["role"] != "assistant":
                content = content[0]["text"]
        out.append({**m, "content": content})
    return out


class Session:
    """Drives a linker the way the proxy does, request by request."""

    def __init__(self, linker: Linker | None = None, project: str = "p") -> None:
        self.linker = linker or Linker(LinkIndex(1000))
        self.project = project
        self.clock = itertools.count(1_780_000_000)
        self.ids = itertools.count(1)

    def send(
        self,
        messages: list[dict[str, Any]],
        response: dict[str, Any] | None = None,
        *,
        session: str | None = "s1",
        agent: str | None = None,
        status: int = 200,
        subagent: bool = False,
        tools: bool = True,
        project: str | None = None,
    ) -> tuple[str, Link]:
        body: dict[str, Any] = {"model": "claude-opus-5-5", "messages": messages, "system": system(subagent)}
        if tools:
            body["tools"] = [{"name": "Bash"}, {"name": "Agent"}]
        headers = {}
        if session:
            headers["x-claude-code-session-id"] = session
        if agent:
            headers["x-claude-code-agent-id"] = agent
        rid = f"00000000-0000-7000-8000-{next(self.ids):012d}"
        analysis = analyze_request(orjson.dumps(body))
        req = link_request(rid, project or self.project, float(next(self.clock)), "/v1/messages", headers, analysis)
        link = self.linker.decide(req)
        self.linker.register(req, link)
        self.linker.complete(rid, status == 200, response if status == 200 else None)
        return rid, link


def test_turns_and_a_tool_loop_continue_on_main() -> None:
    s = Session()
    m1 = [{"role": "user", "content": [REMINDER, text("list files then write notes")]}, env_message()]
    r1_reply = reply(tool_use("toolu_1"), tool_use("toolu_2", command="pwd"))
    r1, l1 = s.send(m1, r1_reply)
    results = [tool_result("toolu_2"), {**tool_result("toolu_1"), "cache_control": EPHEMERAL}]  # completion order
    m2 = [*uncache(m1), assistant(*r1_reply["content"]), {"role": "user", "content": results}]
    r2, l2 = s.send(m2, reply(text("Done.")))
    m3 = [*uncache(m2), assistant(text("Done.")), user("TURN-TWO more")]
    _, l3 = s.send(m3, reply(text("ok")))
    assert (l1.evidence, l1.branch_id, l1.parent_request_id) == ("new", "main", None)
    assert (l2.parent_request_id, l2.conversation_id, l2.branch_id) == (r1, l1.conversation_id, "main")
    assert (l3.parent_request_id, l3.conversation_id, l3.branch_id) == (r2, l1.conversation_id, "main")
    assert l1.request_type == l3.request_type == MAIN


def test_a_retry_is_no_branch_and_a_second_child_is_one_even_with_a_new_session() -> None:
    s = Session()
    m1 = [user("hello")]
    r1, l1 = s.send(m1, reply(text("hi")))
    m2 = [*uncache(m1), assistant(text("hi")), user("go on")]
    _, failed = s.send(m2, status=529)
    retried, again = s.send(m2, reply(text("going")))
    assert failed.parent_request_id == again.parent_request_id == r1
    assert failed.branch_id == again.branch_id == "main" and again.evidence == "retry"
    _, fork = s.send([*uncache(m1), assistant(text("hi")), user("something else")], reply(text("x")), session="s2")
    assert fork.parent_request_id == r1 and fork.conversation_id == l1.conversation_id
    assert fork.branch_id not in (None, "main")
    _, fork2 = s.send([*uncache(m1), assistant(text("hi")), user("a third way")], session="s3")
    assert fork2.branch_id not in ("main", fork.branch_id)
    # the child of the retried turn follows the successful one, on main
    _, child = s.send([*uncache(m2), assistant(text("going")), user("next")])
    assert child.parent_request_id == retried and child.branch_id == "main"


def test_identical_first_messages_of_different_sessions_are_different_conversations() -> None:
    s = Session()
    _, a = s.send([user("hi")], reply(text("1")), session="a")
    _, b = s.send([user("hi")], reply(text("2")), session="b")
    assert a.conversation_id != b.conversation_id
    # no session at all (a plain SDK client): a new conversation unless the first one failed
    _, c = s.send([user("sdk")], reply(text("1")), session=None)
    _, d = s.send([user("sdk")], reply(text("2")), session=None)
    _, e = s.send([user("flaky")], session=None, status=529)
    _, f = s.send([user("flaky")], reply(text("3")), session=None)
    assert c.conversation_id != d.conversation_id
    assert e.conversation_id == f.conversation_id and f.evidence == "retry"


def test_sub_agents_hang_under_the_tool_call_that_launched_them() -> None:
    s = Session()
    m1 = [{"role": "user", "content": [REMINDER, text("check alpha and beta")]}, env_message()]
    spawn = reply(
        tool_use("toolu_A", "Agent", description="Alpha", prompt="Check alpha.\nReport back.", subagent_type="gp"),
        tool_use("toolu_B", "Agent", description="Beta", prompt="Check beta.", run_in_background=True),
    )
    r1, l1 = s.send(m1, spawn)
    sub_b = [{"role": "user", "content": [REMINDER, text("Check beta.")]}, {"role": "system", "content": "deferred"}]
    sb, lb = s.send(sub_b, reply(tool_use("toolu_b1")), agent="ab", subagent=True)
    sub_a = [{"role": "user", "content": [REMINDER, text("Check alpha.\nReport back.")]}]
    _, la = s.send(sub_a, reply(text("A")), agent="aa", subagent=True)
    assert lb.request_type == la.request_type == SUBAGENT
    assert lb.is_subtask and la.is_subtask
    assert lb.parent_request_id == lb.parent_task_request_id == r1
    assert la.parent_task_request_id == r1 and la.conversation_id == l1.conversation_id
    assert {la.branch_id, lb.branch_id} == {"subtask_1", "subtask_2"}
    # the sub-agent's next turn follows it, on its branch
    sub_b2 = [
        *uncache(sub_b),
        assistant(tool_use("toolu_b1")),
        {"role": "user", "content": [tool_result("toolu_b1")]},
        {"role": "system", "content": "x"},
    ]
    _, lb2 = s.send(sub_b2, reply(text("B")), agent="ab", subagent=True)
    assert (lb2.parent_request_id, lb2.branch_id, lb2.is_subtask, lb2.parent_task_request_id) == (
        sb,
        lb.branch_id,
        True,
        r1,
    )
    # the main thread goes on on main: its child of r1 is not a branch because of the sub-agents
    launched = [tool_result("toolu_A", "Async agent launched"), tool_result("toolu_B", "Async agent launched")]
    m2 = [*uncache(m1), assistant(*spawn["content"]), {"role": "user", "content": launched}]
    r2, l2 = s.send(m2, reply(text("Both launched.")))
    assert (l2.parent_request_id, l2.branch_id, l2.is_subtask) == (r1, "main", False)
    # a background result arrives as a user turn that is only a reminder: it continues the main thread
    m3 = [*uncache(m2), assistant(text("Both launched.")), {"role": "user", "content": NOTE.format("toolu_B")}]
    r3, l3 = s.send(m3, reply(text("Beta is done.")))
    assert (l3.parent_request_id, l3.branch_id) == (r2, "main")
    m4 = [*m3, assistant(text("Beta is done.")), {"role": "user", "content": NOTE.format("toolu_A")}]
    _, l4 = s.send(m4, reply(text("Alpha is done.")))
    assert (l4.parent_request_id, l4.branch_id) == (r3, "main")


def test_the_same_prompt_launched_twice_gives_two_sub_agents() -> None:
    s = Session()
    spawn = reply(tool_use("t1", "Agent", prompt="Same task"), tool_use("t2", "Agent", prompt="Same task"))
    r1, _ = s.send([user("twice")], spawn)
    _, a = s.send([user("Same task")], reply(text("1")), agent="a1", subagent=True)
    _, b = s.send([user("Same task")], reply(text("2")), agent="a2", subagent=True)
    assert a.parent_task_request_id == b.parent_task_request_id == r1
    assert a.branch_id != b.branch_id and b.evidence == "subtask"


def test_compaction_and_the_turn_after_it_join_the_conversation() -> None:
    s = Session()
    m1 = [user("TURN-ONE hello")]
    _, l1 = s.send(m1, reply(text("Reply one.")))
    m2 = [*uncache(m1), assistant(text("Reply one.")), user("TURN-TWO more")]
    r2, _ = s.send(m2, reply(text("Reply two.")))
    summary = "1. Primary Request and Intent: the user greeted twice and the assistant replied each time; no files."
    compact_turn = (
        "CRITICAL: Respond with TEXT ONLY. Do NOT call any tools.\n\n"
        "Your task is to create a detailed summary of the conversation so far"
    )
    compacted = reply(text(f"<analysis>\nthinking\n</analysis>\n\n<summary>\n{summary}\n</summary>"))
    history = [*uncache(m2), assistant(text("Reply two."))]
    _, lk1 = s.send([*history, {"role": "user", "content": compact_turn}], reply(text("no summary")))
    k2, lk2 = s.send([*history, {"role": "user", "content": compact_turn + " (retry)"}], compacted)
    assert lk1.request_type == lk2.request_type == COMPACTION
    assert lk1.parent_request_id == lk2.parent_request_id == r2
    assert lk1.branch_id == lk2.branch_id == "main"  # a compaction retry is not a branch
    opening = (
        "This session is being continued from a previous conversation that ran out of context. The summary "
        f"below covers the earlier portion of the conversation.\n\nSummary:\n{summary}\n\n"
        "If you need specific details from before compaction, read the full transcript."
    )
    after = [
        {"role": "user", "content": opening},
        {"role": "system", "content": []},
        assistant(text("Reply two.")),
        user("AFTER-COMPACT next"),
    ]
    p1, lp1 = s.send(after, reply(text("Continuing.")))
    assert (lp1.evidence, lp1.parent_request_id, lp1.conversation_id) == ("compaction", k2, l1.conversation_id)
    _, lp2 = s.send([*uncache(after), assistant(text("Continuing.")), user("and then")])
    assert (lp2.parent_request_id, lp2.conversation_id, lp2.branch_id) == (p1, l1.conversation_id, lp1.branch_id)


COMPACTION_PROMPT = (
    "CRITICAL: Respond with TEXT ONLY. Do NOT call any tools.\n\n- Do NOT use Read, Bash, Grep, Glob, Edit, Write, or "
    "ANY other tool.\n\nYour task is to create a detailed summary of the conversation so far, paying close "
    "attention to the user's explicit requests and your previous actions."
)


def merged_compaction(history: list[dict[str, Any]], last_turn: str) -> list[dict[str, Any]]:
    """Claude Code 2.1.197's `/compact` (tests/fixtures/claude_code/compact_merged, 0004): the history up
    to the last user turn *without that turn's reply*, the turn's text re-sent with a newline and the
    summary prompt appended to it as a second block."""
    return [*uncache(history), {"role": "user", "content": [text(last_turn + "\n"), text(COMPACTION_PROMPT)]}]


def test_a_compaction_merged_into_the_last_turn_continues_that_turn_on_its_line() -> None:
    """Recorded shapes: a tool loop, a second turn, then `/compact` merged into that turn. By prefix alone
    its parent was the turn before (which already had the second turn as a child): a side branch."""
    s = Session()
    m1 = [{"role": "user", "content": [REMINDER, text("COMPACT-1: print the working directory")]}, env_message()]
    r1_reply = reply(tool_use("toolu_01CPBashPwd00000000000001", command="pwd"))
    _, l1 = s.send(m1, r1_reply)
    results = {"role": "user", "content": [tool_result("toolu_01CPBashPwd00000000000001", "/work")]}
    m2 = [*uncache(m1), assistant(*r1_reply["content"]), results]
    s.send(m2, reply(text("The working directory is shown above.")))
    m3 = [*uncache(m2), assistant(text("The working directory is shown above.")), user("COMPACT-2: what is 6 * 7?")]
    r3, l3 = s.send(m3, reply(text("6 * 7 = 42.")))
    summary = "1. Primary Request and Intent: the working directory, then 6 * 7."
    compacted = reply(text(f"<analysis>\nthe user asked twice\n</analysis>\n\n<summary>\n{summary}\n</summary>"))
    merged = merged_compaction(m3[:-1], "COMPACT-2: what is 6 * 7?")
    _, lk = s.send(merged, status=529)
    assert lk.request_type == COMPACTION
    assert (lk.parent_request_id, lk.branch_id, lk.conversation_id) == (r3, "main", l1.conversation_id)
    k, retry = s.send(merged, compacted)  # re-sent after the 529: a retry, on the same line
    assert (retry.evidence, retry.parent_request_id, retry.branch_id) == ("retry", r3, "main")
    opening = (
        "This session is being continued from a previous conversation that ran out of context. The summary "
        f"below covers the earlier portion of the conversation.\n\nSummary:\n{summary}\n\n"
        "If you need specific details from before compaction, read the full transcript."
    )
    after = [
        {"role": "user", "content": [REMINDER, text(opening)]},
        assistant(text("6 * 7 = 42.")),
        user("AFTER-COMPACT-1: what did we compute before?"),
    ]
    _, la = s.send(after, reply(text("We computed 6 * 7 = 42.")))
    assert (la.evidence, la.parent_request_id, la.conversation_id) == ("compaction", k, l1.conversation_id)
    assert la.branch_id is not None and la.branch_id.startswith("compact_")
    assert l3.branch_id == "main"


def test_a_merged_compaction_of_a_fork_stays_on_the_fork_and_an_edited_turn_is_still_a_branch() -> None:
    s = Session()
    m1 = [user("BASE-1: pick a colour")]
    r1, _ = s.send(m1, reply(text("Blue.")))
    m2 = [*uncache(m1), assistant(text("Blue.")), user("BASE-2: and a second one")]
    r2, _ = s.send(m2, reply(text("Green.")))
    fork = [*uncache(m1), assistant(text("Blue.")), user("FORK-A: no, pick an animal")]
    f, lf = s.send(fork, reply(text("A cat.")), session="s2")
    assert (lf.parent_request_id, lf.branch_id != "main") == (r1, True)
    _, lk = s.send(merged_compaction(fork[:-1], "FORK-A: no, pick an animal"), reply(text("summary")), session="s2")
    assert (lk.request_type, lk.parent_request_id, lk.branch_id) == (COMPACTION, f, lf.branch_id)
    # not a compaction: a turn re-sent with a block added is an edit of that turn, a branch at its parent
    edited = [*uncache(m2[:-1]), {"role": "user", "content": [text("BASE-2: and a second one"), text("bigger")]}]
    _, le = s.send(edited, reply(text("Red.")))
    assert (le.request_type, le.parent_request_id) == (MAIN, r1)
    assert le.branch_id not in ("main", lf.branch_id)
    assert r2 != le.parent_request_id


def test_auxiliary_requests_are_not_linked() -> None:
    s = Session()
    title = [{"role": "user", "content": [text("<session>\nTURN-ONE hello\n</session>\n\nWrite the title ...")]}]
    _, lt = s.send(title, reply(text('{"title": "x"}')), tools=False)
    _, lq = s.send([user("quota")], reply(text("q")))
    assert lt.request_type == lq.request_type == AUXILIARY
    assert lt.conversation_id is None and lq.conversation_id is None


def test_projects_never_share_conversations() -> None:
    s = Session()
    m1 = [user("shared opening")]
    _, a = s.send(m1, reply(text("r")), project="alpha")
    _, b = s.send([*uncache(m1), assistant(text("r")), user("next")], project="beta")
    assert b.evidence == "new" and b.conversation_id != a.conversation_id


def test_the_index_is_bounded_and_forgets_the_oldest() -> None:
    s = Session(Linker(LinkIndex(capacity=50)))
    for i in range(200):
        s.send([user(f"conversation {i}")], reply(text("r")))
    assert len(s.linker.index) == 50
    forgotten = s.send([*uncache([user("conversation 0")]), assistant(text("r")), user("more")])[1]
    assert forgotten.evidence == "new" and forgotten.missed  # the database would be asked
    kept = s.send([*uncache([user("conversation 199")]), assistant(text("r")), user("more")])[1]
    assert kept.evidence == "prefix"


# --- interleavings ------------------------------------------------------------------------------------


def conversation_script(tag: str) -> list[dict[str, Any]]:
    """A conversation's requests (turns, a tool loop, a fork, a sub-agent), each with its reply."""
    m1 = [user(f"{tag}: start")]
    spawn = reply(tool_use(f"{tag}_t1"), tool_use(f"{tag}_a1", "Agent", prompt=f"{tag}: sub-task"))
    results = [tool_result(f"{tag}_t1"), tool_result(f"{tag}_a1", "launched")]
    m2 = [*uncache(m1), assistant(*spawn["content"]), {"role": "user", "content": results}]
    m3 = [*uncache(m2), assistant(text("next?")), user(f"{tag}: continue")]
    fork = [*uncache(m2), assistant(text("next?")), user(f"{tag}: other way")]
    return [
        {"messages": m1, "reply": spawn, "name": "m1"},
        {"messages": [user(f"{tag}: sub-task")], "reply": reply(text("sub done")), "name": "sub", "agent": tag},
        {"messages": m2, "reply": reply(text("next?")), "name": "m2"},
        {"messages": m3, "reply": reply(text("ok")), "name": "m3"},
        {"messages": fork, "reply": reply(text("ok")), "name": "fork", "session": f"{tag}-fork"},
    ]


def run(order: list[tuple[str, dict[str, Any]]]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """Link `order`; each request's (conversation, branch, parent, parent task, is_subtask) by name."""
    s = Session()
    names: dict[str, tuple[str, str]] = {}
    out = {}
    for tag, step in order:
        rid, link = s.send(
            step["messages"],
            step["reply"],
            session=step.get("session", tag),
            agent=step.get("agent"),
            subagent="agent" in step,
        )
        names[rid] = (tag, step["name"])
        parent = names.get(link.parent_request_id or "")
        task = names.get(link.parent_task_request_id or "")
        out[(tag, step["name"])] = (link.conversation_id, link.branch_id, parent, task, link.is_subtask)
    # conversation ids and new-branch names are fresh per run: name each by the request that began it
    first_seen: dict[Any, tuple[str, str]] = {}
    normalized = {}
    for key, (conv, branch, parent, task, sub) in out.items():
        if branch != "main" and not branch.startswith("subtask_"):
            branch = first_seen.setdefault(branch, key)
        normalized[key] = (first_seen.setdefault(conv, key), branch, parent, task, sub)
    return normalized


@settings(max_examples=150, deadline=None)
@given(st.permutations(["x"] * 5 + ["y"] * 5 + ["z"] * 5))
def test_any_interleaving_of_independent_conversations_links_the_same_way(tags: list[str]) -> None:
    scripts = {t: conversation_script(t) for t in "xyz"}
    sequential = run([(t, step) for t in "xyz" for step in scripts[t]])
    positions = {t: iter(scripts[t]) for t in "xyz"}
    interleaved = run([(t, next(positions[t])) for t in tags])
    assert interleaved == sequential
    x = {name: sequential[("x", name)] for name in ("m1", "sub", "m2", "m3", "fork")}
    assert x["sub"][1:] == ("subtask_1", ("x", "m1"), ("x", "m1"), True)
    assert x["m3"][:3] == (("x", "m1"), "main", ("x", "m2"))
    assert x["fork"][:3] == (("x", "m1"), ("x", "fork"), ("x", "m2"))
    assert len({v[0] for v in sequential.values()}) == 3
