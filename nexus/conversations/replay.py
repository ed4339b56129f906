"""Replaying recorded requests through the linker (and optionally into storage): `nexus replay DIR`.

A recording is a directory of JSON files, one per request, replayed in file-name order, each with
`timestamp` (ISO 8601), `method`, `path`, `headers`, `body` (the request JSON) and `response`
(`status` and the final message `body`). This is the format `nexus fake-upstream --record-dir` records in and the
fixtures under `tests/fixtures/claude_code/` use, so the linker is checked against real client traffic
with exactly the code the proxy runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from nexus._core import NexusCoreError, RequestAnalysis, analyze_request
from nexus.auth.projects import resolve_project
from nexus.conversations.linker import Link, Linker
from nexus.conversations.service import link_request
from nexus.ids import new_request_id
from nexus.storage.records import ExchangeRecord


@dataclass(slots=True)
class Recorded:
    file: str
    timestamp: float
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None
    status: int
    response: Any


def load_recording(directory: Path) -> list[Recorded]:
    """The request files of a recording, in file-name order (other files, e.g. expected.jsonl, skipped)."""
    out = []
    for path in sorted(directory.glob("*.json")):
        data = orjson.loads(path.read_bytes())
        if not isinstance(data, dict) or "path" not in data or "response" not in data:
            continue
        stamp = datetime.fromisoformat(str(data["timestamp"]).replace("Z", "+00:00")).timestamp()
        body = data.get("body")
        response = data.get("response") or {}
        out.append(
            Recorded(
                path.name,
                stamp,
                str(data.get("method", "POST")),
                str(data["path"]),
                {str(k).lower(): str(v) for k, v in (data.get("headers") or {}).items()},
                orjson.dumps(body) if body is not None else None,
                int(response.get("status") or 0),
                response.get("body"),
            )
        )
    return out


def analyze(path: str, body: bytes | None) -> RequestAnalysis | None:
    """The analysis of a `/v1/messages*` body, or None (other paths, or a body that is not JSON)."""
    if body is None or not path.startswith("/v1/messages"):
        return None
    try:
        return analyze_request(body, strict=False)
    except NexusCoreError:
        return None


def replay(
    recording: list[Recorded], linker: Linker, project: str | None = None
) -> Iterator[tuple[Recorded, str, Link, RequestAnalysis | None, list[bytes]]]:
    """Link each recorded request in order; yield it with its request id, link, analysis and spawned prompts."""
    for rec in recording:
        request_id = new_request_id(int(rec.timestamp * 1000))
        analysis = analyze(rec.path, rec.body)
        req = link_request(
            request_id, project or resolve_project(rec.headers, None), rec.timestamp, rec.path, rec.headers, analysis
        )
        link = linker.decide(req)
        linker.register(req, link)
        keys = linker.complete(request_id, rec.status == 200, rec.response)
        yield rec, request_id, link, analysis, keys


def replay_lines(
    recording: list[Recorded], linker: Linker, project: str | None = None, *, with_records: bool = False
) -> Iterator[tuple[dict[str, Any], ExchangeRecord | None]]:
    """The `nexus replay` output, one JSON-able line per request with parents named by file, and (with
    `with_records`) the storage record of each request."""
    files: dict[str, str] = {}
    for rec, request_id, link, analysis, keys in replay(recording, linker, project):
        files[request_id] = rec.file
        line = {
            "file": rec.file,
            "request_id": request_id,
            "conversation_id": link.conversation_id,
            "branch_id": link.branch_id,
            "parent_file": files.get(link.parent_request_id or ""),
            "is_subtask": link.is_subtask,
            "parent_task_file": files.get(link.parent_task_request_id or ""),
            "request_type": link.request_type,
        }
        yield line, (_record(rec, request_id, project, link, analysis, keys) if with_records else None)


def _record(
    rec: Recorded, request_id: str, project: str | None, link: Link, analysis: RequestAnalysis | None, keys: list[bytes]
) -> ExchangeRecord:
    record = ExchangeRecord(
        request_id,
        int(rec.timestamp * 1_000_000),
        project or resolve_project(rec.headers, None),
        None,
        rec.method,
        rec.path,
        list(rec.headers.items()),
        rec.body,
        response_status=rec.status,
        response_body=orjson.dumps(rec.response) if rec.response is not None else None,
        outcome="completed" if rec.status == 200 else "upstream_error",
    )
    record.analysis, record.link, record.request_type = analysis, link, link.request_type
    record.task_prompt_keys = keys or None
    return record
