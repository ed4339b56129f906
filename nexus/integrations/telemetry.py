"""Telemetry: per-request metrics POSTed in batches to `TELEMETRY_ENDPOINT` (docs/telemetry.md).

The reference system POSTed one JSON object per request (`requestId, timestamp, projectId, apiKey (its
last 10 characters), model, inputTokens, outputTokens, duration, status, error?, toolCallCount,
requestType`) with a 5 s timeout. Nexus sends the same fields, camelCase, a batch per POST as
`{"source": "nexus", "version", "events": [...]}`, and never any part of a key: the account id names
the credential instead. No prompt, reply, header or body is ever included; the error text (the
gateway's own description, e.g. "upstream answered 529") and the model name (client text) are masked
and cut. A failed POST is retried
once, then its batch is given up and counted.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson

from nexus import __version__
from nexus.integrations.events import FinishedRequest, Reading
from nexus.integrations.http import Posted, post_json
from nexus.integrations.queue import BatchQueue, Counts, in_thread
from nexus.observability.recorder import route_label
from nexus.security.masking import mask_secrets
from nexus.settings import Settings

log = logging.getLogger("nexus.integrations.telemetry")
ATTEMPTS = 2
#: Longest model name sent (model ids are short; anything longer is not one).
MAX_MODEL_CHARS = 200


class Telemetry:
    def __init__(self, endpoint: str, batch_size: int, interval_s: float, queue_size: int) -> None:
        self.endpoint = endpoint
        self.counts = Counts("telemetry")
        self.queue: BatchQueue[FinishedRequest] = BatchQueue(
            self.counts, queue_size, batch_size, interval_s, self._deliver, size=_body_bytes
        )
        self.posts = 0

    @classmethod
    def of(cls, s: Settings) -> Telemetry:
        assert s.telemetry_endpoint is not None
        return cls(s.telemetry_endpoint, s.telemetry_batch_size, s.telemetry_interval_s, s.telemetry_queue_size)

    def offer(self, event: FinishedRequest) -> None:
        self.queue.offer(event)

    async def _deliver(self, batch: list[FinishedRequest]) -> None:
        payload = await in_thread(self.payload, batch)
        posted = Posted(None, error="not sent")
        for attempt in range(ATTEMPTS):
            posted = await in_thread(post_json, self.endpoint, payload)
            if posted.ok or (posted.status is not None and posted.status < 500 and posted.status != 429):
                break
            if attempt + 1 < ATTEMPTS:
                await asyncio.sleep(posted.retry_after_s if posted.retry_after_s is not None else 1.0)
        if posted.ok:
            self.posts += 1
            self.counts.add("sent", len(batch))
        else:
            log.warning("telemetry: POST failed (%s); %d requests given up", posted.error, len(batch))
            self.counts.add("failed", len(batch))

    @staticmethod
    def payload(batch: list[FinishedRequest]) -> bytes:
        return orjson.dumps({"source": "nexus", "version": __version__, "events": [metrics_of(e) for e in batch]})

    def snapshot(self) -> dict[str, Any]:
        return {"queued": len(self.queue), "posts": self.posts, **self.counts.totals}


def metrics_of(event: FinishedRequest) -> dict[str, Any]:
    """The metrics of one request: numbers and names, nothing a person wrote."""
    if event.tokens[0] is None and event.response_body:  # a JSON reply: its usage is in the body
        reading = Reading.of(replace(event, request_body=None))  # the prompt is never read
        model, tokens = (
            reading.model,
            (
                reading.input_tokens,
                reading.output_tokens,
                reading.cache_read_tokens,
                reading.cache_creation_tokens,
            ),
        )
        tool_calls = reading.tool_call_count
    else:
        model, tokens, tool_calls = event.model, event.tokens, event.tool_call_count
    out: dict[str, Any] = {
        "requestId": event.request_id,
        "timestamp": datetime.fromtimestamp(event.timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds"),
        "projectId": mask_secrets(event.project_id),  # from a header: a pasted key is masked, as in Slack
        "accountId": mask_secrets(event.account_id) if event.account_id else event.account_id,
        "method": event.method,
        "route": route_label(event.route),
        "model": _model(event.model or model),
        "requestType": event.request_type,
        "status": event.status,
        "outcome": event.outcome,
        "streaming": event.streamed,
        "durationMs": event.duration_ms,
        "firstByteMs": event.first_byte_ms,
        "inputTokens": tokens[0],
        "outputTokens": tokens[1],
        "cacheReadInputTokens": tokens[2],
        "cacheCreationInputTokens": tokens[3],
        "toolCallCount": tool_calls,
    }
    if event.error:
        out["error"] = mask_secrets(event.error)[:300]
    return out


def _model(value: str | None) -> str | None:
    """The model name, masked and cut: the client wrote it (the upstream may echo anything there), so it
    is text from outside like the error, not a name Nexus chose."""
    return mask_secrets(value[: MAX_MODEL_CHARS + 200])[:MAX_MODEL_CHARS] if value else value


def _body_bytes(event: FinishedRequest) -> int:
    return event.body_bytes
