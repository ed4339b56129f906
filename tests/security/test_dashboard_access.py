"""Findings 5 and 8 of "Safe on a network" on the dashboard: the login form had no lockout, `next=`
allowed `/\\t/evil.com` (an open redirect) and a vertical tab gave a 500."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.harness.servers import free_port, run_dashboard, stop, wait_until_healthy
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


def _listening_address(port: int) -> str | None:
    """The local address a TCP socket listens on for `port`, from /proc/net/tcp (IPv4)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            return ".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0))
    return None


def test_without_a_key_the_dashboard_listens_on_loopback_only(migrated_db: str) -> None:
    """Attack pass finding: Robyn drops header values that are not ASCII, so a relay appending a
    client's `X-Forwarded-For: \\xe9` hid itself from the loopback rule. Without a key the dashboard
    now listens on 127.0.0.1 (no other machine can connect); behind a relay, a key is required."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DASHBOARD_HOST", "DASHBOARD_API_KEY")}
    env |= {"DATABASE_URL": migrated_db, "DASHBOARD_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "nexus.cli", "dashboard"], env=env, stderr=subprocess.PIPE)
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}/health", proc)
        assert _listening_address(port) == "127.0.0.1"
    finally:
        stop(proc)
    assert proc.stderr is not None and f"http://localhost:{port}" in proc.stderr.read().decode()


def test_a_percent_encoded_next_is_decoded(keyed_dashboard: str) -> None:
    csrf, jar = login_form(keyed_dashboard)
    reply = call(keyed_dashboard, "/login", "POST", f"key={quote(KEY)}&_csrf={csrf}&next=%2Fusage", cookie=jar)
    assert reply.header("location") == "/usage"
    page = call(keyed_dashboard, "/login?next=%2Frequests%3Fproject_id%3Da%2520b")
    assert 'name="next" value="/requests?project_id=a%20b"' in page.text
