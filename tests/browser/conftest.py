"""Browser fixtures: headless Chromium from Debian's package driven by Playwright (PyPI).

Playwright's own browser download comes from a CDN that is not always reachable, so the tests launch
the system's `chromium` through `executable_path`. A missing browser fails the tests with the way to
install it (never a silent skip): `make install` installs it when run as root with apt-get.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: Where every page's screenshot is kept (ignored by git; see docs/testing.md).
SCREENSHOTS = Path(__file__).resolve().parents[2] / "target" / "screenshots"

INSTALL_HINT = (
    "the browser tests need Debian's chromium: run `make install` as root (it runs "
    "`apt-get install -y chromium`), or `sudo apt-get install chromium`, or set NEXUS_CHROMIUM to a "
    "Chromium binary"
)


def chromium_path() -> str:
    """The Chromium binary: NEXUS_CHROMIUM when set, else `chromium` on PATH (Debian's /usr/bin/chromium)."""
    given = os.environ.get("NEXUS_CHROMIUM")
    if given:
        if not os.access(given, os.X_OK):
            pytest.fail(f"NEXUS_CHROMIUM={given} is not an executable: {INSTALL_HINT}", pytrace=False)
        return given
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(f"chromium not found: {INSTALL_HINT}", pytrace=False)
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per module. Not per session: while Playwright's sync API is open it keeps
    its own event loop marked as running on this thread, and every async test after it would fail
    ("Runner.run() cannot be called from a running event loop")."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - the test extra installs it
        pytest.fail("playwright is not installed: run `make install` (the test extra has it)", pytrace=False)
    executable = chromium_path()
    with sync_playwright() as playwright:
        # --no-sandbox: the suite may run as root (containers, CI), where Chromium refuses its sandbox
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
