"""Issue 11's browser check: recorded Claude Code traffic stored through a real proxy into a real
PostgreSQL, a real dashboard process, and headless Chromium (Debian's, driven by Playwright) reading
every page as a person would: no console error (CSP violations included), no failed request, the
search box finds a session by a word of its prompt, the tree's SVG nodes click through to requests,
request costs match values computed by hand from the published prices, and the usage page draws a
chart with axes. Every page's screenshot is kept under target/screenshots/."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from nexus.conversations.replay import load_recording
from tests.conftest import with_database
from tests.harness.control import FakeControl
from tests.harness.servers import run_dashboard, run_proxy
from tests.helpers import FAST, wait_for
from tests.test_linking_fixtures import FIXTURES, send

pytestmark = pytest.mark.browser

SCENARIOS = ("interactive_title", "fork_twice")
TITLE = "TITLE-1: list the files here"

#: A reply priced by hand below: every rate of claude-sonnet-4-6 (3 / 15 / 0.30 / 3.75 / 6 USD per
#: million tokens for input, output, cache read, 5-minute and 1-hour cache writes).
SONNET_USAGE = {
    "input_tokens": 1000,
    "output_tokens": 2000,
    "cache_read_input_tokens": 100_000,
    "cache_creation_input_tokens": 30_000,
    "cache_creation": {"ephemeral_5m_input_tokens": 10_000, "ephemeral_1h_input_tokens": 20_000},
}
# 1000*3 + 2000*15 + 100000*0.30 + 10000*3.75 + 20000*6 = 220,500 micro-dollars
SONNET_COST = "$0.2205"

#: interactive_title's recorded replies on claude-opus-5-5 (4 / 20 / 0.20 / 5 / 8 USD per million):
#: the recording's file, and its cost worked out by hand from the recorded usage.
OPUS_COSTS = {
    # 8 in, 12900 5-minute writes, 40 out: 32 + 64500 + 800 = 65,332 micro-dollars
    "0003-messages.json": "$0.0653",
    # 5 in, 80 writes, 12900 reads, 6 out: 20 + 400 + 2580 + 120 = 3,120
    "0004-messages.json": "$0.0031",
    # 6 in, 40 writes, 12980 reads, 4 out: 24 + 200 + 2596 + 80 = 2,900
    "0005-messages.json": "$0.0029",
}


@dataclass
class Stored:
    dashboard: str
    db: str
    #: request id by (scenario, recording file)
    requests: dict[tuple[str, str], str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def stored(
    upstream_url: str, database_admin_url: str, migrated_template: str, tmp_path_factory: Any
) -> Iterator[Stored]:
    """The recorded scenarios and one hand-priced sonnet reply, stored through a real proxy into a
    database of their own; then a dashboard on it."""
    name = f"nexus_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"')
    db = with_database(database_admin_url, name)
    fake = FakeControl(upstream_url)
    fake.reset()
    env = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "DATABASE_URL": db,
        "NEXUS_HOME": str(tmp_path_factory.mktemp("home")),
        "UPSTREAM_MAX_ATTEMPTS": "1",
        **FAST,
    }
    sent: list[tuple[str, str, str]] = []  # (scenario, file, the reply's message id)
    try:
        with run_proxy(env) as url:
            for scenario in SCENARIOS:
                for rec in load_recording(FIXTURES / scenario):
                    if rec.path.split("?")[0] == "/v1/messages":
                        fake.replies({"status": rec.status, "body": rec.response})
                        sent.append((scenario, rec.file, rec.response["id"]))
                    status, _ = send(url, rec.method, rec.path, {**rec.headers, "train-id": scenario}, rec.body)
                    assert status == rec.status
            reply = {
                "id": "msg_priced_by_hand",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-6",
                "content": [{"type": "text", "text": "priced by hand"}],
                "stop_reason": "end_turn",
                "usage": SONNET_USAGE,
            }
            fake.replies({"status": 200, "body": reply})
            body = {
                "model": "claude-sonnet-4-6",
                "max_tokens": 64,
                "messages": [{"role": "user", "content": "price me"}],
            }
            headers = {"content-type": "application/json", "x-api-key": "sk-ant-api03-x", "train-id": "priced"}
            status, _ = send(url, "POST", "/v1/messages", headers, orjson.dumps(body))
            assert status == 200
            sent.append(("priced", "sonnet", "msg_priced_by_hand"))

            def all_stored() -> bool:
                with psycopg.connect(db) as conn:
                    row = conn.execute("SELECT count(*) FROM api_requests WHERE path LIKE '/v1/messages%%'").fetchone()
                return row is not None and row[0] == len(sent)

            wait_for(all_stored, 20, "every request stored")
        fake.reset()
        result = Stored(dashboard="", db=db)
        with psycopg.connect(db) as conn:
            for scenario, file, message_id in sent:
                row = conn.execute(
                    "SELECT request_id::text FROM api_requests WHERE response_body->>'id' = %s", (message_id,)
                ).fetchone()
                assert row is not None, (scenario, file)
                result.requests[(scenario, file)] = row[0]
        with run_dashboard({"DATABASE_URL": db}) as dashboard:
            result.dashboard = dashboard
            yield result
    finally:
        with psycopg.connect(database_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Watched:
    """A browser page whose console errors, uncaught exceptions, failed requests and error answers
    are collected, to be asserted empty after each visit."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"uncaught: {exc}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _console(self, message: Any) -> None:
        # Chromium reports Content-Security-Policy violations as console errors too
        if message.type in ("error", "assert"):
            self.problems.append(f"console {message.type}: {message.text} at {message.location}")

    def _failed(self, request: Any) -> None:
        failure = request.failure or ""
        # The live updates' EventSource is cut when the browser leaves a page: not a failure of the page.
        if request.url.startswith(self.base + "/live") and "ERR_ABORTED" in failure:
            return
        self.problems.append(f"request failed: {request.method} {request.url}: {failure}")

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.request.method} {response.url}")

    def visit(self, path: str, shot: Path) -> None:
        """Open `path`, let it settle, keep its screenshot and assert nothing went wrong."""
        answer = self.page.goto(self.base + path, wait_until="load")
        assert answer is not None and answer.status == 200, (path, answer and answer.status)
        self.settle(shot)

    def settle(self, shot: Path) -> None:
        self.page.wait_for_load_state("load")
        self.page.wait_for_timeout(150)  # a deferred script's errors and late sub-requests land
        self.page.screenshot(path=str(shot), full_page=True)
        problems, self.problems = self.problems, []
        assert problems == [], f"{self.page.url}: {problems}"


