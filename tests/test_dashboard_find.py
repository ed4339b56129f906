"""Conversations you can find (issue 11): titles, full-text search, filters and keyset pages, on real
PostgreSQL with recorded Claude Code traffic sent through a real proxy and read from a real dashboard;
and the polish around them (empty states, the start-up URL, times for the browser)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import psycopg
import pytest

from nexus.conversations import repository
from nexus.conversations.relink import REBUILD_SUMMARIES
from nexus.conversations.replay import load_recording
from nexus.conversations.search import TITLE_BACKFILL, Find, few_matches, status_param
from nexus.dashboard import find as dashboard_find
from nexus.dashboard.urls import shown_url
from nexus.errors import ProxyError
from nexus.storage import requests_repo
from tests.harness.control import FakeControl
from tests.harness.servers import free_port, run_dashboard, run_proxy, stop, wait_until_healthy
from tests.helpers import FAST, wait_for
from tests.test_dashboard import call
from tests.test_linking_fixtures import send
from tests.usage_rows import insert_row

FIXTURES = Path(__file__).parent / "fixtures" / "claude_code"
SCENARIOS = ("interactive_title", "compact", "subagents_background")


def replay(scenarios: tuple[str, ...], proxy: str, fake: FakeControl) -> int:
    """Send the recorded requests through the proxy (the fake answers with the recorded replies);
    returns how many `/v1/messages` rows the writer will store."""
    stored = 0
    for scenario in scenarios:
        for rec in load_recording(FIXTURES / scenario):
            if rec.path.split("?")[0] == "/v1/messages":
                fake.replies({"status": rec.status, "body": rec.response})
            status, _ = send(proxy, rec.method, rec.path, rec.headers, rec.body)
            assert status == rec.status, (scenario, rec.file)
            stored += rec.path.startswith("/v1/")
    return stored


def api(base: str, path: str) -> Any:
    reply = call(base, path)
    assert reply.status == 200, (path, reply.status, reply.text[:300])
    return orjson.loads(reply.text)


@pytest.fixture
def recorded(upstream_url: str, migrated_db: str, tmp_path: Path, fake: FakeControl) -> Any:
    """The three scenarios stored through a real proxy; yields the proxy's URL while it runs."""
    env = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "DATABASE_URL": migrated_db,
        "NEXUS_HOME": str(tmp_path),
        "UPSTREAM_MAX_ATTEMPTS": "1",
        **FAST,
    }
    with run_proxy(env) as proxy:
        expected = replay(SCENARIOS, proxy, fake)

        def all_stored() -> bool:
            with psycopg.connect(migrated_db) as conn:
                row = conn.execute("SELECT count(*) FROM api_requests").fetchone()
            return row is not None and row[0] == expected

        wait_for(all_stored, 20, "every recorded request stored")
        yield proxy


def titles(dsn: str) -> dict[str, str | None]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT conversation_id::text, title FROM conversations").fetchall()
    return {r[0]: r[1] for r in rows}


