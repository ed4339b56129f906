"""The dashboard as a real process on a real PostgreSQL: pages, live updates, auth, health, read-only role."""

from __future__ import annotations

import http.client
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import anthropic
import psycopg
import pytest

from tests.harness.servers import run_dashboard, run_proxy
from tests.helpers import set_database_reachable, wait_for
from tests.usage_rows import insert_row

KEY = "dashboard-key-0123456789"


class Reply:
    def __init__(self, resp: http.client.HTTPResponse) -> None:
        self.status = resp.status
        self.headers = resp.getheaders()
        self.text = resp.read().decode("utf-8", "replace")

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    def cookies(self) -> dict[str, str]:
        """Set-Cookie name -> the whole header value."""
        return {v.split("=", 1)[0]: v for k, v in self.headers if k.lower() == "set-cookie"}


def call(base: str, path: str, method: str = "GET", body: str | None = None, **headers: str) -> Reply:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    if body is not None:
        hdrs.setdefault("content-type", "application/x-www-form-urlencoded")
    try:
        conn.request(method, path, body=body, headers=hdrs)
        return Reply(conn.getresponse())
    finally:
        conn.close()


def cookie_value(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].split("=", 1)[1]


@pytest.fixture
def rows(migrated_db: str) -> dict[str, str]:
    now = datetime.now(UTC)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        body = {
            "model": "claude-sonnet-4-6",
            "max_tokens": 100,
            "system": [{"type": "text", "text": "You are a careful assistant."}],
            "messages": [
                {"role": "user", "content": "What is <script>alert(1)</script> doing here?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}]},
            ],
        }
        a = insert_row(
            conn,
            now - timedelta(minutes=3),
            project="alpha",
            input_tokens=1234,
            output_tokens=567,
            cache_read=8901,
            cache_creation=300,
            cache_5m=100,
            cache_1h=200,
            request_body=body,
        )
        b = insert_row(
            conn,
            now - timedelta(minutes=2),
            project="beta",
            account="acc-beta",
            input_tokens=11,
            output_tokens=22,
            status=529,
        )
        insert_row(conn, now - timedelta(hours=7), project="alpha", input_tokens=5, output_tokens=5)
    return {"alpha": a, "beta": b}


@pytest.fixture
def open_dashboard(migrated_db: str) -> Iterator[str]:
    with run_dashboard({"DATABASE_URL": migrated_db, "DASHBOARD_LIVE_INTERVAL_MS": "100"}) as url:
        yield url


def test_pages_render_real_data(open_dashboard: str, rows: dict[str, str]) -> None:
    home = call(open_dashboard, "/")
    assert home.status == 200
    assert rows["alpha"] in home.text and rows["beta"] in home.text
    assert "1,234" in home.text and "8,901" in home.text  # tokens, incl. cache read
    assert (
        home.header(
            "content-security-policy",
        )
        and home.header("x-frame-options") == "DENY"
    )

    listing = call(open_dashboard, "/requests")
    assert listing.status == 200 and listing.text.index(rows["beta"]) < listing.text.index(rows["alpha"])
    only_alpha = call(open_dashboard, "/requests?project_id=alpha")
    assert rows["alpha"] in only_alpha.text and rows["beta"] not in only_alpha.text

    detail = call(open_dashboard, f"/requests/{rows['alpha']}")
    assert detail.status == 200
    assert rows["alpha"] in detail.text and "claude-sonnet-4-6" in detail.text
    assert "1,234" in detail.text and "567" in detail.text and "8,901" in detail.text
    assert "100 5m" in detail.text and "200 1h" in detail.text
    assert "You are a careful assistant." in detail.text and "tool use: Read" in detail.text
    assert "<script>alert(1)</script>" not in detail.text  # model/client text is escaped, never run
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in detail.text
    assert "claude-cli/2.1.0" in detail.text  # the stored (allow-listed) request headers

    usage = call(open_dashboard, "/usage")
    assert usage.status == 200 and "acc-beta" in usage.text and 'data-chart="rolling"' in usage.text
    per_project = call(open_dashboard, "/usage?project_id=beta")
    tables = re.sub(r'<section id="charts">.*?</section>', "", per_project.text, flags=re.S)
    assert per_project.status == 200 and "529" not in tables  # the status chart has its status; the tables none
    assert ">22<" in per_project.text  # beta's output tokens in the window table

    assert call(open_dashboard, f"/requests/{uuid.uuid4()}").status == 404
    assert call(open_dashboard, "/requests/not-a-uuid").status == 404
    assert call(open_dashboard, "/requests?before=garbage").status == 400
    assert call(open_dashboard, "/static/live.js").status == 200


def test_requests_pages_with_keyset_cursor(open_dashboard: str, migrated_db: str) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        ids = [insert_row(conn, now - timedelta(seconds=i), project="pages") for i in range(55)]
    first = call(open_dashboard, "/requests?project_id=pages")
    assert ids[0] in first.text and ids[49] in first.text and ids[50] not in first.text
    link = re.search(r'rel="next" href="([^"]+)"', first.text)
    assert link is not None
    second = call(open_dashboard, link.group(1).replace("&amp;", "&"))
    assert second.status == 200
    assert all(i in second.text for i in ids[50:]) and ids[49] not in second.text
    assert 'rel="next"' not in second.text


def test_new_requests_are_pushed_live(open_dashboard: str, migrated_db: str) -> None:
    parts = urlsplit(open_dashboard)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", "/live?project_id=live")
    resp = conn.getresponse()
    assert resp.status == 200 and "text/event-stream" in (resp.getheader("content-type") or "")
    assert resp.readline().startswith(b"retry:")
    time.sleep(0.5)  # the feed starts from "now": rows written before it connected are on the page already
    with psycopg.connect(migrated_db, autocommit=True) as db:
        insert_row(db, datetime.now(UTC), project="other")
        rid = insert_row(db, datetime.now(UTC), project="live", input_tokens=4242)
    seen = b""
    deadline = time.monotonic() + 10
    while rid.encode() not in seen and time.monotonic() < deadline:
        seen += resp.readline()
    conn.close()
    assert rid.encode() in seen and b"event: request" in seen and b"4,242" in seen
    assert b'"project_id":"other"' not in seen  # filtered to the page's project


def test_without_key_only_loopback_clients(open_dashboard: str, rows: dict[str, str]) -> None:
    assert call(open_dashboard, "/").status == 200
    relayed = call(open_dashboard, "/", x_forwarded_for="203.0.113.9")
    assert relayed.status == 403 and "DASHBOARD_API_KEY" in relayed.text
    assert call(open_dashboard, "/", forwarded="for=203.0.113.9").status == 403
    assert call(open_dashboard, "/requests", host="evil.example:3001").status == 403  # DNS rebinding
    assert call(open_dashboard, "/health", x_forwarded_for="203.0.113.9").status == 200
    assert call(open_dashboard, "/login").status == 404


@pytest.fixture
def keyed_dashboard(migrated_db: str) -> Iterator[str]:
    with run_dashboard({"DATABASE_URL": migrated_db, "DASHBOARD_API_KEY": KEY}) as url:
        yield url


def test_with_key_login_session_cookie_and_csrf(keyed_dashboard: str, rows: dict[str, str]) -> None:
    base = keyed_dashboard
    anonymous = call(base, "/requests?project_id=alpha")
    assert anonymous.status == 303
    assert anonymous.header("location") == "/login?next=" + quote("/requests?project_id=alpha", safe="")
    assert call(base, "/live").status == 401
    assert call(base, "/", x_forwarded_for="203.0.113.9").status == 303  # with a key, remote clients may log in

    assert call(base, "/", x_api_key=KEY).status == 200  # scripts: the key as a header
    assert call(base, "/", authorization=f"Bearer {KEY}").status == 200
    assert call(base, "/", x_api_key="wrong").status == 401

    form = call(base, "/login?next=/usage")
    assert form.status == 200
    login_cookie = form.cookies()["nexus_login_csrf"]
    assert "HttpOnly" in login_cookie and "SameSite=Strict" in login_cookie
    csrf = re.search(r'name="_csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    jar = f"nexus_login_csrf={cookie_value(login_cookie)}"

    no_csrf = call(base, "/login", "POST", f"key={KEY}&next=/usage", cookie=jar)
    assert no_csrf.status == 403 and "nexus_session" not in no_csrf.cookies()
    wrong = call(base, "/login", "POST", f"key=nope&_csrf={csrf}&next=/usage", cookie=jar)
    assert wrong.status == 401 and "nexus_session" not in wrong.cookies()
    ok = call(base, "/login", "POST", f"key={quote(KEY)}&_csrf={csrf}&next=/usage", cookie=jar)
    assert ok.status == 303 and ok.header("location") == "/usage"
    session_cookie = ok.cookies()["nexus_session"]
    assert "HttpOnly" in session_cookie and "SameSite=Lax" in session_cookie
    token = cookie_value(session_cookie)
    assert KEY not in token and token != KEY  # the cookie is a signed token, never the key

    open_redirect = call(base, "/login", "POST", f"key={quote(KEY)}&_csrf={csrf}&next=//evil.example", cookie=jar)
    assert open_redirect.header("location") == "/"

    page = call(base, f"/requests/{rows['alpha']}", cookie=f"nexus_session={token}")
    assert page.status == 200 and rows["alpha"] in page.text
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert call(base, "/", cookie=f"nexus_session={tampered}").status == 303

    session_csrf = re.search(r'name="_csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    refused = call(base, "/logout", "POST", "_csrf=forged", cookie=f"nexus_session={token}")
    assert refused.status == 403
    out = call(base, "/logout", "POST", f"_csrf={session_csrf}", cookie=f"nexus_session={token}")
    assert out.status == 303 and "Max-Age=0" in out.cookies()["nexus_session"]


def test_health_is_503_while_the_database_is_away(migrated_db: str, database_admin_url: str) -> None:
    name = urlsplit(migrated_db).path.lstrip("/")
    set_database_reachable(database_admin_url, name, False)
    try:
        with run_dashboard({"DATABASE_URL": migrated_db}, require_healthy=False) as url:
            away = call(url, "/health")
            assert away.status == 503 and '"database":"disconnected"' in away.text
            page = call(url, "/requests")  # pages say so too, instead of a bare 500
            assert page.status == 503 and "Storage unavailable" in page.text
            set_database_reachable(database_admin_url, name, True)
            wait_for(lambda: call(url, "/health").status == 200, 20, "dashboard health back to 200")
            set_database_reachable(database_admin_url, name, False)
            wait_for(lambda: call(url, "/health").status == 503, 20, "dashboard health 503 again")
    finally:
        set_database_reachable(database_admin_url, name, True)


def test_dashboard_works_as_the_read_only_nexus_reader_role(migrated_db: str, rows: dict[str, str]) -> None:
    role = f"dash_reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'reader-pw'")
        conn.execute(f"GRANT nexus_reader TO {role}")
    parts = urlsplit(migrated_db)
    host = parts.netloc.rsplit("@", 1)[-1]
    reader_url = urlunsplit(parts._replace(netloc=f"{role}:reader-pw@{host}"))
    try:
        with psycopg.connect(reader_url, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM api_requests")
        with run_dashboard({"DATABASE_URL": reader_url}) as url:
            assert rows["alpha"] in call(url, "/").text
            assert call(url, f"/requests/{rows['alpha']}").status == 200
            assert call(url, "/usage").status == 200
    finally:
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_request_sent_through_the_proxy_is_shown(
    upstream_url: str, migrated_db: str, tmp_path: Path, open_dashboard: str
) -> None:
    env = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "DATABASE_URL": migrated_db,
        "NEXUS_HOME": str(tmp_path),
        "STORAGE_BATCH_INTERVAL_MS": "20",
    }
    with run_proxy(env) as proxy:
        client = anthropic.Anthropic(base_url=proxy, api_key="sk-ant-api03-secret-value", max_retries=0)
        raw = client.messages.with_raw_response.create(
            model="claude-haiku-4-5",
            max_tokens=40,
            messages=[{"role": "user", "content": "a question for the fake"}],
            extra_headers={"train-id": "via-proxy"},
        )
        rid, usage = raw.headers["x-request-id"], raw.parse().usage
        wait_for(lambda: call(open_dashboard, f"/requests/{rid}").status == 200, 15, "row stored")
    page = call(open_dashboard, f"/requests/{rid}").text
    assert "a question for the fake" in page and "via-proxy" in page and "claude-haiku-4-5" in page
    assert f"<dd>{usage.input_tokens:,}</dd>" in page
    assert "sk-ant-api03-secret-value" not in page  # credentials are never stored, so never shown


def test_conversation_list_and_tree_pages(
    upstream_url: str, migrated_db: str, tmp_path: Path, open_dashboard: str
) -> None:
    env = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "DATABASE_URL": migrated_db,
        "NEXUS_HOME": str(tmp_path),
        "STORAGE_BATCH_INTERVAL_MS": "20",
    }
    with run_proxy(env) as proxy:
        client = anthropic.Anthropic(base_url=proxy, api_key="sk-ant-api03-x", max_retries=0)
        history: list[dict[str, object]] = [{"role": "user", "content": "first question of the thread"}]
        ids = []
        for turn in range(2):
            raw = client.messages.with_raw_response.create(
                model="claude-sonnet-4-6", max_tokens=40, messages=history, extra_headers={"train-id": "threads"}
            )
            ids.append(raw.headers["x-request-id"])
            history = [*history, {"role": "assistant", "content": raw.parse().content[0].text},
                       {"role": "user", "content": f"follow-up {turn}"}]  # fmt: skip

        def linked() -> bool:
            with psycopg.connect(migrated_db) as conn:
                found = conn.execute(
                    "SELECT count(DISTINCT conversation_id), count(*) FROM api_requests "
                    "WHERE request_id = ANY(%s::uuid[])", (ids,)
                ).fetchone()  # fmt: skip
            return found == (1, 2)

        wait_for(linked, 15, "both turns stored in one conversation")
    with psycopg.connect(migrated_db) as conn:
        conversation = str(conn.execute("SELECT conversation_id FROM api_requests LIMIT 1").fetchone()[0])  # type: ignore[index]
    listing = call(open_dashboard, "/conversations?project_id=threads")
    assert listing.status == 200 and conversation in listing.text
    tree = call(open_dashboard, f"/conversations/{conversation}")
    assert tree.status == 200 and ids[0] in tree.text and ids[1] in tree.text
    assert "continuation" in tree.text  # the second turn names the first as its parent
    detail = call(open_dashboard, f"/requests/{ids[1]}")
    assert f'href="/conversations/{conversation}#r-{ids[1]}"' in detail.text
    assert call(open_dashboard, f"/conversations/{uuid.uuid4()}").status == 404


def test_costs_are_shown_and_an_unknown_model_is_not_free(open_dashboard: str, migrated_db: str) -> None:
    from nexus.pricing.sql import REPRICE_UNPRICED

    now = datetime.now(UTC)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        # Sonnet 4.6: (1234 x 3 + 567 x 15 + 8901 x 0.30 + 100 x 3.75 + 200 x 6) / 1e6 = $0.0165 (rounded)
        priced = insert_row(
            conn,
            now - timedelta(minutes=3),
            project="costly",
            input_tokens=1234,
            output_tokens=567,
            cache_read=8901,
            cache_creation=300,
            cache_5m=100,
            cache_1h=200,
        )
        unknown = insert_row(conn, now - timedelta(minutes=2), project="costly", model="claude-nova-9")
        conn.execute(REPRICE_UNPRICED, {"limit": 100})  # what a start does for rows stored before pricing
    assert "$0.0165" in call(open_dashboard, f"/requests/{priced}").text
    detail = call(open_dashboard, f"/requests/{unknown}").text
    assert "<dt>cost</dt><dd>unknown</dd>" in detail
    usage = call(open_dashboard, "/usage?project_id=costly").text
    assert "$0.0165 + 1 unpriced" in usage  # a lower bound, and it says so
    listing = call(open_dashboard, "/requests?project_id=costly").text
    assert "$0.0165" in listing and "unknown" in listing