@pytest.fixture
def watched(browser: Any, stored: Stored) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="Europe/Berlin")
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        yield Watched(page, stored.dashboard)
    finally:
        context.close()


def test_every_page_loads_without_console_errors(watched: Watched, stored: Stored, screenshots: Path) -> None:
    request = stored.requests[("interactive_title", "0003-messages.json")]
    with psycopg.connect(stored.db) as conn:
        row = conn.execute(
            "SELECT conversation_id::text FROM api_requests WHERE request_id = %s", (request,)
        ).fetchone()
    assert row is not None and row[0]
    pages = {
        "overview": "/",
        "requests": "/requests",
        "request": f"/requests/{request}",
        "conversations": "/conversations",
        "conversation": f"/conversations/{row[0]}",
        "usage": "/usage",
    }
    for name, path in pages.items():
        watched.visit(path, screenshots / f"{name}.png")
        assert watched.page.locator("h1").count() >= 1, path
    # the same pages on a phone in dark mode (screenshots to look at; the same watch for errors)
    phone = watched.page.context.browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, color_scheme="dark", timezone_id="Asia/Tokyo"
    )
    try:
        small = Watched(phone.new_page(), stored.dashboard)
        wide = {}
        for name, path in pages.items():
            small.visit(path, screenshots / f"phone-dark-{name}.png")
            # the page fits the phone: wide tables and charts scroll inside it, the page does not
            width = small.page.evaluate("document.documentElement.scrollWidth")
            if width > 390:
                wide[name] = width
        assert not wide, f"pages wider than a 390 px phone: {wide}"
    finally:
        phone.close()
    # the pages' own scripts ran: the list's live updates connected
    watched.visit("/requests", screenshots / "requests-live.png")
    watched.page.wait_for_selector("[data-live-status].on", timeout=5_000)


def test_find_a_session_by_a_word_of_its_prompt_and_click_through_its_tree(
    watched: Watched, stored: Stored, screenshots: Path
) -> None:
    page = watched.page
    watched.visit("/conversations", screenshots / "find-before.png")
    page.fill('form[role="search"] input[name="q"]', "TITLE-1")
    page.press('form[role="search"] input[name="q"]', "Enter")
    page.wait_for_url(re.compile(r"/conversations\?.*q=TITLE-1"))
    watched.settle(screenshots / "find-results.png")
    found = page.locator("tr[data-conversation]")
    assert found.count() == 1
    assert TITLE in found.first.inner_text()

    found.first.locator("a[href^='/conversations/']").first.click()
    page.wait_for_url(re.compile(r"/conversations/[0-9a-f-]{36}"))
    watched.settle(screenshots / "find-conversation.png")
    tree = page.locator("svg.tree")
    assert tree.count() == 1 and tree.first.is_visible()
    conversation = page.url.rsplit("/", 1)[1].split("?")[0]
    with psycopg.connect(stored.db) as conn:
        rows = conn.execute(
            "SELECT request_id::text FROM api_requests WHERE conversation_id = %s", (conversation,)
        ).fetchall()
    hrefs = tree.first.locator("a.node").evaluate_all("nodes => nodes.map(n => n.getAttribute('href'))")
    assert sorted(hrefs) == sorted(f"/requests/{r[0]}" for r in rows)  # one node per request of the session
    assert len(rows) == 3  # the session's three turns (the title request is not part of it)
    # every label of the tree and the time line is inside its drawing (long ones were cut off at the edge)
    overflow = page.locator("svg.tree, svg.timeline").evaluate_all(
        "svgs => svgs.flatMap(svg => [...svg.querySelectorAll('text')].map(t => { const b = t.getBBox(); "
        "return [t.textContent, b.x + b.width - svg.viewBox.baseVal.width]; })).filter(([, over]) => over > 0)"
    )
    assert overflow == [], overflow
    # the conversation's cost: its three opus turns priced by hand, 65,332 + 3,120 + 2,900 micro-dollars
    assert re.search(r"\$0\.0714\s+cost \(USD\)", page.inner_text("body"))

    target = stored.requests[("interactive_title", "0004-messages.json")]
    node = tree.first.locator(f'a.node[href="/requests/{target}"]')
    assert node.count() == 1
    node.click()
    page.wait_for_url(f"**/requests/{target}")
    watched.settle(screenshots / "tree-clicked-request.png")
    assert target in page.content()


