"""The fault a fake upstream request gets (`x-fake-scenario: <spec>`, or the queue of `/_fake/scenarios`).

Its own module so that the scripted replies (`nexus.fake_upstream.scripted`) and the server
(`nexus.fake_upstream.server`) both use it without importing each other both ways.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Scenario:
    kind: str = "ok"
    value: int = 0
    retry_after: str = "1"

    @classmethod
    def parse(cls, spec: str) -> Scenario:
        parts = spec.strip().split(":")
        kind = parts[0]
        if kind in ("ok", "hang"):
            return cls(kind)
        if kind == "error" and len(parts) >= 2:
            retry_after = parts[2].split("=", 1)[1] if len(parts) > 2 and parts[2].startswith("retry-after=") else "1"
            return cls("error", int(parts[1]), retry_after)
        if kind in ("delay", "event-delay", "hang-after", "drop-after", "error-event-after") and len(parts) == 2:
            return cls(kind, int(parts[1]))
        raise ValueError(f"unknown fake scenario {spec!r}")
