"""Shared linking (nexus/conversations/shared.py) with two services on one database, as two workers or
two instances are: the races a single worker never meets, decided as a single worker decides."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg

from nexus._core import prompt_key, read_reply
from nexus.conversations.classify import COMPACTION, MAIN, SUBAGENT
from nexus.conversations.index import LinkIndex
from nexus.conversations.linker import Linker, LinkRequest
from nexus.conversations.service import LookupPool
from nexus.conversations.shared import SHARED_OPTIONS, SharedConversationService, prune
from tests.test_linker_units import hist

T0 = 1_800_000_000.0
_ids = itertools.count(1)


def rid() -> str:
    return f"00000000-0000-7000-8000-{next(_ids):012d}"


def service(dsn: str, **kw: Any) -> SharedConversationService:
    pool = LookupPool(dsn, 5000, size=4, options=SHARED_OPTIONS)
    return SharedConversationService(Linker(LinkIndex(1000)), pool, **kw)


def request(*turns: str, at: float, session: str | None = "s1", kind: str = MAIN, **kw: Any) -> LinkRequest:
    return LinkRequest(rid(), "p", at, kind, hist(*turns), session, **kw)


async def close(*services: SharedConversationService) -> None:
    for s in services:
        await s.drain()
        assert isinstance(s.pool, LookupPool)
        await s.pool.close()


async def test_two_forks_decided_at_once_on_two_instances_open_exactly_one_branch(migrated_db: str) -> None:
    """Two children of one parent with different histories, decided at the same moment on two
    instances (the second stamped earlier, as another machine's clock may): one continues the
    parent's branch, the other opens a branch, as when one worker sees them one after the other.
    Ten such pairs at once, so a decision that did not wait for its sibling's would show."""
    a, b = service(migrated_db), service(migrated_db)
    try:
        for svc in (a, b):  # every connection of both pools open, so the pairs below really race
            await asyncio.gather(*(svc.link(request(f"warm {n}", at=T0)) for n in range(12)))
        parents = [await a.link(request(f"hi {n}", at=T0)) for n in range(10)]
        pairs = await asyncio.gather(
            *(
                asyncio.gather(
                    a.link(request(f"hi {n}", "hello", "left", at=T0 + 2)),
                    b.link(request(f"hi {n}", "hello", "right", at=T0 + 1)),
                )
                for n in range(10)
            )
        )
        for parent, (first, second) in zip(parents, pairs, strict=True):
            assert first.parent_request_id == second.parent_request_id == a_id(parent, a)
            assert sorted([first.branch_id == "main", second.branch_id == "main"]) == [False, True]
            assert first.conversation_id == second.conversation_id == parent.conversation_id
        assert a.shared_failures == b.shared_failures == 0
    finally:
        await close(a, b)


def a_id(link: Any, svc: SharedConversationService) -> str:
    """The request id a decided link belongs to (the service remembers it until completion)."""
    return next(req.request_id for req, decided in svc._live.values() if decided is link)


async def test_a_sub_agent_that_arrives_before_its_launch_is_written_waits_for_it(migrated_db: str) -> None:
    """The reply with the Agent call reached the client, but its write is still on its way when the
    sub-agent's first request is decided on the other instance: it asks again and finds it."""
    a, b = service(migrated_db), service(migrated_db, max_wait_s=5)
    try:
        spawner_req = request("do it", at=T0)
        spawner = await a.link(spawner_req)
        prompt = "SUBTASK: count the files"
        sub = request(prompt, at=T0 + 1, kind=SUBAGENT, agent_id="agent-1", first_user_key=prompt_key(prompt))
        deciding = asyncio.ensure_future(b.link(sub))
        await asyncio.sleep(0.03)
        assert not deciding.done()
        reply = {"content": [{"type": "tool_use", "id": "toolu_1", "name": "Agent", "input": {"prompt": prompt}}]}
        keys = a.complete(spawner_req.request_id, spawner, True, read_reply(orjson.dumps(reply)))
        assert keys == [prompt_key(prompt)]
        link = await deciding
        assert (link.evidence, link.branch_id) == ("subtask", "subtask_1")
        assert link.parent_request_id == link.parent_task_request_id == spawner_req.request_id
        assert link.conversation_id == spawner.conversation_id and b.shared_waits >= 1
        waits = b.shared_waits
        twin = request(prompt, at=T0 + 2, kind=SUBAGENT, agent_id="agent-2", first_user_key=prompt_key(prompt))
        assert (await b.link(twin)).evidence != "subtask"  # its one launch is claimed
        assert b.shared_waits == waits  # and no turn of its session is in flight: it did not wait
    finally:
        await close(a, b)


async def test_a_failure_marked_before_the_answer_makes_an_immediate_retry_a_retry(migrated_db: str) -> None:
    """A sessionless SDK request that failed, retried at once on the other instance."""
    a, b = service(migrated_db), service(migrated_db)
    try:
        first_req = request("ping", at=T0, session=None)
        first = await a.link(first_req)
        await a.failed(first_req.request_id)
        again = await b.link(request("ping", at=T0 + 0.1, session=None))
        assert (again.evidence, again.conversation_id) == ("retry", first.conversation_id)
        other = await b.link(request("pong", at=T0 + 0.2, session=None))
        await b.link(request("pong", at=T0 + 0.3, session=None))  # the first succeeded: a new conversation
        assert other.evidence == "new"
    finally:
        await close(a, b)


async def test_a_database_away_leaves_linking_to_the_workers_memory() -> None:
    svc = service("postgresql://nexus@127.0.0.1:1/none?connect_timeout=1", max_wait_s=0)
    svc.lookup_timeout_s = 0.5
    try:
        link = await svc.link(request("hi", at=T0))
        assert (link.evidence, link.branch_id) == ("new", "main") and svc.shared_failures == 1
        # the next ones do not wait out another connection timeout: memory decides for a while
        again = await svc.link(request("hi", "hello", "more", at=T0 + 1))
        assert again.conversation_id == link.conversation_id
        assert (svc.shared_failures, svc.shared_skipped) == (1, 1)
    finally:
        assert isinstance(svc.pool, LookupPool)
        await svc.pool.close()


def test_pruning_keeps_the_look_back_window(migrated_db: str) -> None:
    old, recent = datetime.now(UTC) - timedelta(days=40), datetime.now(UTC) - timedelta(days=1)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        for at in (old, recent):
            conn.execute(
                'INSERT INTO link_requests (request_id, project_id, "timestamp", request_type) VALUES (%s, %s, %s, %s)',
                (rid(), "p", at, MAIN),
            )
        assert prune(conn, 30) == 1
        row = conn.execute('SELECT count(*), min("timestamp") FROM link_requests').fetchone()
        assert row is not None and row[0] == 1 and row[1] > old


async def test_a_continuation_waits_for_its_own_sessions_summary_not_another_sessions(migrated_db: str) -> None:
    """Two sessions compacted to the same summary at the same time. Session s2's summary is written;
    session s1's compaction reply reached its client but its write is still on its way when s1's
    continuation is decided on the other instance: it waits for its own session's summary rather than
    join s2's conversation (one worker, which sees s1's summary first, decides the same)."""
    from tests.test_linker_units import CONTINUATION, summary_reply

    a, b = service(migrated_db), service(migrated_db, max_wait_s=5)
    try:
        compactions = {}
        for session in ("s2", "s1"):
            await a.link(request("hi", at=T0, session=session))
            req = request("hi", "hello", "summarise", at=T0 + 1, session=session, kind=COMPACTION)
            compactions[session] = (req, await a.link(req))
        other_req, other = compactions["s2"]
        a.complete(other_req.request_id, other, True, read_reply(orjson.dumps(summary_reply())))
        await a.drain()
        cont = request(CONTINUATION, at=T0 + 2, session="s1", continuation_text=CONTINUATION)
        deciding = asyncio.ensure_future(b.link(cont))
        await asyncio.sleep(0.05)
        assert not deciding.done()  # s2's summary is there, but s1's own turn is still in flight
        own_req, own = compactions["s1"]
        a.complete(own_req.request_id, own, True, read_reply(orjson.dumps(summary_reply())))
        link = await deciding
        assert (link.evidence, link.parent_request_id) == ("compaction", own_req.request_id)
        assert link.conversation_id == own.conversation_id != other.conversation_id
        assert b.shared_waits >= 1
    finally:
        await close(a, b)