def test_titles_search_and_counts_from_recorded_claude_code_traffic(
    recorded: str, migrated_db: str, tmp_path: Path
) -> None:
    found = titles(migrated_db)
    assert set(found.values()) >= {"TITLE-1: list the files here", "COMPACT-1: print the working directory"}
    for title in found.values():
        assert title and "<" not in title and "Attribution" not in title  # reminders and wrappers stripped
    by_title = {t: c for c, t in found.items()}

    # the API: titles, search by a word of the prompt and of the reply, never by a system reminder's
    listed = api(recorded, "/api/conversations?limit=50")["conversations"]
    assert {c["title"] for c in listed} == set(found.values())

    def search(q: str) -> set[str | None]:
        return {c["title"] for c in api(recorded, f"/api/conversations?q={quote(q)}")["conversations"]}

    assert search("TITLE-1") == {"TITLE-1: list the files here"}  # a word of the first prompt
    assert "TITLE-1: list the files here" in search("file")  # stemmed: "files" (the compaction prompt has it too)
    assert search("welcome") == {"TITLE-1: list the files here"}  # a word of a reply only
    assert search("AFTER-COMPACT-2") == {"COMPACT-1: print the working directory"}  # a later turn's prompt
    assert search("precedence") == set()  # in every first message, but inside a <system-reminder>
    assert search("compact") != set()  # but a word of a prompt is found
    assert search('"working directory" -files') == {"COMPACT-1: print the working directory"}
    requests = api(recorded, "/api/requests?q=welcome")["requests"]
    assert len(requests) == 1 and requests[0]["conversation_id"] == by_title["TITLE-1: list the files here"]

    with run_dashboard({"DATABASE_URL": migrated_db}) as dash:
        page = call(dash, "/conversations").text
        assert "TITLE-1: list the files here" in page and "COMPACT-1: print the working directory" in page
        assert "system-reminder" not in page
        hits = call(dash, "/conversations?q=welcome").text
        assert "TITLE-1: list the files here" in hits and "COMPACT-1" not in hits
        assert "Nothing matches" in call(dash, "/conversations?q=precedence").text
        # branch and sub-agent counts: the list and each conversation's page count the same way
        rows = re.findall(r'data-conversation="([0-9a-f-]+)" data-branches="(\d+)" data-subagents="(\d+)"', page)
        assert len(rows) == len(found)
        assert any(int(sub) >= 2 for _, _, sub in rows)  # the background scenario's two sub-agents
        for conversation, branches, subagents in rows:
            detail = call(dash, f"/conversations/{conversation}").text
            assert f'data-branches="{branches}"' in detail and f'data-subagents="{subagents}"' in detail
            assert f"<h1>{found[conversation]} " in detail  # the title heads its page
        requests_page = call(dash, "/requests?q=welcome").text
        assert requests_page.count('<tr data-request-id="') == 1


def test_search_vectors_and_titles_of_rows_stored_before_the_migration(migrated_db: str) -> None:
    """Rows written before 0012 get their title and search vector from the migration's own backfill
    (the same functions the writer calls)."""
    sql = (Path(repository.__file__).parents[1] / "storage" / "sql" / "0012_conversation_search.sql").read_text()
    backfill = sql[sql.index("UPDATE conversations c SET title") :]
    blocks = [
        {"type": "text", "text": "<system-reminder>zebra</system-reminder>"},
        {"type": "text", "text": "  Migrate the\n  giraffe database  "},
    ]
    message = {"role": "user", "content": blocks}
    key = uuid.uuid4().bytes
    conversation = str(uuid.uuid4())
    now = datetime.now(UTC)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO content_blobs (key, kind, body) VALUES (%s, 0, %s)", (key, orjson.dumps(message).decode())
        )
        rid = insert_row(conn, now, conversation=conversation)
        conn.execute(
            "UPDATE api_requests SET message_keys = ARRAY[%s::bytea], search_vector = NULL, "
            """response_body = '{"content": [{"type": "text", "text": "Done: the okapi table moved."}]}' """
            "WHERE request_id = %s",
            (key, rid),
        )
        conn.execute(
            "INSERT INTO conversations (conversation_id, project_id, first_at, last_at, request_count) "
            "VALUES (%s, 'p1', %s, %s, 1)",
            (conversation, now, now),
        )
        conn.execute(backfill)  # type: ignore[arg-type]
        title = conn.execute("SELECT title FROM conversations WHERE conversation_id = %s", (conversation,)).fetchone()
        assert title == ("Migrate the giraffe database",)
        assert TITLE_BACKFILL.strip() in sql  # the migration and `nexus relink` fill titles the same way
        conn.execute(REBUILD_SUMMARIES)  # type: ignore[arg-type]
        title = conn.execute("SELECT title FROM conversations WHERE conversation_id = %s", (conversation,)).fetchone()
        assert title == ("Migrate the giraffe database",)
        for word, hit in (("giraffe", True), ("okapi", True), ("zebra", False)):
            row = conn.execute(
                "SELECT count(*) FROM api_requests WHERE search_vector @@ websearch_to_tsquery('english', %s)", (word,)
            ).fetchone()
            assert row == ((1,) if hit else (0,)), word


HOSTILE_CONTENT = [
    None,
    42,
    "plain prompt",
    [1, "x", None, {"type": "text"}, {"type": "text", "text": 7}, {"type": "text", "text": "kept"}],
    {"type": "text", "text": "an object, not a list"},
    [{"type": "text", "text": "<system-reminder>never closed " + "x" * 30000}],
    [{"type": "text", "text": "a<command-name>/clear</command-name><command-args>y</command-args>b"}],
    [{"type": "tool_result", "content": "tool output is not a prompt"}],
    [{"type": "text", "text": "w " * 60000}],
]


