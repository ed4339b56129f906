"""Test samples: sanitised request/response pairs written to `TEST_SAMPLES_DIR` (`COLLECT_TEST_SAMPLES`).

For building test fixtures from real traffic (docs/telemetry.md). Each finished proxied request becomes
one JSON file `<UTC time>_<request type or route>_<stream|json>_<request id>.json` holding the method,
path, the request headers on storage's allow-list (`STORED_REQUEST_HEADERS`: no credential header can
be written), the response headers, both bodies parsed, and the status, every string masked by
`nexus.security.masking`. Bounded: an exchange larger than `TEST_SAMPLES_MAX_BYTES` is skipped, and
once the folder holds `TEST_SAMPLES_MAX_FILES` samples no more are written (both counted as `skipped`;
the folder is counted before each batch, so several workers share the bound and deleting samples makes
room).
Files are private to the gateway's user (0600 in a 0700 folder), written whole or not at all.
"""

from __future__ import annotations

import logging
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from nexus.integrations.events import FinishedRequest
from nexus.integrations.queue import BatchQueue, Counts, in_thread
from nexus.observability.recorder import route_label
from nexus.security.masking import mask_secrets, mask_value
from nexus.settings import Settings
from nexus.storage.records import STORED_REQUEST_HEADERS, _parse

log = logging.getLogger("nexus.integrations.samples")
SUFFIX = ".json"
HIDDEN_RESPONSE_HEADERS = frozenset({"set-cookie"})
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]+")


class SampleWriter:
    def __init__(self, directory: Path, max_files: int, max_bytes: int, queue_size: int = 1000) -> None:
        self.directory = directory
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.counts = Counts("samples")
        self.queue: BatchQueue[FinishedRequest] = BatchQueue(
            self.counts, queue_size, 50, 0.05, self._deliver, size=_body_bytes
        )
        self._files: int | None = None  # samples in the folder, counted before each batch

    @classmethod
    def of(cls, s: Settings) -> SampleWriter:
        return cls(s.test_samples_dir, s.test_samples_max_files, s.test_samples_max_bytes)

    def offer(self, event: FinishedRequest) -> None:
        self.queue.offer(event)  # a full folder is found by the batch (samples may have been deleted since)

    async def _deliver(self, batch: list[FinishedRequest]) -> None:
        await in_thread(self.write_all, batch)

    def write_all(self, batch: list[FinishedRequest]) -> None:
        if self._files is None:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # counted again for every batch: other proxy workers (and people deleting samples) change it
        self._files = sum(1 for p in self.directory.iterdir() if p.suffix == SUFFIX)
        for event in batch:
            size = len(event.request_body or b"") + len(event.response_body or b"")
            if self._files >= self.max_files or size > self.max_bytes:
                self.counts.add("skipped")
                continue
            try:
                self.write(event)
            except OSError as exc:
                log.warning("samples: %s not written (%s)", event.request_id, exc.__class__.__name__)
                self.counts.add("failed")
                continue
            self._files += 1
            self.counts.add("sent")

    def write(self, event: FinishedRequest) -> Path:
        at = datetime.fromtimestamp(event.timestamp_ms / 1000, UTC)
        kind = _UNSAFE.sub("-", event.request_type or route_label(event.route))[:40]
        name = f"{at:%Y%m%dT%H%M%S}_{kind}_{'stream' if event.streamed else 'json'}_{_UNSAFE.sub('', event.request_id)}"
        path = self.directory / (name + SUFFIX)
        data = orjson.dumps(sample(event), option=orjson.OPT_INDENT_2)
        tmp = path.with_name(f".{name}.tmp")  # hidden until whole
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    def snapshot(self) -> dict[str, Any]:
        return {"queued": len(self.queue), "files": self._files, **self.counts.totals}


def sample(event: FinishedRequest) -> dict[str, Any]:
    """The masked sample of one exchange."""
    return {
        "requestId": event.request_id,
        "timestamp": datetime.fromtimestamp(event.timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds"),
        "projectId": mask_secrets(event.project_id),
        "requestType": event.request_type,
        "request": {
            "method": event.method,
            "path": mask_secrets(event.path),
            "headers": {k: mask_secrets(v) for k, v in event.request_headers if k in STORED_REQUEST_HEADERS},
            "body": _body(event.request_body),
        },
        "response": {
            "status": event.status,
            "streaming": event.streamed,
            "headers": {
                k: mask_secrets(v) for k, v in event.response_headers or () if k not in HIDDEN_RESPONSE_HEADERS
            },
            "body": _body(event.response_body),
        },
        "outcome": event.outcome,
        "error": mask_secrets(event.error) if event.error else None,
        "durationMs": event.duration_ms,
    }


def _body(data: bytes | None) -> Any:
    if not data:
        return None
    parsed = _parse(data)
    if parsed is None:  # not JSON: kept as masked text
        return {"unparsed": mask_secrets(data.decode("utf-8", "replace"))}
    return mask_value(parsed)


def _body_bytes(event: FinishedRequest) -> int:
    return event.body_bytes
