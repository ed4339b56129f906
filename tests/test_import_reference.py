"""`nexus import-reference` against a real PostgreSQL: a reference-shaped database (tests/reference_db.py,
loaded with the recorded Claude Code traffic as the reference stored it, plus hostile rows) imported into
a migrated Nexus database. Checked: rows, bodies (content-addressed, rebuilt equal), usage, threading by
Nexus's rules after the relink, no secret copied, idempotency, and resumption after --limit and after an
interruption."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from psycopg import AsyncConnection

from nexus.importing.run import LOCK_KEY, ImportBusyError, Report, import_reference
from nexus.importing.source import NotReferenceError
from nexus.storage.requests_repo import get_request
from tests import reference_db
from tests.conftest import with_database
from tests.helpers import wait_for
from tests.reference_db import SECRETS, Loaded

FIELDS = ("request_type", "parent_file", "is_subtask", "parent_task_file")


@pytest.fixture(scope="module")
def reference(database_admin_url: str) -> Iterator[tuple[str, Loaded]]:
    name = f"reference_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = with_database(database_admin_url, name)
    try:
        loaded = reference_db.load(dsn)
        reference_db.add_analyses(dsn, loaded)
        yield dsn, loaded
    finally:
        with psycopg.connect(database_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def expected_counts(loaded: Loaded) -> tuple[int, int, int]:
    """(rows in the reference, rows to import, rows to fail)."""
    failed = sum(1 for v in loaded.hostile.values() if v == "failed")
    total = len(loaded.requests) + len(loaded.hostile)
    return total, total - failed, failed


def run(source: str, dsn: str, **options: Any) -> Report:
    return import_reference(source, dsn, progress=False, **options)


def stored(dsn: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "SELECT request_id::text AS id, project_id, account_id, path, request_type, conversation_id::text, "
            "branch_id, parent_request_id::text, is_subtask, parent_task_request_id::text, response_status, "
            "response_body, usage, input_tokens, output_tokens, cache_creation_input_tokens, "
            "cache_read_input_tokens, outcome, error, request_headers, response_headers, response_streaming, "
            "tool_call_count FROM api_requests"
        )
        return {r["id"]: r for r in cur.fetchall()}


def check_threading(loaded: Loaded, rows: dict[str, dict[str, Any]]) -> None:
    """Every scenario's expected links (tests/fixtures/claude_code/*/expected.jsonl) hold on the imported
    rows, with the reference's conversation id kept for each conversation's first request."""
    by_file = {(scenario, file): rid for rid, (scenario, file, _) in loaded.requests.items()}
    for scenario in reference_db.SCENARIOS:
        wanted = reference_db.expected(scenario)
        files = {rid: file for (s, file), rid in by_file.items() if s == scenario}
        conversations: dict[str, str] = {}
        branches: dict[tuple[str, str], tuple[str, str]] = {}
        for file, want in wanted.items():
            rid = by_file.get((scenario, file))
            if rid is None:
                continue  # not stored by the reference (a 529, count_tokens, HEAD)
            row = rows[rid]
            got = {
                "request_type": row["request_type"],
                "parent_file": files.get(row["parent_request_id"] or ""),
                "is_subtask": row["is_subtask"],
                "parent_task_file": files.get(row["parent_task_request_id"] or ""),
            }
            assert got == {k: want[k] for k in FIELDS}, (scenario, file)
            if want["conversation"] is None:
                assert not any(r["parent_request_id"] == rid for r in rows.values()), (scenario, file)
                continue
            conversation = row["conversation_id"]
            assert conversations.setdefault(want["conversation"], conversation) == conversation, (scenario, file)
            key = (want["conversation"], want["branch"])
            assert branches.setdefault(key, (conversation, row["branch_id"])) == (conversation, row["branch_id"])
            assert (row["branch_id"] == "main") == (want["branch"] == "main"), (scenario, file)
        assert len(set(conversations.values())) == len(conversations), f"{scenario}: conversations merged"
        assert len(set(branches.values())) == len(branches), f"{scenario}: branches merged"
        for label, conversation in conversations.items():
            assert conversation == loaded.conversations[(scenario, label)], f"{scenario}: id of {label} not kept"


def test_the_cli_imports_threads_and_summarises(
    reference: tuple[str, Loaded], migrated_db: str, tmp_path: Path
) -> None:
    source, loaded = reference
    total, good, bad = expected_counts(loaded)
    env = {**os.environ, "DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "nexus.cli", "import-reference", "--from", source, "--batch-size", "7"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2, out.stderr  # finished, with failed rows
    assert f"requests: {total} read, {good} imported, 0 skipped (already here), {bad} failed" in out.stdout
    for rid, fate in loaded.hostile.items():
        assert (f"failed {rid}: " in out.stdout) == (fate == "failed")
    assert "projects: 2 read, 2 imported" in out.stdout
    assert "conversation_analyses: 2 read, 2 imported" in out.stdout
    assert "credentials: 1 not imported" in out.stdout and "acc_team_alpha" in out.stdout
    assert "project_api_keys: 1 client keys not imported" in out.stdout
    assert "relink from " in out.stdout
    assert f"import-reference: {total}/{total} requests read" in out.stderr  # not a TTY: plain progress lines
    for secret in SECRETS:
        assert secret not in out.stdout + out.stderr
    rows = stored(migrated_db)
    assert len(rows) == good
    check_threading(loaded, rows)
    again = subprocess.run(
        [sys.executable, "-m", "nexus.cli", "import-reference", "--from", source, "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0, again.stdout + again.stderr  # nothing read, so nothing failed
    assert "requests: 0 read, 0 imported, 0 skipped (already here), 0 failed" in again.stdout
    assert "relink" not in again.stdout and again.stderr == ""
    assert len(stored(migrated_db)) == good


def test_rows_bodies_and_usage(reference: tuple[str, Loaded], migrated_db: str) -> None:
    source, loaded = reference
    run(source, migrated_db)
    rows = stored(migrated_db)
    details = asyncio.run(read_details(migrated_db, list(rows)))
    for rid, (scenario, _file, rec) in loaded.requests.items():
        row = rows[rid]
        assert (row["project_id"], row["account_id"], row["path"]) == (scenario, "acc_team_alpha", "/v1/messages")
        assert details[rid]["request_body"] == orjson.loads(rec.body or b"null")  # rebuilt from its parts
        assert row["response_body"] == rec.response and row["response_status"] == 200
        usage = rec.response["usage"]
        assert row["usage"] == usage
        assert row["input_tokens"] == usage["input_tokens"] and row["output_tokens"] == usage["output_tokens"]
        assert row["cache_read_input_tokens"] == usage.get("cache_read_input_tokens")
        assert row["outcome"] == "completed" and row["error"] is None
        assert row["response_headers"] == {"content-type": "application/json", "request-id": "req_upstream"}
    with psycopg.connect(migrated_db) as conn:
        blobs = (conn.execute("SELECT count(*) FROM content_blobs WHERE kind = 0").fetchone() or [0])[0]
        summaries = (conn.execute("SELECT sum(request_count) FROM conversations").fetchone() or [0])[0]
    bodies = [d["request_body"] for d in details.values()]
    messages = [m for b in bodies if isinstance(b, dict) for m in b.get("messages", [])]
    distinct = {orjson.dumps(m, option=orjson.OPT_SORT_KEYS) for m in messages}
    assert blobs == len(distinct) < len(messages) / 1.5  # each distinct message stored once
    assert summaries == sum(1 for r in rows.values() if r["conversation_id"] is not None)
    check_threading(loaded, rows)


async def read_details(dsn: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The stored requests as `GET /api/requests/{id}` reads them (bodies rebuilt from the content store)."""
    out = {}
    async with await AsyncConnection.connect(dsn) as conn:
        for rid in ids:
            detail = await get_request(conn, rid)
            assert detail is not None, rid
            out[rid] = detail
    return out