def test_the_text_functions_never_fail_whatever_the_body_holds(migrated_db: str) -> None:
    """A client's body is hostile: the functions the writer calls in its insert must never refuse a
    row (that would refuse the whole batch)."""
    expected = ["", "", "plain prompt", "kept", "", "", "a  b", "", None]
    with psycopg.connect(migrated_db) as conn:
        for content, want in zip(HOSTILE_CONTENT, expected, strict=True):
            got = conn.execute("SELECT nexus_visible_text(%s::jsonb)", (orjson.dumps(content).decode(),)).fetchone()
            assert got is not None
            if want is not None:
                assert got[0] == want, content
            vector = conn.execute(
                "SELECT length(to_tsvector('english', nexus_visible_text(%s::jsonb)))",
                (orjson.dumps(content).decode(),),
            ).fetchone()
            assert vector is not None
        assert conn.execute("SELECT nexus_search_vector(NULL, NULL, NULL)").fetchone() == ("",)
        assert conn.execute("SELECT nexus_title(NULL)").fetchone() == (None,)


def seed_conversations(dsn: str) -> dict[str, Any]:
    """Seven conversations over two projects and accounts, one failed request, two models."""
    now = datetime.now(UTC).replace(microsecond=0)
    made: dict[str, Any] = {"order": [], "now": now}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(7):
            conversation = str(uuid.uuid4())
            at = now - timedelta(hours=i)
            project = "red" if i % 2 == 0 else "blue"
            model = "claude-opus-4-6" if i == 3 else "claude-sonnet-4-6"
            status = 529 if i == 5 else 200
            rid = insert_row(conn, at, project=project, account=f"acc-{project}", model=model, status=status,
                             conversation=conversation)  # fmt: skip
            conn.execute("UPDATE api_requests SET duration_ms = %s WHERE request_id = %s", (1000 * i, rid))
            conn.execute(
                "INSERT INTO conversations (conversation_id, project_id, first_at, last_at, request_count, title) "
                "VALUES (%s, %s, %s, %s, 1, %s)",
                (conversation, project, at, at, f"conversation number {i}"),
            )
            made["order"].append(conversation)
    return made


