"""Shared fixtures: a real fake-upstream process and real proxy processes in front of it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nexus.testing.control import FakeControl
from nexus.testing.servers import run_fake_upstream, run_proxy

FAST_RETRIES = {
    "UPSTREAM_RETRY_BASE_DELAY_MS": "20",
    "UPSTREAM_RETRY_MAX_DELAY_MS": "2000",
    "UPSTREAM_MAX_ATTEMPTS": "3",
}


@pytest.fixture(scope="session")
def upstream_url() -> Iterator[str]:
    with run_fake_upstream() as url:
        yield url


@pytest.fixture(scope="session")
def proxy_url(upstream_url: str) -> Iterator[str]:
    with run_proxy({"CLAUDE_API_BASE_URL": upstream_url, **FAST_RETRIES}) as url:
        yield url


@pytest.fixture(scope="session")
def tight_proxy_url(upstream_url: str) -> Iterator[str]:
    """A proxy with short timeouts and a small body limit, for the failure cases."""
    env = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "CLAUDE_API_TIMEOUT": "1500",
        "STREAM_IDLE_TIMEOUT_MS": "1000",
        "MAX_REQUEST_SIZE": str(1024 * 1024),
        **FAST_RETRIES,
    }
    with run_proxy(env) as url:
        yield url


@pytest.fixture
def fake(upstream_url: str) -> Iterator[FakeControl]:
    control = FakeControl(upstream_url)
    control.reset()
    yield control
    control.reset()