def test_hostile_rows_and_secrets(reference: tuple[str, Loaded], migrated_db: str) -> None:
    source, loaded = reference
    report = run(source, migrated_db)
    rows = stored(migrated_db)
    failed = {rid for rid, _ in report.failed}
    for rid, fate in loaded.hostile.items():
        assert (rid in rows, rid in failed) == ((True, False) if fate == "imported" else (False, True)), rid
    reasons = dict(report.failed)
    assert sum(1 for r in reasons.values() if r == "project_id is empty") == 2
    assert any("control characters" in r for r in reasons.values())
    chunked = rows[loaded.chunked]
    assert chunked["response_streaming"] is True
    assert chunked["response_body"]["content"] == [{"type": "text", "text": "from chunks"}]
    assert (chunked["input_tokens"], chunked["output_tokens"]) == (11, 7)
    odd = [r for r in rows.values() if r["project_id"] == "hostile"]
    assert {r["outcome"] for r in odd} == {"completed", "upstream_error"}
    assert [r["error"] for r in odd if r["response_status"] == 500] == ["upstream exploded"]
    not_an_object = next(r for r in odd if r["response_body"] == [1, 2, 3])
    assert not_an_object["request_headers"] == {} and not_an_object["input_tokens"] is None
    with psycopg.connect(migrated_db) as conn:
        kept = conn.execute(
            "SELECT envelope, envelope_raw, storage_repairs FROM api_requests WHERE request_id = %s",
            (not_an_object["id"],),
        ).fetchone()
    assert kept == ({"unparsed_body": '"just a string"'}, b'"just a string"', ["request_not_json"])
    with_secrets = next(r for r in odd if r["path"].startswith("/v1/messages?key="))
    assert with_secrets["request_headers"] == {"user-agent": "ua"}
    assert with_secrets["response_headers"] == {}
    assert "[redacted]" in with_secrets["path"]
    assert (with_secrets["input_tokens"], with_secrets["output_tokens"]) == (3, 4)
    with psycopg.connect(migrated_db) as conn:
        tables = [
            t
            for (t,) in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
                "AND table_type = 'BASE TABLE'"
            ).fetchall()
        ]
        for table in tables:
            for secret in SECRETS:
                hit = conn.execute(
                    psycopg.sql.SQL("SELECT count(*) FROM {} t WHERE t::text LIKE %s").format(
                        psycopg.sql.Identifier(table)
                    ),
                    (f"%{secret}%",),
                ).fetchone()
                assert hit == (0,), (table, secret)
        projects = conn.execute(
            "SELECT project_id, name, slack_channel, system_prompt FROM reference_projects ORDER BY 1"
        ).fetchall()
        analyses = dict(conn.execute("SELECT conversation_id::text, status FROM reference_analyses").fetchall())
    assert projects == [
        ("compact", "Compact", None, None),
        ("tool_loop", "Tool loop", "#alpha", [{"type": "text", "text": "Be brief."}]),
    ]
    assert analyses == {
        loaded.conversations[("tool_loop", "A")]: "completed",
        loaded.conversations[("compact", "A")]: "pending",
    }
    assert report.secrets.credential_accounts == ["acc_team_alpha"]
    assert (report.secrets.client_keys, report.secrets.project_keys, report.secrets.slack_webhooks) == (1, 1, 1)