def cost_on(watched: Watched, request_id: str, shot: Path) -> str:
    watched.visit(f"/requests/{request_id}", shot)
    cell = watched.page.locator("dt", has_text=re.compile(r"^cost$")).locator("xpath=following-sibling::dd[1]")
    return str(cell.inner_text()).strip()


def test_request_costs_match_hand_computed_prices(watched: Watched, stored: Stored, screenshots: Path) -> None:
    for file, cost in OPUS_COSTS.items():
        rid = stored.requests[("interactive_title", file)]
        assert cost_on(watched, rid, screenshots / f"cost-{file.split('-')[0]}.png") == cost, file
    rid = stored.requests[("priced", "sonnet")]
    assert cost_on(watched, rid, screenshots / "cost-sonnet.png") == SONNET_COST


#: Run before the page's scripts: wraps the vendored uPlot constructor to record each chart's axes as
#: configured (uPlot paints its axis labels and ticks on the canvas, out of reach of the DOM).
RECORD_AXES = """
(() => {
  let real;
  Object.defineProperty(window, "uPlot", {
    configurable: true,
    get() { return real; },
    set(value) {
      const wrapped = function (opts, data, target) {
        (window.__axes = window.__axes || []).push(opts.axes.map(a => ({label: a.label, show: a.show !== false})));
        return new value(opts, data, target);
      };
      Object.assign(wrapped, value);
      wrapped.prototype = value.prototype;
      real = wrapped;
    },
  });
})();
"""


def test_usage_page_draws_a_chart_with_axes(watched: Watched, browser: Any, stored: Stored, screenshots: Path) -> None:
    page = watched.page
    page.add_init_script(RECORD_AXES)
    watched.visit("/usage", screenshots / "usage-chart.png")
    project_row = page.locator("tr", has=page.locator('a[href="/usage?project_id=priced"]'))
    assert project_row.locator("td").last.inner_text().strip() == SONNET_COST  # the per-project cost
    drawn = page.locator('.uchart[data-drawn="true"]')
    assert drawn.count() == 4  # tokens, cost, status, rolling: uPlot (vendored, served here) drew each
    chart = drawn.first
    box = chart.locator("canvas").first.bounding_box()
    assert box is not None and box["height"] > 100 and box["width"] > 300
    axes = page.evaluate("window.__axes")
    assert len(axes) == 4
    for chart_axes in axes:  # an x axis in time and a y axis with its unit
        assert len(chart_axes) == 2 and chart_axes[0]["label"] == "time (UTC)" and all(a["show"] for a in chart_axes)
        assert chart_axes[1]["label"] in ("tokens", "USD", "requests")
    # Without JavaScript the server's own SVG chart is the chart: ticks on both axes, units on both.
    context = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900})
    try:
        plain = context.new_page()
        plain.goto(stored.dashboard + "/usage")
        plain.screenshot(path=str(screenshots / "usage-no-javascript.png"), full_page=True)
        svg = plain.locator(".uchart svg.chart-svg").first
        assert svg.locator("g.axis.x text.tick").count() >= 2 and svg.locator("g.axis.y text.tick").count() >= 2
        units = svg.locator("text.unit").all_text_contents()
        assert "time (UTC)" in units and any(u in units for u in ("tokens", "USD", "requests")), units
    finally:
        context.close()


@pytest.mark.tooling
def test_the_watch_catches_csp_violations_and_failed_requests(watched: Watched, screenshots: Path) -> None:
    """The page checks above can fail: an inline script (refused by the dashboard's CSP) and a missing
    file are both reported."""
    watched.visit("/", screenshots / "watch-check.png")
    watched.page.evaluate(
        """() => {
        const s = document.createElement("script"); s.textContent = "window.ran = 1"; document.body.append(s);
        const i = document.createElement("img"); i.src = "/static/no-such-file.png"; document.body.append(i);
    }"""
    )
    watched.page.wait_for_timeout(300)
    assert watched.page.evaluate("window.ran") is None  # the CSP kept the inline script from running
    with pytest.raises(AssertionError) as caught:
        watched.settle(screenshots / "watch-check-after.png")
    text = str(caught.value)
    assert "Content Security Policy" in text and "HTTP 404" in text and "no-such-file.png" in text
