"""The proxy's one entry point to the integrations: built from the settings, fed each finished request.

`build_integrations` returns None when none is configured, so a gateway without Slack, telemetry or
samples pays nothing per request. Otherwise `finished` snapshots the record (references, no copies)
and offers it to each enabled sink's bounded queue; the sinks' background tasks do the rest.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from nexus.auth.credentials import CredentialStore
from nexus.auth.db_store import DbCredentials
from nexus.integrations.events import FinishedRequest
from nexus.integrations.samples import SampleWriter
from nexus.integrations.slack import ProjectSlack, SlackConfig, SlackNotifier
from nexus.integrations.telemetry import Telemetry
from nexus.settings import Settings
from nexus.storage.records import ExchangeRecord

log = logging.getLogger("nexus.integrations")
#: At shutdown, how long what is still queued may take to go out.
CLOSE_TIMEOUT_S = 5.0


class Sink(Protocol):
    queue: Any

    def offer(self, event: FinishedRequest) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...


class Integrations:
    def __init__(self, sinks: dict[str, Sink]) -> None:
        self.sinks = sinks

    def start(self) -> None:
        """Start every sink's background task (on the worker's running loop)."""
        for sink in self.sinks.values():
            sink.queue.start()

    def finished(self, record: ExchangeRecord) -> None:
        """A request finished (its record complete): hand it on. Never raises, never waits."""
        try:
            event = FinishedRequest.of(record)
            for sink in self.sinks.values():
                sink.offer(event)
        except Exception:
            log.exception("integrations: request %s not handed on", record.request_id)

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        await asyncio.gather(*(sink.queue.close(timeout_s) for sink in self.sinks.values()), return_exceptions=True)

    def snapshot(self) -> dict[str, Any]:
        return {name: sink.snapshot() for name, sink in self.sinks.items()}


def build_integrations(settings: Settings, project_slack: ProjectSlack | None = None) -> Integrations | None:
    """The enabled sinks; `project_slack(project)` gives a project's `slack` block (its credential file)."""
    sinks: dict[str, Sink] = {}
    if settings.slack_active:
        sinks["slack"] = SlackNotifier(SlackConfig.of(settings), project_slack)
    if settings.telemetry_endpoint and settings.telemetry_enabled:
        sinks["telemetry"] = Telemetry.of(settings)
    if settings.collect_test_samples:
        sinks["samples"] = SampleWriter.of(settings)
    return Integrations(sinks) if sinks else None


def credential_slack(store: CredentialStore, db: DbCredentials | None = None) -> ProjectSlack:
    """A project's `slack` block from its credential: as the database holds it (`db`: the worker's
    cached copy, read for the request itself, so no query here), else from
    `CREDENTIALS_DIR/<project>.credentials.json` (the store re-reads a changed file at most once a
    second, so this is a dict lookup per call)."""

    def lookup(project: str) -> Any:
        credential = db.cached(False, project) if db is not None else None
        if credential is None:
            credential = store.for_project(project)
        return credential.raw.get("slack") if credential is not None else None

    return lookup