def test_idempotent(reference: tuple[str, Loaded], migrated_db: str) -> None:
    source, loaded = reference
    total, good, bad = expected_counts(loaded)
    first = run(source, migrated_db)
    assert (first.read, first.imported, first.skipped, len(first.failed)) == (total, good, 0, bad)
    before = stored(migrated_db)
    again = run(source, migrated_db)  # resumes after the last row: nothing to read
    assert (again.read, again.imported, again.relink) == (0, 0, None)
    over = run(source, migrated_db, restart=True)  # reads everything again, skips what is here
    assert (over.read, over.imported, over.skipped, len(over.failed)) == (total, 0, good, bad)
    assert over.relink is None and over.projects.imported == 0 and over.analyses.imported == 0
    assert stored(migrated_db) == before


def test_resumes_after_a_limit(reference: tuple[str, Loaded], migrated_db: str) -> None:
    source, loaded = reference
    total, good, bad = expected_counts(loaded)
    first = run(source, migrated_db, limit=7, batch_size=3)
    assert first.read == 7 and not first.complete and first.relink is not None
    assert len(stored(migrated_db)) == first.imported
    rest = run(source, migrated_db, batch_size=3)
    assert rest.resumed_after is not None and rest.read == total - 7 and rest.complete
    assert first.imported + rest.imported == good and len(first.failed) + len(rest.failed) == bad
    rows = stored(migrated_db)
    assert len(rows) == good
    check_threading(loaded, rows)


