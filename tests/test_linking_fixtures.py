"""The linker against recorded real-client traffic (tests/fixtures/claude_code), three ways: in
process, through `nexus replay`, and end to end through the proxy with storage, the fake upstream
replaying each recorded response, and the links read back from `/api/requests/{X-Request-ID}`."""

from __future__ import annotations

import http.client
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from nexus.conversations.linker import Linker
from nexus.conversations.replay import load_recording, replay_lines
from tests.harness.control import FakeControl
from tests.harness.servers import run_proxy
from tests.helpers import FAST, get_json, wait_for

FIXTURES = Path(__file__).parent / "fixtures" / "claude_code"
SCENARIOS = sorted(p.name for p in FIXTURES.iterdir() if (p / "expected.jsonl").exists())
FIELDS = ("request_type", "parent_file", "is_subtask", "parent_task_file")


def expected(scenario: str) -> list[dict[str, Any]]:
    lines = (FIXTURES / scenario / "expected.jsonl").read_text().splitlines()
    return [orjson.loads(line) for line in lines if line.strip()]


def check(scenario: str, got: dict[str, dict[str, Any]]) -> None:
    """`got[file]` has the fields of a `nexus replay` line; labels must map one-to-one onto ids."""
    conversations: dict[str, Any] = {}
    branches: dict[tuple[str, str], tuple[Any, Any]] = {}
    for want in expected(scenario):
        line = got[want["file"]]
        assert {k: line[k] for k in FIELDS} == {k: want[k] for k in FIELDS}, (scenario, want["file"])
        if want["conversation"] is None:
            continue
        assert line["conversation_id"] is not None, (scenario, want["file"])
        assert conversations.setdefault(want["conversation"], line["conversation_id"]) == line["conversation_id"]
        key = (want["conversation"], want["branch"])
        assert branches.setdefault(key, (line["conversation_id"], line["branch_id"])) == (
            line["conversation_id"],
            line["branch_id"],
        ), (scenario, want["file"], want["branch"])
        assert (line["branch_id"] == "main") == (want["branch"] == "main"), (scenario, want["file"])
    assert len(set(conversations.values())) == len(conversations), f"{scenario}: conversations merged"
    assert len(set(branches.values())) == len(branches), f"{scenario}: branches merged"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_replayed_in_process(scenario: str) -> None:
    lines = replay_lines(load_recording(FIXTURES / scenario), Linker())
    check(scenario, {line["file"]: line for line, _ in lines})


def test_replayed_by_the_cli() -> None:
    """`nexus replay DIR` prints one JSON line per request; all scenarios through one process each."""
    for scenario in SCENARIOS:
        out = subprocess.run(
            [sys.executable, "-m", "nexus.cli", "replay", str(FIXTURES / scenario), "--no-store"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        lines = [orjson.loads(line) for line in out.splitlines()]
        assert [line["file"] for line in lines] == [e["file"] for e in expected(scenario)]
        check(scenario, {line["file"]: line for line in lines})


def send(url: str, method: str, path: str, headers: dict[str, str], body: bytes | None) -> tuple[int, dict[str, str]]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    sent = {k: v for k, v in headers.items() if k not in ("host", "content-length", "connection", "accept-encoding")}
    conn.request(method, path, body=body, headers=sent)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_through_the_proxy(
    scenario: str, upstream_url: str, migrated_db: str, tmp_path: Path, fake: FakeControl
) -> None:
    through_proxy(scenario, upstream_url, migrated_db, tmp_path, fake, workers=1)


@pytest.mark.parametrize("scenario", ["subagent_foreground", "tool_loop", "compact_merged"])
def test_through_two_workers(
    scenario: str, upstream_url: str, migrated_db: str, tmp_path: Path, fake: FakeControl
) -> None:
    """Each request on a new connection, so turns land on either worker: what one worker linked and
    queued, the other finds in the database (asked again after a batch interval when not yet there)."""
    through_proxy(scenario, upstream_url, migrated_db, tmp_path, fake, workers=2)


def through_proxy(
    scenario: str, upstream_url: str, migrated_db: str, tmp_path: Path, fake: FakeControl, *, workers: int
) -> None:
    recording = load_recording(FIXTURES / scenario)
    env = {
        "CLAUDE_API_BASE_URL": upstream_url,
        "DATABASE_URL": migrated_db,
        "NEXUS_HOME": str(tmp_path),
        "UPSTREAM_MAX_ATTEMPTS": "1",  # the recorded client saw each 529 itself and re-sent
        **FAST,
    }
    with run_proxy(env, workers=workers) as url:
        got: dict[str, dict[str, Any]] = {}
        files: dict[str, str] = {}
        for rec in recording:
            if rec.path.split("?")[0] == "/v1/messages":
                fake.replies({"status": rec.status, "body": rec.response})
            status, headers = send(url, rec.method, rec.path, rec.headers, rec.body)
            assert status == rec.status, (scenario, rec.file)
            request_id = headers.get("x-request-id", "")
            files[request_id] = rec.file
            if not rec.path.startswith("/v1/"):
                got[rec.file] = {"request_type": "auxiliary", "parent_file": None, "is_subtask": False,
                                 "parent_task_file": None, "conversation_id": None, "branch_id": None}  # fmt: skip
                continue
            got[rec.file] = {"request_id": request_id}
        stored = [g["request_id"] for g in got.values() if "request_id" in g]
        wait_for(lambda: get_json(f"{url}/api/requests?limit=500")["requests"].__len__() == len(stored), what="rows")
        for g in got.values():
            if "request_id" in g:
                row = get_json(f"{url}/api/requests/{g['request_id']}")
                g.update(
                    request_type=row["request_type"],
                    conversation_id=row["conversation_id"],
                    branch_id=row["branch_id"],
                    is_subtask=row["is_subtask"],
                    parent_file=files.get(row["parent_request_id"]),
                    parent_task_file=files.get(row["parent_task_request_id"]),
                )
    check(scenario, got)