def test_filters_and_keyset_pages_in_the_api_and_the_dashboard(
    migrated_db: str, upstream_url: str, tmp_path: Path
) -> None:
    made = seed_conversations(migrated_db)
    order = made["order"]
    env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path)}
    with run_proxy(env) as proxy:

        def pages(path: str, key: str, item: str, extra: str = "") -> list[str]:
            """Every page of a listing, two rows at a time, following next_cursor."""
            seen: list[str] = []
            cursor = None
            while True:
                query = f"limit=2{extra}" + (f"&before={cursor}" if cursor else "")
                body = api(proxy, f"{path}?{query}")
                seen += [row[item] for row in body[key]]
                cursor = body["next_cursor"]
                if cursor is None:
                    return seen

        assert pages("/api/conversations", "conversations", "conversation_id") == order
        assert pages("/api/conversations", "conversations", "conversation_id", "&projectId=red") == order[0::2]
        assert pages("/api/conversations", "conversations", "conversation_id", "&accountId=acc-blue") == order[1::2]
        assert pages("/api/conversations", "conversations", "conversation_id", "&model=claude-opus-4-6") == [order[3]]
        assert pages("/api/conversations", "conversations", "conversation_id", "&errorsOnly=true") == [order[5]]
        since = quote((made["now"] - timedelta(hours=2, minutes=30)).isoformat())
        assert pages("/api/conversations", "conversations", "conversation_id", f"&dateFrom={since}") == order[:3]
        until = quote((made["now"] - timedelta(hours=4, minutes=30)).isoformat())
        assert pages("/api/conversations", "conversations", "conversation_id", f"&dateTo={until}") == order[5:]
        assert pages("/api/conversations", "conversations", "title", "&projectId=blue") == [
            "conversation number 1", "conversation number 3", "conversation number 5"]  # fmt: skip

        requests = pages("/api/requests", "requests", "conversation_id")
        assert requests == order
        assert pages("/api/requests", "requests", "conversation_id", "&errorsOnly=true") == [order[5]]
        assert pages("/api/requests", "requests", "conversation_id", "&status=529") == [order[5]]
        assert pages("/api/requests", "requests", "conversation_id", "&status=200&projectId=blue") == [
            order[1],
            order[3],
        ]
        assert pages("/api/requests", "requests", "conversation_id", "&minDurationMs=4000") == order[4:]
        assert (
            pages("/api/requests", "requests", "conversation_id", "&maxDurationMs=1000&model=claude-sonnet-4-6")
            == order[:2]
        )
        assert api(proxy, "/api/requests?errors_only=1")["pagination"]["total"] == 1

        # bad parameters are 400s in Anthropic's error shape, never ignored
        for path in (
            "/api/conversations?errorsOnly=maybe",
            "/api/conversations?dateFrom=yesterday",
            "/api/requests?status=teapot",
            "/api/requests?status=error",
            "/api/requests?status=999",
            "/api/requests?minDurationMs=-1",
            "/api/requests?q=a&q=b",
        ):
            reply = call(proxy, path)
            assert reply.status == 400, path
            body = orjson.loads(reply.text)
            assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", path

    with run_dashboard({"DATABASE_URL": migrated_db}) as dash:
        red = call(dash, "/conversations?project_id=red").text
        assert all(c in red for c in order[0::2]) and not any(c in red for c in order[1::2])
        errors = call(dash, "/conversations?errors=1").text
        assert order[5] in errors and order[4] not in errors and "checked" in errors
        slow = call(dash, "/requests?" + urlencode({"min_ms": "5000", "project_id": "blue"})).text
        assert slow.count('<tr data-request-id="') == 1  # conversation 5: 5,000 ms, blue
        assert call(dash, "/requests?status=error").text.count('<tr data-request-id="') == 1
        day = made["now"].date().isoformat()
        today = call(dash, f"/conversations?date_from={day}&date_to={day}").text
        assert order[0] in today
        for bad in (
            "/requests?date_from=soon",
            "/requests?status=x",
            "/requests?min_ms=fast",
            "/conversations?date_to=2026-13-45",
        ):
            assert call(dash, bad).status == 400, bad
        first = call(dash, "/requests?project_id=red").text
        assert first.count('<tr data-request-id="') == 4 and 'rel="next"' not in first  # one page