def test_resumes_after_an_interruption(reference: tuple[str, Loaded], migrated_db: str) -> None:
    """Stopped mid-run (after two batches, before its relink): the next run stores the rest once and
    relinks from the first row of the stopped run, so the whole history is threaded."""
    source, loaded = reference
    total, good, _ = expected_counts(loaded)
    batches: list[int] = []

    def stop_after_two(report: Report) -> None:
        batches.append(report.read)
        if len(batches) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(source, migrated_db, batch_size=5, on_batch=stop_after_two)
    assert batches == [5, 10]
    failed_in_them = sum(1 for rid in _first_ids(source, 10) if loaded.hostile.get(rid) == "failed")
    assert len(stored(migrated_db)) == 10 - failed_in_them  # the two batches were stored, nothing after
    rest = run(source, migrated_db, batch_size=5)
    assert rest.read == total - 10 and rest.relink is not None
    assert rest.relink_from is not None and rest.relink.rows == good  # from the first row ever imported
    rows = stored(migrated_db)
    assert len(rows) == good
    check_threading(loaded, rows)


def _first_ids(source: str, n: int) -> set[str]:
    with psycopg.connect(source) as conn:
        return {
            r[0]
            for r in conn.execute(
                "SELECT request_id::text FROM api_requests ORDER BY timestamp, request_id LIMIT %s", (n,)
            )
        }


def test_refuses_what_is_not_a_reference_database(migrated_db: str, database_admin_url: str) -> None:
    with pytest.raises(NotReferenceError, match="Nexus database"):
        run(migrated_db, migrated_db)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nexus.cli",
            "import-reference",
            "--from",
            "postgresql://someone:hunter2@127.0.0.1:1/ref",
        ],
        env={**os.environ, "DATABASE_URL": migrated_db},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1 and "import stopped" in out.stderr and "hunter2" not in out.stderr + out.stdout


def test_rows_postgresql_refuses_are_counted_and_quarantined(reference: tuple[str, Loaded], migrated_db: str) -> None:
    """A batch PostgreSQL refuses for some of its rows goes through the writer's isolation: the other rows
    are stored, the refused ones quarantined and reported failed, and the import goes on."""
    source, loaded = reference
    total, good, bad = expected_counts(loaded)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE api_requests ADD CONSTRAINT not_fork_twice CHECK (project_id <> 'fork_twice')")
    refused = {rid for rid, (scenario, _, _) in loaded.requests.items() if scenario == "fork_twice"}
    report = run(source, migrated_db, batch_size=20)
    assert (report.read, report.imported, len(report.failed)) == (total, good - len(refused), bad + len(refused))
    reasons = dict(report.failed)
    assert all(reasons[rid].startswith("refused by PostgreSQL (quarantined): [23514]") for rid in refused)
    with psycopg.connect(migrated_db) as conn:
        kept = {r for (r,) in conn.execute("SELECT request_id::text FROM storage_quarantine").fetchall()}
        state = conn.execute(
            "SELECT rows_read, imported, skipped, failed FROM reference_import_state WHERE table_name = 'api_requests'"
        ).fetchone()
    assert kept == refused
    assert state == (total, report.imported, 0, len(report.failed))  # the checkpoint counts them alike
    assert set(stored(migrated_db)) == set(loaded.requests) - refused | {
        rid for rid, fate in loaded.hostile.items() if fate == "imported"
    }


