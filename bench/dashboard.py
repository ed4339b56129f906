"""Dashboard and API answer times on a full database (issue 11: every page and answer under 300 ms).

    python -m bench.dashboard [--requests 200000] [--database-url URL] [--pg-log FILE] [--calls 5]

1. Fills the database with `--requests` requests through `nexus demo-data` (the writer's own record
   building and COPY path: titles, search vectors, costs, conversation summaries), unless it already
   holds that many, then ANALYZEs it. Without `--database-url` an embedded PostgreSQL is started in a
   temporary directory.
2. Starts `nexus dashboard` (its cache off: `DASHBOARD_CACHE_TTL=0`, so every call does the work) and
   `nexus proxy` (for `/api/*`), and GETs every dashboard page (/, /requests, /requests/{id},
   /conversations, /conversations/{id}, /usage, with and without filters and search) and every API
   operation of `nexus.api.contract.OPERATIONS`: one cold call, then the median of `--calls` calls.
3. With the server's log readable (`--pg-log`, or the embedded server's), the database logs statements
   slower than `--explain-ms` while the servers run (`log_min_duration_statement`; the embedded server
   has no `auto_explain`), and the slowest statement behind each URL is run again under
   `EXPLAIN (ANALYZE, BUFFERS)` with its logged parameters, so a slow page names its query and plan.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg

from nexus.storage.embedded import start_embedded
from nexus.storage.migrate import migrate
from tests.harness.servers import run_dashboard, run_proxy

KEY = "nexus-bench-dashboard-key-0123456789"
TARGET_MS = 300.0
#: name, path, status, bytes, cold ms, median ms, slow statements logged meanwhile
Row = tuple[str, str, int, int, float, float, list[tuple[float, str]]]
_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \w+ \[\d+\] ", re.M)
_SLOW = re.compile(r"LOG:  duration: ([0-9.]+) ms  (?:execute [^:]*|statement|bind [^:]*|parse [^:]*): (.*)", re.S)
_PARAM = re.compile(r"\$(\d+) = (NULL|'(?:[^']|'')*')")


def fill(url: str, requests: int, days: int) -> None:
    with psycopg.connect(url) as conn:
        have = conn.execute("SELECT count(*) FROM api_requests").fetchone()
    if have is not None and have[0] >= requests:
        print(f"the database already holds {have[0]:,} requests", file=sys.stderr)
        return
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "nexus.cli", "demo-data", "--requests", str(requests), "--days", str(days),
         "--batch-rows", "1000"],
        env={**os.environ, "DATABASE_URL": url}, check=True,
    )  # fmt: skip
    print(f"filled in {time.monotonic() - started:.0f} s", file=sys.stderr)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")


def samples(url: str) -> dict[str, str]:
    """Ids and filter values that exist: the newest request, the biggest conversation, a project..."""
    with psycopg.connect(url) as conn:

        def one(sql: str) -> str:
            row = conn.execute(sql).fetchone()  # type: ignore[arg-type]
            return "" if row is None or row[0] is None else str(row[0])

        return {
            "request": one('SELECT request_id FROM api_requests ORDER BY "timestamp" DESC LIMIT 1'),
            "old_request": one('SELECT request_id FROM api_requests ORDER BY "timestamp" LIMIT 1'),
            "subtask_parent": one(
                "SELECT parent_task_request_id FROM api_requests WHERE is_subtask "
                'AND parent_task_request_id IS NOT NULL ORDER BY "timestamp" DESC LIMIT 1'
            ),
            "conversation": one("SELECT conversation_id FROM conversations ORDER BY request_count DESC LIMIT 1"),
            "recent_conversation": one("SELECT conversation_id FROM conversations ORDER BY last_at DESC LIMIT 1"),
            "project": one("SELECT project_id FROM conversations ORDER BY last_at DESC LIMIT 1"),
            "account": one(
                'SELECT account_id FROM api_requests WHERE account_id IS NOT NULL ORDER BY "timestamp" DESC LIMIT 1'
            ),
            "model": "claude-opus-4-6",
        }


def dashboard_pages(s: dict[str, str]) -> list[tuple[str, str]]:
    p, a, m = quote(s["project"]), quote(s["account"]), quote(s["model"])
    return [
        ("overview", "/"),
        ("requests", "/requests"),
        ("requests project", f"/requests?project_id={p}"),
        ("requests model+errors", f"/requests?model={m}&errors=1"),
        ("requests search", "/requests?q=proxy"),
        ("requests search rare", "/requests?q=stream+header+cache"),
        ("requests slow", "/requests?min_ms=30000"),
        ("requests date range", "/requests?date_from=2000-01-01&date_to=2000-01-31"),
        ("request newest", f"/requests/{s['request']}"),
        ("request oldest", f"/requests/{s['old_request']}"),
        ("conversations", "/conversations"),
        ("conversations project", f"/conversations?project_id={p}"),
        ("conversations account", f"/conversations?account_id={a}"),
        ("conversations search", "/conversations?q=proxy"),
        ("conversations errors", "/conversations?errors=1"),
        ("conversation biggest", f"/conversations/{s['conversation']}"),
        ("conversation recent", f"/conversations/{s['recent_conversation']}"),
        ("usage", "/usage"),
        ("usage project", f"/usage?project_id={p}"),
        ("usage account", f"/usage?account_id={a}"),
    ]


def api_calls(s: dict[str, str]) -> list[tuple[str, str]]:
    import nexus.api.openapi  # noqa: F401 (imports every module that declares an operation)
    from nexus.api.contract import OPERATIONS

    values = {"conversationId": s["conversation"], "requestId": s["request"], "accountId": s["account"] or "x"}
    out = []
    for op in OPERATIONS:
        path = op.path
        for param in op.path_params:
            value = s["subtask_parent"] if op.path.endswith("/subtasks") and s["subtask_parent"] else values[param.name]
            path = path.replace("{" + param.name + "}", quote(value))
        out.append((op.operation_id, path))
        names = {p.name for p in op.params}
        if "projectId" in names:
            out.append((op.operation_id + " project", f"{path}?projectId={quote(s['project'])}"))
        if "q" in names:
            out.append((op.operation_id + " search", f"{path}?q=proxy"))
        if "accountId" in names and "{" not in op.path:
            out.append((op.operation_id + " account", f"{path}?accountId={quote(s['account'])}"))
    return out


def get(url: str, headers: dict[str, str]) -> tuple[int, int, float]:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (loopback)
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:  # noqa: S310 (loopback)
            body = resp.read()
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), int(exc.code)
    return status, len(body), (time.perf_counter() - started) * 1000


class Plans:
    """The statements the server logged as slow (`log_min_duration_statement`) since the last `take()`:
    (duration ms, statement with its logged parameters put back in)."""

    def __init__(self, log: Path | None) -> None:
        self.log = log
        self.offset = log.stat().st_size if log is not None and log.exists() else 0

    def take(self) -> list[tuple[float, str]]:
        if self.log is None or not self.log.exists():
            return []
        with self.log.open("rb") as f:
            f.seek(self.offset)
            text = f.read().decode("utf-8", "replace")
            self.offset = f.tell()
        entries = _ENTRY.split(text)
        found = []
        for i, entry in enumerate(entries):
            m = _SLOW.match(entry)
            if m is None:
                continue
            statement = m[2].strip()
            following = entries[i + 1] if i + 1 < len(entries) else ""
            if following.lower().startswith("detail:  parameters:"):
                values = {int(n): v for n, v in _PARAM.findall(following)}
                statement = re.sub(r"\$(\d+)\b", lambda p, v=values: v.get(int(p[1]), p[0]), statement)
            found.append((float(m[1]), statement))
        return sorted(found, reverse=True)


def measure(base: str, calls: list[tuple[str, str]], n: int, headers: dict[str, str], plans: Plans) -> list[Row]:
    rows = []
    for name, path in calls:
        plans.take()
        status, size, cold = get(base + path, headers)
        times = [get(base + path, headers)[2] for _ in range(n)]
        rows.append((name, path, status, size, cold, statistics.median(times), plans.take()))
    return rows


def report(title: str, rows: list[Row]) -> None:
    print(f"\n{title}\n{'name':34} {'status':>6} {'KiB':>7} {'cold ms':>8} {'median ms':>9}  path")
    for name, path, status, size, cold, median, _ in rows:
        flag = "  <-- over 300 ms" if median > TARGET_MS else ""
        print(f"{name[:34]:34} {status:6} {size / 1024:7.1f} {cold:8.1f} {median:9.1f}  {path[:70]}{flag}")


def explain(url: str, rows: list[Row], lines: int) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of the slowest statement behind each URL that logged one."""
    with psycopg.connect(url, autocommit=True) as conn:
        for name, _path, _status, _size, _cold, median, found in rows:
            if not found:
                continue
            ms, statement = found[0]
            print(f"\n--- {name} (median {median:.0f} ms): slowest statement {ms:.0f} ms")
            print("   " + " ".join(statement.split())[:400])
            if not statement.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            try:
                plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement).fetchall()  # type: ignore[arg-type]
            except psycopg.Error as exc:
                print(f"   (no plan: {exc.__class__.__name__}: {str(exc).strip()[:200]})")
                continue
            for (line,) in plan[:lines]:
                print("   " + line[:200])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--database-url")
    parser.add_argument("--pg-log", type=Path, help="The server's log file, for the slow statements.")
    parser.add_argument("--calls", type=int, default=5, help="Calls per URL after the cold one (median).")
    parser.add_argument("--explain-ms", type=int, default=100, help="Log (and EXPLAIN) statements slower than this.")
    parser.add_argument("--plan-lines", type=int, default=30)
    args = parser.parse_args()
    with ExitStack() as stack:
        url, log = args.database_url, args.pg_log
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nexus-bench-dash-")))
        if url is None:
            url, stop = start_embedded(home / "pg")
            stack.callback(stop)
            log = log or home / "pg" / "log"
        migrate(url)
        fill(url, args.requests, args.days)
        with psycopg.connect(url) as conn:
            counts = conn.execute("SELECT (SELECT count(*) FROM api_requests), (SELECT count(*) FROM conversations)")
            stored, conversations = counts.fetchone() or (0, 0)
        database = urlsplit(url).path.lstrip("/") or "postgres"
        if log is not None:
            with psycopg.connect(url, autocommit=True) as conn:
                slow = f'ALTER DATABASE "{database}" SET log_min_duration_statement = {int(args.explain_ms)}'
                conn.execute(slow)  # type: ignore[arg-type]

            def reset() -> None:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f'ALTER DATABASE "{database}" RESET ALL')  # type: ignore[arg-type]

            stack.callback(reset)
        s = samples(url)
        env = {"DATABASE_URL": url, "NEXUS_HOME": str(home / "home"), "DASHBOARD_CACHE_TTL": "0"}
        dash = stack.enter_context(run_dashboard(env))
        proxy_env = {**env, "DASHBOARD_API_KEY": KEY, "CLAUDE_API_BASE_URL": "http://127.0.0.1:9"}
        proxy = stack.enter_context(run_proxy(proxy_env))
        plans = Plans(log)
        print(
            f"\n{stored:,} stored requests, {conversations:,} conversations; "
            f"median of {args.calls} calls after a cold one"
        )
        pages = measure(dash, dashboard_pages(s), args.calls, {}, plans)
        report("dashboard pages", pages)
        api = measure(proxy, api_calls(s), args.calls, {"Authorization": f"Bearer {KEY}"}, plans)
        report("API answers", api)
        over = [r for r in pages + api if r[5] > TARGET_MS]
        print(f"\n{len(over)} of {len(pages) + len(api)} over {TARGET_MS:.0f} ms (median)")
        if log is not None:
            print(f"\nplans of the slowest statement over {args.explain_ms} ms behind each URL")
            explain(url, pages + api, args.plan_lines)


if __name__ == "__main__":
    main()