def test_search_uses_the_gin_index(migrated_db: str) -> None:
    """EXPLAIN of the lists' own SQL, on enough rows for the planner to prefer an index."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(
            'INSERT INTO api_requests (request_id, "timestamp", project_id, method, path, conversation_id, '
            "search_vector) "
            "SELECT gen_random_uuid(), now() - make_interval(secs => i), 'p', 'POST', '/v1/messages', "
            "gen_random_uuid(), to_tsvector('english', 'ordinary filler words number ' || i) "
            "FROM generate_series(1, 20000) AS i"
        )
        conn.execute(
            "INSERT INTO conversations (conversation_id, project_id, first_at, last_at) "
            'SELECT conversation_id, project_id, "timestamp", "timestamp" FROM api_requests'
        )
        conn.execute("VACUUM ANALYZE api_requests")  # as autovacuum would: GIN's pending list merged, statistics
        conn.execute("VACUUM ANALYZE conversations")
        clause, params = repository._conversation_filters(None, None, None, None, None, False, Find(q="pangolin"), True)
        plans = [explain(conn, repository.list_sql(clause, True), ["pangolin", *params, 50, 0])]
        clause, params = requests_repo._filters(None, None, None, None, None, Find(q="pangolin"))
        plans.append(explain(conn, requests_repo.list_sql(clause, True), [*params, 50, 0]))
        for plan in plans:
            assert re.search(r"Bitmap Index Scan on api_requests_\w*search\w*", plan), plan

    async def how_many() -> tuple[bool, bool]:
        async with await psycopg.AsyncConnection.connect(migrated_db) as conn:
            return await few_matches(conn, "pangolin"), await few_matches(conn, "ordinary filler")

    # a rare word goes through the index; a word in every row keeps the newest-first walk
    assert asyncio.run(how_many()) == (True, False)


def explain(conn: psycopg.Connection[Any], sql: str, params: list[Any]) -> str:
    return "\n".join(r[0] for r in conn.execute(f"EXPLAIN {sql}", params).fetchall())  # type: ignore[arg-type]


def test_empty_states_say_what_to_do(migrated_db: str) -> None:
    with run_dashboard({"DATABASE_URL": migrated_db, "PORT": "3000"}) as dash:
        for path in ("/", "/requests", "/conversations"):
            page = call(dash, path).text
            assert "No requests yet" in page and "ANTHROPIC_BASE_URL=http://localhost:3000" in page, path
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            insert_row(conn, datetime.now(UTC), project="only")
        page = call(dash, "/requests?project_id=elsewhere").text
        assert "Nothing matches these filters" in page and "No requests yet" not in page
        assert "No requests yet" not in call(dash, "/requests").text


def test_times_are_marked_for_the_browser_and_the_assets_are_served(migrated_db: str) -> None:
    at = datetime(2026, 12, 6, 1, 2, 3, tzinfo=UTC)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        rid = insert_row(conn, at, project="t")
    with run_dashboard({"DATABASE_URL": migrated_db}) as dash:
        page = call(dash, "/requests?project_id=t").text
        assert '<time datetime="2026-12-06T01:02:03.000000Z">2026-12-06 01:02:03</time>' in page
        assert '<script src="/static/time.js" defer></script>' in page and "/static/theme.css" in page
        script = call(dash, "/static/time.js")
        assert script.status == 200 and "datetime" in script.text
        css = call(dash, "/static/theme.css").text
        assert "prefers-color-scheme: dark" in css and "overflow-x: auto" in css
        csp = call(dash, f"/requests/{rid}").header("content-security-policy") or ""
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp  # the script is a file, not inline


def test_the_start_up_line_prints_a_url_that_answers(migrated_db: str) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": migrated_db, "DASHBOARD_HOST": "0.0.0.0", "DASHBOARD_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexus.cli", "dashboard"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert f"on http://localhost:{port}" in line, line
        url = line.rsplit(" ", 1)[1].strip()
        wait_until_healthy(f"http://127.0.0.1:{port}/health", proc)
        assert call(url, "/").status == 200  # not the 403 that http://0.0.0.0:3001 answered
    finally:
        stop(proc)


def test_shown_urls_and_parameters() -> None:
    assert shown_url("0.0.0.0", 3001) == "http://localhost:3001"
    assert shown_url("::", 3001) == "http://localhost:3001"
    assert shown_url("127.0.0.1", 3000) == "http://localhost:3000"
    assert shown_url("10.1.2.3", 8080) == "http://10.1.2.3:8080"
    assert shown_url("fd00::5", 8080) == "http://[fd00::5]:8080"
    assert status_param("error") == (None, True) and status_param("404") == (404, False)
    assert status_param(None) == (None, False)
    for bad in ("99", "600", "٤٠٤", "ok", "4O4"):
        with pytest.raises(ProxyError):
            status_param(bad)
    found, params = dashboard_find.read({"date_to": "2026-12-05", "q": " x ", "status": "500"}, requests=False)
    assert found.date_to == datetime(2026, 12, 5, 23, 59, 59, 999999, tzinfo=UTC)
    assert found.q == "x" and found.status is None and "status" not in params
    found, params = dashboard_find.read({"status": "error", "min_ms": "250"}, requests=True)
    assert found.errors_only and found.min_duration_ms == 250 and found.any()
    assert not Find().any()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_a_browser_shows_times_in_its_own_zone_with_utc_on_hover(migrated_db: str) -> None:
    """Headless Chromium in Tokyo (UTC+9, no daylight saving) loads the page under its real
    Content-Security-Policy: the vendored script rewrites each time and keeps UTC in the title."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        insert_row(conn, datetime(2026, 12, 6, 1, 2, 3, tzinfo=UTC), project="tz")
    with run_dashboard({"DATABASE_URL": migrated_db}) as dash:
        dom = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", f"{dash}/requests?project_id=tz"],
            env={**os.environ, "TZ": "Asia/Tokyo"},
            capture_output=True,
            text=True,
            timeout=90,
        ).stdout
    assert 'title="2026-12-06 01:02:03 UTC"' in dom and ">2026-12-06 10:02:03</time>" in dom, dom[-2000:]
    assert re.search(r"data-time-zone[^>]*>Asia/Tokyo<", dom)