def test_history_gets_its_own_days(reference: tuple[str, Loaded], migrated_db: str) -> None:
    """Imported rows land in daily partitions like the proxy's, so retention drops old days of them too."""
    source, _ = reference
    run(source, migrated_db)
    with psycopg.connect(migrated_db) as conn:
        in_default = conn.execute("SELECT count(*) FROM api_requests_default").fetchone()
        days = conn.execute(
            "SELECT DISTINCT tableoid::regclass::text, (timestamp AT TIME ZONE 'UTC')::date FROM api_requests"
        ).fetchall()
    assert in_default == (0,)
    assert all(name == f"api_requests_{day:%Y%m%d}" for name, day in days) and len(days) >= 2


def test_an_old_schema(database_admin_url: str, migrated_db: str) -> None:
    """OLD versions called the project column `domain` and lacked most others: what exists is read."""
    name = f"reference_old_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    source = with_database(database_admin_url, name)
    try:
        recording = reference_db.load_recording(reference_db.TRAFFIC / "tool_loop")[:2]
        ids = [str(uuid.uuid4()) for _ in recording]
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE api_requests (request_id uuid PRIMARY KEY, domain varchar(255) NOT NULL, "
                '"timestamp" timestamptz NOT NULL, method varchar(10), path varchar(255), body jsonb, '
                "response_status int, response_body jsonb)"
            )
            for rid, rec in zip(ids, recording, strict=True):
                conn.execute(
                    "INSERT INTO api_requests VALUES (%s, 'old.example.com', to_timestamp(%s), 'POST', "
                    "'/v1/messages', %s::jsonb, 200, %s)",
                    (rid, rec.timestamp, (rec.body or b"").decode(), psycopg.types.json.Jsonb(rec.response)),
                )
        report = run(source, migrated_db)
        assert (report.read, report.imported, report.failed) == (2, 2, [])
        rows = stored(migrated_db)
        assert {r["project_id"] for r in rows.values()} == {"old.example.com"}
        assert rows[ids[1]]["parent_request_id"] == ids[0]
        assert rows[ids[1]]["input_tokens"] == recording[1].response["usage"]["input_tokens"]
    finally:
        with psycopg.connect(database_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_one_import_at_a_time(reference: tuple[str, Loaded], migrated_db: str) -> None:
    source, _ = reference
    with psycopg.connect(migrated_db, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        with pytest.raises(ImportBusyError):
            run(source, migrated_db)
        other.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    assert stored(migrated_db) == {}
    assert run(source, migrated_db, limit=1).read == 1  # the lock was given back


def test_bytes_that_are_not_text_fail_only_their_row(database_admin_url: str, migrated_db: str) -> None:
    """A SQL_ASCII database holds any bytes: a row whose text is not UTF-8 is counted failed, the rest go in."""
    name = f"reference_ascii_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'")
    source = with_database(database_admin_url, name)
    try:
        ids = [str(uuid.uuid4()) for _ in range(4)]
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute(reference_db.SCHEMA.read_text())  # type: ignore[arg-type]
            for n, rid in enumerate(ids):
                path = "E'/v1/messages\\xff'" if n == 2 else "'/v1/messages'"
                conn.execute(
                    "INSERT INTO api_requests (request_id, project_id, timestamp, path, body) "  # noqa: S608
                    f"VALUES (%s, 'p', now() + %s * interval '1 second', {path}, '{{\"messages\": []}}')",
                    (rid, n),
                )
        report = run(source, migrated_db, batch_size=10)
        assert (report.read, report.imported) == (4, 3)
        assert [rid for rid, _ in report.failed] == [ids[2]]
        assert report.failed[0][1].startswith("unreadable: ")
        assert set(stored(migrated_db)) == set(ids) - {ids[2]}
    finally:
        with psycopg.connect(database_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_resumes_after_a_killed_process(reference: tuple[str, Loaded], migrated_db: str, tmp_path: Path) -> None:
    """`kill -9` in the middle of a batch's transaction (held there by a lock on content_blobs): nothing of
    that batch is stored, and the next run goes on from the last batch committed."""
    source, loaded = reference
    total, good, _ = expected_counts(loaded)
    env = {**os.environ, "DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path)}
    command = [sys.executable, "-m", "nexus.cli", "import-reference", "--from", source, "--no-progress"]
    subprocess.run([*command, "--limit", "10", "--batch-size", "5"], env=env, capture_output=True, timeout=120)
    before = stored(migrated_db)
    with psycopg.connect(migrated_db) as blocker:
        blocker.execute("LOCK TABLE content_blobs IN SHARE ROW EXCLUSIVE MODE")  # held until rollback
        proc = subprocess.Popen(
            [*command, "--batch-size", "5"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            with psycopg.connect(migrated_db, autocommit=True) as watch:
                wait_for(
                    lambda: (
                        watch.execute(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO content_blobs%%'"
                        ).fetchone()
                        == (1,)
                    ),
                    30,
                    "the import blocked inside its batch",
                )
        finally:
            proc.kill()
            proc.communicate(timeout=30)
        blocker.rollback()
    assert proc.returncode == -9
    assert stored(migrated_db) == before  # the killed batch left nothing
    rest = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert f"requests: {total - 10} read" in rest.stdout, rest.stdout + rest.stderr
    rows = stored(migrated_db)
    assert len(rows) == good
    check_threading(loaded, rows)


#: The shape of Nexus's own analyses table (AI analysis, migration 0011 on its branch), created here only
#: where the migrations have not: the import copies into whatever columns the table has.
NEXUS_ANALYSES = """
DO $$ BEGIN
    CREATE TYPE conversation_analysis_status AS ENUM ('pending', 'processing', 'completed', 'failed');
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
CREATE TABLE IF NOT EXISTS conversation_analyses (
    id bigserial PRIMARY KEY, conversation_id uuid NOT NULL, branch_id text NOT NULL DEFAULT 'main',
    project_id text, status conversation_analysis_status NOT NULL DEFAULT 'pending', model_used text,
    analysis_content text, analysis_data jsonb, raw_response text, error_message text,
    retry_count int NOT NULL DEFAULT 0, prompt_tokens int, completion_tokens int, completed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (conversation_id, branch_id)
);
"""


def test_finished_analyses_join_nexus_own(reference: tuple[str, Loaded], migrated_db: str) -> None:
    """Where Nexus has its own analyses table, finished reference analyses are added to it (on the
    conversation the relink kept), and a job that never finished is not queued again."""
    source, loaded = reference
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(NEXUS_ANALYSES)  # type: ignore[arg-type]
    report = run(source, migrated_db)
    assert (report.analyses_shown, report.analyses_pending) == (1, 1)
    done = loaded.conversations[("tool_loop", "A")]
    with psycopg.connect(migrated_db) as conn:
        rows = conn.execute(
            "SELECT conversation_id::text, branch_id, project_id, status::text, analysis_data, retry_count, "
            "prompt_tokens FROM conversation_analyses"
        ).fetchall()
        on_a_conversation = conn.execute(
            "SELECT count(*) FROM api_requests WHERE conversation_id = %s", (done,)
        ).fetchone()
    assert rows == [(done, "main", "tool_loop", "completed", {"summary": "a tool loop", "outcome": "done"}, 0, 100)]
    assert on_a_conversation == (6,)  # the analysis names a conversation Nexus shows
    again = run(source, migrated_db, restart=True)
    assert again.analyses_shown == 0


def test_a_second_reference_reports_only_its_own_analyses(
    reference: tuple[str, Loaded], migrated_db: str, database_admin_url: str
) -> None:
    """Importing a second reference database (another team's, or an older one) must not report the
    first one's unfinished analyses as its own: the summary said "1 analyses never finished in the
    reference" for a reference that has none."""
    source, _ = reference
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(NEXUS_ANALYSES)  # type: ignore[arg-type]
    assert run(source, migrated_db, relink=False).analyses_pending == 1
    name = f"reference_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    other = with_database(database_admin_url, name)
    try:
        with psycopg.connect(other, autocommit=True) as conn:
            conn.execute(reference_db.SCHEMA.read_text())  # type: ignore[arg-type]
        report = run(other, migrated_db, relink=False)
        assert report.analyses.read == 0
        assert (report.analyses_shown, report.analyses_pending) == (0, 0)
    finally:
        with psycopg.connect(database_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
