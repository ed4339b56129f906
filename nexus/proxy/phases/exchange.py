"""The state of one proxied request as it passes from phase to phase.

One small object instead of a dozen arguments: each phase reads what earlier phases learned and adds
what a later one needs (the record storage keeps, the relay's outcome, the timestamps metrics split
the latency by). Nothing here does I/O.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from nexus._core import RequestAnalysis
from nexus.auth.service import Authorization
from nexus.proxy.relay import Outcome
from nexus.storage.records import ExchangeRecord


@dataclass(slots=True)
class Admitted:
    """A request that passed every check the proxy makes before forwarding."""

    auth: Authorization
    target: str
    body: bytes | None
    analysis: RequestAnalysis | None
    #: The client's headers as read once for the checks (Granian builds a new list on every `items()`).
    header_items: list[tuple[str, str]]
    #: Seconds spent waiting for the client's body (not the proxy's own time).
    upload_s: float = 0.0
    #: The analysis job whose worker sent this request (its mark checked), kept out of conversations.
    analysis_job: int | None = None


@dataclass(slots=True)
class Arrival:
    """What is known of a request the moment it arrives, before any check."""

    request_id: str
    method: str
    path: str
    #: Wall-clock start, microseconds since the epoch (the stored `started_at`).
    started_us: int
    #: Monotonic start: every latency metrics report is counted from here.
    arrived: float
    #: Headers added to the client's response (CORS grants).
    extra: list[tuple[str, str]]
    #: The request's trace span (None without tracing).
    span: Any = None


@dataclass(slots=True)
class Exchange:
    """One admitted request between its phases."""

    arrival: Arrival
    admitted: Admitted
    #: What storage keeps; every phase fills its part (link, attempts, outcome, response).
    record: ExchangeRecord
    #: Monotonic: the record began (its duration counts from here).
    started: float
    #: Monotonic: the request left for the upstream, and the relay ended (None: it did not end normally).
    to_upstream: float = 0.0
    relayed: float | None = None
    #: The upstream child span of `arrival.span`.
    upstream_span: Any = None
    outcome: Outcome = field(default_factory=Outcome)
    #: Input, output, cache-write and cache-read tokens counted for a `/v1/messages` request.
    tokens: tuple[int, int, int, int] | None = None
    #: Set by the disconnect watcher: the client left while the request ran.
    disconnected: bool = False
    #: Set once the request path has ended: a disconnect noticed later cancels nothing.
    done: bool = False

    @classmethod
    def begin(cls, arrival: Arrival, admitted: Admitted) -> Exchange:
        """The record of an admitted request, its duration counted from here."""
        auth = admitted.auth
        started = time.monotonic()
        record = ExchangeRecord(
            arrival.request_id,
            arrival.started_us,
            auth.project_id,
            auth.account_id,
            arrival.method,
            admitted.target,
            admitted.header_items,
            admitted.body,
        )
        return cls(arrival, admitted, record, started)

    @property
    def path(self) -> str:
        return self.arrival.path

    @property
    def is_messages(self) -> bool:
        return self.arrival.path == "/v1/messages"

    @property
    def model(self) -> str | None:
        """The model the request asks for (None: not a Messages request, or no body)."""
        analysis = self.admitted.analysis
        return analysis.model if analysis is not None else None
