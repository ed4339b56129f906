"""A small client for the fake upstream's `/_fake/*` control endpoints, used by tests and benchmarks."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import orjson


class FakeControl:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def _call(self, method: str, path: str, payload: object | None = None) -> Any:
        data = None if payload is None else orjson.dumps(payload)
        req = urllib.request.Request(self.base_url + path, data=data, method=method)  # noqa: S310 (loopback only)
        if data is not None:
            req.add_header("content-type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            body = resp.read()
        return orjson.loads(body) if body else None

    def reset(self) -> None:
        self._call("POST", "/_fake/reset", {})

    def queue(self, *scenarios: str) -> None:
        self._call("POST", "/_fake/scenarios", {"scenarios": list(scenarios)})

    def script(self, *rules: dict[str, Any], append: bool = False) -> list[dict[str, Any]]:
        """Load scripted reply rules (see `nexus.fake_upstream.scripted`); returns them with hit counts."""
        return self._call("POST", "/_fake/script", {"rules": list(rules), "append": append})["rules"]

    def script_state(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_fake/script")["rules"]

    def replies(self, *entries: dict[str, Any]) -> int:
        """Queue final messages (or recorded responses) for the next `/v1/messages` requests."""
        return self._call("POST", "/_fake/replies", {"replies": list(entries)})["queued"]

    def replies_left(self) -> int:
        return self._call("GET", "/_fake/replies")["queued"]

    def record(self, directory: str | None) -> dict[str, Any]:
        """Start recording every API request to `directory` (None stops)."""
        return self._call("POST", "/_fake/record", {"dir": directory})

    def requests(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_fake/requests")

    def events(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_fake/events")

    def oauth(self, **config: object) -> dict[str, Any]:
        """Configure (with arguments) or read the fake token endpoint."""
        return self._call("POST", "/_fake/oauth", config) if config else self._call("GET", "/_fake/oauth")

    def wait_for_event(self, outcome: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """Poll until a connection record with `outcome` appears; the wait is bounded."""
        deadline = time.monotonic() + timeout_s
        while True:
            for event in self.events():
                if event.get("outcome") == outcome:
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"no {outcome!r} event within {timeout_s}s: {self.events()}")
            time.sleep(0.02)
