"""The solo lease (nexus/conversations/lease.py, solo.py): a process alone against its database decides in
memory, and hands over to shared decisions, with everything it decided committed, the moment another
linking process appears. Real PostgreSQL; the recorded sessions are held to one worker's decisions."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import psycopg

from nexus._core import read_reply
from nexus.conversations.index import LinkIndex
from nexus.conversations.lease import SHARED, SOLO, SoloLease
from nexus.conversations.linker import Linker
from nexus.conversations.replay import Recorded, analyze
from nexus.conversations.service import LookupPool, link_request
from nexus.conversations.shared import SHARED_OPTIONS, SharedConversationService
from nexus.ids import new_request_id
from tests.mixed_sessions import Session, all_sessions, interleaved
from tests.test_linking_scale import PROJECT, same, single_worker
from tests.test_linking_shared import T0, close, request


def service(dsn: str, *, may_be_solo: bool = True, **kw: Any) -> SharedConversationService:
    pool = LookupPool(dsn, 5000, size=4, options=SHARED_OPTIONS)
    lease = SoloLease(dsn, may_be_solo=may_be_solo, join_wait_s=5)
    return SharedConversationService(Linker(LinkIndex(100_000)), pool, lease=lease, **kw)


async def leave(*services: SharedConversationService) -> None:
    await close(*services)
    for s in services:
        assert s.lease is not None
        await s.lease.close()


async def play(
    steps: list[tuple[int, tuple[int, int, Recorded]]], sessions: list[Session], pick: Any, files: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Link and complete each recorded request, as the proxy does, through the service `pick` chooses;
    the lines `single_worker` gives for the same order (parents named by file)."""
    got = {}
    for n, (k, i, rec) in steps:
        svc = pick(n, k, i)
        at = 1_800_000_000 + n
        request_id = new_request_id(at * 1000)
        analysis = analyze(rec.path, rec.body)
        req = link_request(request_id, PROJECT, at, rec.path, rec.headers, analysis)
        link = await svc.link(req)
        if rec.status != 200:
            await svc.failed(request_id)  # as the proxy does, before the client can retry it anywhere
        link = await svc.settle(request_id, link) or link
        body = orjson.dumps(rec.response) if rec.response is not None else None
        svc.complete(request_id, link, rec.status == 200, read_reply(body) if body is not None else None)
        file = f"{sessions[k].name}/{rec.file}"
        files[request_id] = file
        got[file] = {
            "file": file,
            "conversation_id": link.conversation_id,
            "branch_id": link.branch_id,
            "parent_file": files.get(link.parent_request_id or ""),
            "is_subtask": link.is_subtask,
            "parent_task_file": files.get(link.parent_task_request_id or ""),
            "request_type": link.request_type,
        }
    return got


def stored(dsn: str) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT request_id::text, conversation_id::text, branch_id, parent_request_id::text, status "
            "FROM link_requests WHERE project_id = %s",
            (PROJECT,),
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


async def test_a_lone_process_decides_in_memory_as_one_worker_and_writes_every_decision(migrated_db: str) -> None:
    sessions = all_sessions()
    order = interleaved(sessions)
    a = service(migrated_db)
    files: dict[str, str] = {}
    try:
        got = await play(list(enumerate(order)), sessions, lambda *_: a, files)
        stats = a.stats()
        assert stats["solo"] == 1 and stats["solo_decisions"] > 0 and stats["shared_decisions"] == 0
        await a.drain()
        rows = stored(migrated_db)
    finally:
        await leave(a)
    same(single_worker(order, sessions), got)
    linked = {rid for rid, f in files.items() if got[f]["conversation_id"] is not None}
    assert set(rows) == linked  # every decision is in the shared tables, as decided
    for rid in linked:
        line = got[files[rid]]
        assert rows[rid][:2] == (line["conversation_id"], line["branch_id"])
        assert rows[rid][3] != 0  # and its outcome


async def test_a_process_joining_mid_session_gets_the_solo_decisions_and_both_link_as_one_worker(
    migrated_db: str,
) -> None:
    """Half of every session through A alone; then B joins and the rest alternate between them: the
    continuations, the sub-agents launched on one and started on the other, the compactions, all as one
    worker links them."""
    sessions = all_sessions()
    order = interleaved(sessions)
    a, b = service(migrated_db), service(migrated_db)
    half = len(order) // 2
    files: dict[str, str] = {}
    try:
        got = await play(list(enumerate(order))[:half], sessions, lambda *_: a, files)
        assert a.stats()["solo"] == 1
        got |= await play(list(enumerate(order))[half:], sessions, lambda n, k, i: (a, b)[(i + k) % 2], files)
        sa, sb = a.stats(), b.stats()
        assert (sa["solo"], sa["solo_handovers"], sb["solo"], sb["solo_join_timeouts"]) == (0, 1, 0, 0)
        assert sa["shared_decisions"] > 0 and sb["shared_decisions"] > 0
        assert sa["shared_failures"] == sb["shared_failures"] == 0
    finally:
        await leave(a, b)
    same(single_worker(order, sessions), got)


