"""Conversation tracking end to end: real proxy processes, the fake upstream, a real PostgreSQL.

Links are decided before forwarding, stored with each row, readable at /api/requests/{id} and as
conversations at /api/conversations; a restarted proxy (empty memory) links from the database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import psycopg

from tests.harness.control import FakeControl
from tests.harness.servers import run_proxy
from tests.helpers import FAST, get_json, health, wait_for

MODEL = "claude-sonnet-4-6"


def rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM api_requests").fetchone()[0]  # type: ignore[index]


def send(url: str, messages: list[dict[str, Any]], session: str, stream: bool = False) -> tuple[str, str]:
    """One request through the proxy; its X-Request-ID and the reply text."""
    client = anthropic.Anthropic(
        base_url=url,
        api_key="sk-ant-api03-e2e",
        max_retries=0,
        default_headers={"x-claude-code-session-id": session, "train-id": "trip"},
    )
    if stream:
        with client.messages.stream(model=MODEL, max_tokens=50, messages=messages) as s:  # type: ignore[arg-type]
            final = s.get_final_message()
            return s.response.headers["x-request-id"], final.content[0].text  # type: ignore[union-attr]
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=50, messages=messages)  # type: ignore[arg-type]
    return raw.headers["x-request-id"], raw.parse().content[0].text  # type: ignore[union-attr]


def test_turns_and_forks_are_linked_stored_and_listed(
    upstream_url: str, migrated_db: str, tmp_path: Path, fake: FakeControl
) -> None:
    env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path), **FAST}
    first = [
        {"role": "user", "content": [{"type": "text", "text": "plan the trip", "cache_control": {"type": "ephemeral"}}]}
    ]
    with run_proxy(env) as url:
        id1, reply1 = send(url, first, "sess-1")
        history = [{"role": "user", "content": "plan the trip"}, {"role": "assistant", "content": reply1}]
        id2, reply2 = send(url, [*history, {"role": "user", "content": "day two"}], "sess-1", stream=True)
        id3, _ = send(url, [*history, {"role": "user", "content": "another idea"}], "sess-2")
        wait_for(lambda: rows(migrated_db) == 3, what="3 rows")
        r1, r2, r3 = (get_json(f"{url}/api/requests/{i}") for i in (id1, id2, id3))
        conversation = r1["conversation_id"]
        assert conversation and r2["conversation_id"] == r3["conversation_id"] == conversation
        assert (r1["parent_request_id"], r1["branch_id"], r1["request_type"]) == (None, "main", "main")
        assert (r2["parent_request_id"], r2["branch_id"]) == (id1, "main")
        assert r3["parent_request_id"] == id1 and r3["branch_id"] not in ("main", None)
        listing = get_json(f"{url}/api/conversations")
        assert [c["conversation_id"] for c in listing["conversations"]] == [conversation]
        summary = listing["conversations"][0]
        assert (summary["request_count"], summary["branch_count"], summary["latest_request_id"]) == (3, 2, id3)
        assert summary["output_tokens"] == sum(r["output_tokens"] for r in (r1, r2, r3)) > 0
        assert summary["models"] == [MODEL]
        tree = get_json(f"{url}/api/conversations/{conversation}")
        assert [r["request_id"] for r in tree["requests"]] == [id1, id2, id3]
        assert sorted((e["from"], e["to"], e["kind"]) for e in tree["edges"]) == sorted(
            [(id1, id2, "continuation"), (id1, id3, "continuation")]
        )
        assert {b["branch_id"] for b in tree["branches"]} == {"main", r3["branch_id"]}
    # a new process knows nothing in memory: the next turn is linked from the database
    with run_proxy(env) as url:
        turn2 = [*history, {"role": "user", "content": "day two"}, {"role": "assistant", "content": reply2}]
        id4, _ = send(url, [*turn2, {"role": "user", "content": "day three"}], "sess-1")
        wait_for(lambda: rows(migrated_db) == 4, what="4 rows")
        r4 = get_json(f"{url}/api/requests/{id4}")
        assert (r4["conversation_id"], r4["parent_request_id"], r4["branch_id"]) == (conversation, id2, "main")
        assert get_json(f"{url}/api/conversations/{conversation}")["request_count"] == 4


def test_a_lookup_never_holds_the_request_and_still_decides_the_stored_link(
    upstream_url: str, migrated_db: str, tmp_path: Path, fake: FakeControl
) -> None:
    env = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "DATABASE_URL": migrated_db,
        "NEXUS_HOME": str(tmp_path),
        "LINK_LOOKUP_TIMEOUT_MS": "10000",
        "LINK_SHARED": "off",  # the in-memory linker and its background lookup (nexus serve, one worker)
        **FAST,
    }
    first = [{"role": "user", "content": "a question"}]
    with run_proxy(env) as url:
        id1, reply = send(url, first, "sess-lock")
        wait_for(lambda: rows(migrated_db) == 1, what="the first row")
    with run_proxy(env) as url:  # empty memory: the next turn's parent is only in the database
        with psycopg.connect(migrated_db) as lock:
            lock.execute("LOCK TABLE api_requests IN ACCESS EXCLUSIVE MODE")  # every lookup now blocks
            id2, _ = send(url, [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "next"}],
                          "sess-lock")  # fmt: skip
            # answered while the table is still locked: the request did not wait for its lookup
            assert health(url)["linking"]["lookups_pending"] == 1
        wait_for(lambda: rows(migrated_db) == 2, what="the second row, once the lookup answered")
        row = get_json(f"{url}/api/requests/{id2}")
        assert (row["parent_request_id"], row["branch_id"]) == (id1, "main")
        assert health(url)["linking"]["revised_by_lookup"] == 1
