"""Findings 5 and 8 of "Safe on a network" on the dashboard: the login form had no lockout, `next=`
allowed `/\\t/evil.com` (an open redirect) and a vertical tab gave a 500."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from nexus.testing.servers import run_dashboard
from tests.test_dashboard import Reply, call, cookie_value

KEY = "dashboard-key-0123456789"


@pytest.fixture
def keyed_dashboard(migrated_db: str) -> Iterator[str]:
    env = {"DATABASE_URL": migrated_db, "DASHBOARD_API_KEY": KEY, "AUTH_FAILURE_LIMIT": "5"}
    with run_dashboard(env) as url:
        yield url


def login_form(base: str) -> tuple[str, str]:
    form = call(base, "/login")
    csrf = re.search(r'name="_csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    return csrf, f"nexus_login_csrf={cookie_value(form.cookies()['nexus_login_csrf'])}"


def login(base: str, key: str, target: str) -> Reply:
    csrf, jar = login_form(base)
    return call(base, "/login", "POST", f"key={quote(key)}&_csrf={csrf}&next={quote(target, safe='')}", cookie=jar)


def test_open_redirects_and_header_breaking_targets_go_home(keyed_dashboard: str) -> None:
    for target in ("/\t/evil.com", "//evil.com", "/\\evil.com", "/\x0b", "https://evil.com", "/\r\nSet-Cookie: x=1"):
        reply = login(keyed_dashboard, KEY, target)
        assert reply.status == 303 and reply.header("location") == "/", target
    assert login(keyed_dashboard, KEY, "/usage?project_id=a").header("location") == "/usage?project_id=a"
    for target in ("/\t/evil.com", "/\x0b"):  # the form page itself must not break either
        page = call(keyed_dashboard, "/login?next=" + quote(target, safe=""))
        assert page.status == 200 and 'name="next" value="/"' in page.text


def test_wrong_keys_are_throttled_on_the_form_and_the_header(keyed_dashboard: str) -> None:
    statuses = [login(keyed_dashboard, f"guess-{i}", "/").status for i in range(8)]
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
    locked = login(keyed_dashboard, KEY, "/")
    assert locked.status == 429 and locked.header("retry-after") is not None and "nexus_session" not in locked.cookies()
    assert call(keyed_dashboard, "/", x_api_key=KEY).status == 429  # same address, same budget


def test_malformed_page_parameters_are_never_500(migrated_db: str) -> None:
    with run_dashboard({"DATABASE_URL": migrated_db}) as base:
        for path in ("/requests?project_id=%00", "/usage?project_id=%00", "/conversations?project_id=%00x"):
            assert call(base, path).status in (200, 400), path  # Robyn may keep `%00` as text: never a NUL in SQL
        for path in (
            "/requests?before=99999999999999999999999_01a20ff9-a7fd-799f-8b74-7e2b1304e5de",
            "/requests?conversation_id=nope",
            "/requests/nope",
            "/conversations/nope",
        ):
            assert call(base, path).status in (400, 404), path
