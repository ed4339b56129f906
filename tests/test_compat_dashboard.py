"""Issue 14, the dashboard: the reference dashboard's links and its `X-Dashboard-Key` header.

Before, every `/dashboard/...` link (bookmarks, Slack messages) was a 404. Through a real dashboard
process on a real PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg
import pytest

from nexus.compat.dashboard_links import nexus_location
from tests.harness.servers import run_dashboard, run_proxy
from tests.test_dashboard import call
from tests.usage_rows import insert_row

KEY = "compat-dashboard-key-0123456789"
CONVERSATION = "7f1d6a52-3c1e-4b8a-9d0e-2f4c5b6a7e81"

REDIRECTS = [
    ("/dashboard", "/"),
    ("/dashboard?projectId=alpha", "/conversations?project_id=alpha"),
    ("/dashboard/requests?projectId=alpha", "/requests?project_id=alpha"),
    ("/dashboard/request/01a20ff9-a7fd-799f", "/requests/01a20ff9-a7fd-799f"),
    (f"/dashboard/conversation/{CONVERSATION}?branch=main&view=tree", f"/conversations/{CONVERSATION}"),
    (f"/dashboard/conversation/{CONVERSATION}/messages", f"/conversations/{CONVERSATION}"),
    ("/dashboard/token-usage?accountId=acc_alice", "/usage?account_id=acc_alice"),
    ("/dashboard/usage?projectId=alpha", "/usage?project_id=alpha"),
    ("/dashboard/usage/chart?projectId=alpha", "/usage?project_id=alpha"),
    ("/dashboard/projects/alpha/view", "/usage?project_id=alpha"),
    ("/dashboard/credentials", "/usage"),
    ("/dashboard/login", "/login"),
    ("/dashboard/prompts/abc", "/"),
    ("/dashboard/partials/weekly-conversations", "/"),
]


@pytest.fixture
def keyed_dashboard(migrated_db: str) -> Iterator[str]:
    with run_dashboard({"DATABASE_URL": migrated_db, "DASHBOARD_API_KEY": KEY}) as url:
        yield url


def test_reference_links_redirect_to_their_nexus_pages_and_lead_there(keyed_dashboard: str) -> None:
    for old, new in REDIRECTS:
        reply = call(keyed_dashboard, old)
        assert (reply.status, reply.header("location")) == (302, new), old
    posted = call(keyed_dashboard, "/dashboard/login", "POST", "key=x&_csrf=y")
    assert (posted.status, posted.header("location")) == (308, "/login")  # the method is kept
    # the redirect itself reveals nothing: the page it leads to checks access as always
    page = call(keyed_dashboard, "/usage?account_id=acc_alice", x_dashboard_key=KEY)
    assert page.status == 200
    assert call(keyed_dashboard, "/usage?account_id=acc_alice").status == 303  # to the login form


def test_x_dashboard_key_is_accepted_wherever_x_api_key_is(keyed_dashboard: str) -> None:
    for path in ("/", "/requests", "/conversations", "/usage"):
        assert call(keyed_dashboard, path, x_dashboard_key=KEY).status == 200, path
        assert call(keyed_dashboard, path, x_api_key=KEY).status == 200, path
        assert call(keyed_dashboard, path, x_dashboard_key=KEY + "x").status == 401, path


def test_locations_stay_on_this_site_whatever_the_path() -> None:
    for path in (
        "/dashboard/request/%2F%2Fevil.com",
        "/dashboard/request//evil.com",
        "/dashboard/conversation/..",
        "/dashboard/request/a b",
        "/dashboard/conversation/\\evil.com",
    ):
        location = nexus_location(path, {})
        assert location.startswith("/") and not location.startswith(("//", "/\\")), (path, location)
        assert " " not in location and ".." not in location
    assert nexus_location("/dashboard/token-usage", {"accountId": "a" * 500}) == "/usage"  # over-long values dropped
    assert nexus_location("/dashboard/usage", {"projectId": "a&b=c"}) == "/usage?project_id=a%26b%3Dc"


def test_the_reference_dashboard_json_endpoints_answer_on_the_dashboard_too(
    migrated_db: str, upstream_url: str, tmp_path: Path
) -> None:
    """The reference's dashboard service served JSON on its own port (`/api/requests`,
    `/api/storage-stats`, `/api/conversations`, `/api/requests/:id/subtasks`); scripts pointed at
    that port got a 404 from Nexus's dashboard. It asks the proxy, which serves them, and answers with
    the proxy's answer; the caller needs the dashboard's key as for any page."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        rid = insert_row(conn, datetime.now(UTC) - timedelta(minutes=5), project="alpha", account="acc_a")
    proxy_env = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "DATABASE_URL": migrated_db,
        "CREDENTIALS_DIR": str(tmp_path),
        "NEXUS_HOME": str(tmp_path / "home"),
        "DASHBOARD_API_KEY": KEY,
    }
    with (
        run_proxy(proxy_env) as proxy,
        run_dashboard({"DATABASE_URL": migrated_db, "DASHBOARD_API_KEY": KEY, "PROXY_API_URL": proxy}) as dashboard,
    ):
        listing = call(dashboard, "/api/requests?projectId=alpha&limit=5", x_dashboard_key=KEY)
        assert listing.status == 200, listing.text
        assert (listing.header("content-type") or "").startswith("application/json")
        body = orjson.loads(listing.text)
        assert [r["requestId"] for r in body["requests"]] == [rid] and body["pagination"]["total"] == 1
        assert orjson.loads(call(dashboard, f"/api/requests/{rid}", x_api_key=KEY).text)["projectId"] == "alpha"
        subtasks = call(dashboard, f"/api/requests/{rid}/subtasks", x_dashboard_key=KEY)
        assert orjson.loads(subtasks.text) == {"requestId": rid, "subtasks": []}
        stats = orjson.loads(call(dashboard, "/api/storage-stats?projectId=alpha", x_dashboard_key=KEY).text)
        assert stats["totalRequests"] == 1
        listed = call(dashboard, "/api/conversations?projectId=alpha&excludeSubtasks=true", x_dashboard_key=KEY)
        assert listed.status == 200 and "pagination" in orjson.loads(listed.text)
        # the proxy's refusals come back as they are (Anthropic's error shape), and the key is required
        bad = call(dashboard, "/api/requests?limit=-1", x_dashboard_key=KEY)
        assert bad.status == 400 and orjson.loads(bad.text)["error"]["type"] == "invalid_request_error"
        assert call(dashboard, "/api/requests").status == 401
        assert call(dashboard, "/api/requests", x_dashboard_key=KEY + "x").status == 401
    # the proxy gone: a 502 in the same shape, not a hang or a 500
    with run_dashboard(
        {"DATABASE_URL": migrated_db, "DASHBOARD_API_KEY": KEY, "PROXY_API_URL": "http://127.0.0.1:9"}
    ) as dashboard:
        gone = call(dashboard, "/api/storage-stats", x_dashboard_key=KEY)
        assert gone.status == 502 and orjson.loads(gone.text)["type"] == "error", gone.text