async def test_the_newcomer_is_let_in_only_after_the_solo_decisions_are_committed(migrated_db: str) -> None:
    """A decided a turn alone and has not written it yet (no batch is due for a minute): B, joining,
    continues it, because the hand-over wrote it first. Skipping that write makes B start anew."""
    a, b = service(migrated_db), service(migrated_db)
    try:
        parent_req = request("hi", "hello", "more", at=T0)
        parent = await a.link(parent_req)
        assert a.solo_log is not None
        a.solo_log.every_s = 60.0
        a.complete(parent_req.request_id, parent, True, read_reply(b"{}"))
        assert a.stats()["solo"] == 1 and a.stats()["solo_queued"] == 1
        with psycopg.connect(migrated_db) as conn:
            row = conn.execute("SELECT count(*) FROM link_requests").fetchone()
            assert row is not None and row[0] == 0
        child = await b.link(request("hi", "hello", "more", "thanks", "go on", at=T0 + 1))
        assert (child.evidence, child.parent_request_id) == ("prefix", parent_req.request_id)
        assert child.conversation_id == parent.conversation_id
        assert a.stats()["solo"] == b.stats()["solo"] == 0
        fork = await a.link(request("hi", "hello", "more", "thanks", "other", at=T0 + 2))  # A is shared now
        assert fork.parent_request_id == parent_req.request_id and fork.branch_id != "main"
        assert a.shared_decisions == 1
    finally:
        await leave(a, b)


async def test_a_process_with_linking_always_shared_ends_solo_too(migrated_db: str) -> None:
    """LINK_SHARED=on never decides alone, and a solo `auto` process hands over when it starts."""
    a, b = service(migrated_db), service(migrated_db, may_be_solo=False)
    try:
        await a.link(request("hi", at=T0))
        assert a.stats()["solo"] == 1
        await b.link(request("hey", at=T0 + 1))
        assert a.stats()["solo"] == b.stats()["solo"] == 0 and a.stats()["solo_handovers"] == 1
    finally:
        await leave(a, b)


async def test_a_lost_lease_connection_ends_solo_and_the_process_stays_a_member(migrated_db: str) -> None:
    a = service(migrated_db)
    c = None
    try:
        parent_req = request("hi", "hello", "more", at=T0)
        await a.link(parent_req)
        assert a.lease is not None and a.lease.state == SOLO and a.lease._conn is not None
        pid = a.lease._conn.info.backend_pid
        with psycopg.connect(migrated_db, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(200):
            if a.lease.state == SHARED and a.lease.held:
                break
            await asyncio.sleep(0.05)
        assert a.lease.state == SHARED and a.lease.held and a.stats()["solo_lease_lost"] == 1
        child = await a.link(request("hi", "hello", "more", "thanks", "go on", at=T0 + 1))
        assert a.shared_decisions == 1 and child.parent_request_id == parent_req.request_id
        c = service(migrated_db)  # a process started now is not alone: A links too
        await c.link(request("other", at=T0 + 2))
        assert c.stats()["solo"] == 0
    finally:
        await leave(a, *([c] if c else []))


async def test_a_lone_process_alone_again_after_the_other_left_stays_shared(migrated_db: str) -> None:
    """Once another process was seen, a process never decides alone again until it restarts; the next
    process to start alone does."""
    a, b, c = service(migrated_db), service(migrated_db), service(migrated_db)
    try:
        await a.link(request("hi", at=T0))
        await b.link(request("hey", at=T0 + 1))
        assert b.lease is not None
        await b.lease.close()
        await a.link(request("hello", at=T0 + 2))
        assert a.stats()["solo"] == 0
        assert a.lease is not None
        await a.lease.close()
        await c.link(request("again", at=T0 + 3))
        assert c.stats()["solo"] == 1
    finally:
        await leave(a, b, c)


async def test_a_failure_decided_alone_reaches_the_newcomer_with_its_row(migrated_db: str) -> None:
    """A sessionless request decided alone fails; its client retries at once, on a process that is just
    joining (before the first one's completion is recorded): the hand-over wrote the row as failed, so
    the retry is a retry."""
    a, b = service(migrated_db), service(migrated_db)
    try:
        first_req = request("ping", at=T0, session=None)
        first = await a.link(first_req)
        await a.failed(first_req.request_id)
        assert a.stats()["solo"] == 1
        again = await b.link(request("ping", at=T0 + 0.1, session=None))
        assert (again.evidence, again.conversation_id) == ("retry", first.conversation_id)
    finally:
        await leave(a, b)
