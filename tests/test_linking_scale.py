"""Issue 10's linking check: every recorded session at once through two `nexus serve` instances that
share nothing but `DATABASE_URL`, each with two workers, one of them restarted halfway, must link every
request exactly as a single worker does (and as the hand-written labels say).

Request i of session k goes to instance (i + k) mod 2, each on a new connection (so to either of that
instance's workers). Halfway, instance B is stopped with SIGTERM; while it is down its share goes to A;
then it is started again on the same port and takes its share back.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from nexus.conversations.linker import Linker
from nexus.conversations.replay import Recorded, replay_lines
from tests.harness.control import FakeControl
from tests.harness.servers import free_port, stop, wait_until_healthy
from tests.helpers import FAST, get_json, wait_for
from tests.mixed_sessions import Session, all_sessions, interleaved
from tests.test_linking_fixtures import check

PROJECT = "linking-scale"
NOT_LINKED = {"conversation_id": None, "branch_id": None, "is_subtask": False, "parent_file": None,
              "parent_task_file": None}  # fmt: skip
LINK_FIELDS = ("request_type", "parent_file", "is_subtask", "parent_task_file")


def single_worker(order: list[tuple[int, int, Recorded]], sessions: list[Session]) -> dict[str, dict[str, Any]]:
    """What one worker's in-memory linker decides for the same requests in the same order."""
    recording = [
        replace(rec, file=f"{sessions[k].name}/{rec.file}", timestamp=1_800_000_000 + n)
        for n, (k, _, rec) in enumerate(order)
    ]
    return {line["file"]: line for line, _ in replay_lines(recording, Linker(), PROJECT)}


def test_all_sessions_at_once_in_one_worker_are_linked_as_labelled() -> None:
    """The reference the instances are held to is itself right: every label of every session."""
    sessions = all_sessions()
    got = single_worker(interleaved(sessions), sessions)
    for session in sessions:
        prefix = f"{session.name}/"
        mine = {f.removeprefix(prefix): line for f, line in got.items() if f.startswith(prefix)}
        for line in mine.values():
            line["parent_file"] = _local(line["parent_file"], prefix)
            line["parent_task_file"] = _local(line["parent_task_file"], prefix)
        check(session.scenario, mine)


def _local(file: str | None, prefix: str) -> str | None:
    """A parent named within its own session; one in another session keeps its full name (and fails)."""
    return file.removeprefix(prefix) if file is not None and file.startswith(prefix) else file


class Instance:
    """One `nexus serve`: its own NEXUS_HOME and empty CREDENTIALS_DIR, the shared DATABASE_URL."""

    def __init__(self, name: str, tmp_path: Path, env: dict[str, str]) -> None:
        self.name, self.home = name, tmp_path / name
        (self.home / "credentials").mkdir(parents=True)
        self.port, self.dashboard_port = free_port(), free_port()
        self.env = {
            **os.environ,
            **env,
            "NEXUS_HOME": str(self.home),
            "CREDENTIALS_DIR": str(self.home / "credentials"),
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "DASHBOARD_HOST": "127.0.0.1",
            "DASHBOARD_PORT": str(self.dashboard_port),
            "PROXY_WORKERS": "2",
        }
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with (self.home / f"serve-{self.starts}.log").open("wb") as out:
            cmd = [sys.executable, "-m", "nexus.cli", "serve"]
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=out)
        try:
            wait_until_healthy(self.url + "/health", self.proc, 40)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, 40)  # SIGTERM to `nexus serve`, which stops its proxy and dashboard
            self.proc = None

    @property
    def up(self) -> bool:
        return self.proc is not None

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.home.glob("serve-*.log")))


def send(url: str, rec: Recorded, extra: dict[str, str] | None = None) -> tuple[int, str]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    skip = ("host", "content-length", "connection", "accept-encoding")
    headers = {k: v for k, v in rec.headers.items() if k not in skip} | {"train-id": PROJECT} | (extra or {})
    conn.request(rec.method, rec.path, body=rec.body, headers=headers)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status, resp.getheader("x-request-id") or ""


@pytest.mark.timeout(180)
def test_two_instances_of_two_workers_with_a_restart_link_as_one_worker(
    upstream_url: str, migrated_db: str, tmp_path: Path, fake: FakeControl
) -> None:
    sessions = all_sessions()
    order = interleaved(sessions)
    env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": migrated_db, "UPSTREAM_MAX_ATTEMPTS": "1", **FAST}
    instances = [Instance("a", tmp_path, env), Instance("b", tmp_path, env)]
    files: dict[str, str] = {}
    outside: list[str] = []
    try:
        for instance in instances:
            instance.start()
        restart_at, back_at = len(order) // 2, len(order) // 2 + 12
        for n, (k, i, rec) in enumerate(order):
            if n == restart_at:
                instances[1].stop()  # while it is down, A takes its share
            if n == back_at:
                instances[1].start()  # on the same port, with an empty memory
            target = instances[(i + k) % 2]
            if not target.up:
                target = instances[0]
            if rec.path.split("?")[0] == "/v1/messages":
                fake.replies({"status": rec.status, "body": rec.response})
            status, request_id = send(target.url, rec)
            assert status == rec.status, (sessions[k].name, rec.file, target.name)
            if rec.path.startswith("/v1/"):
                files[request_id] = f"{sessions[k].name}/{rec.file}"
            else:  # `HEAD /api/hello`: the proxy's own probe, never stored nor linked
                outside.append(f"{sessions[k].name}/{rec.file}")
        url = instances[0].url
        wait_for(lambda: _stored(migrated_db) >= len(files), what="every row", timeout_s=30)
        got = stored_links(url, files, outside)
        logs = "".join(instance.logs() for instance in instances)
    finally:
        for instance in instances:
            instance.stop()
    assert "shared linking of" not in logs, "a decision fell back to one worker's memory"
    assert instances[1].starts == 2
    want = single_worker(interleaved(sessions), sessions)
    assert set(got) == set(want)
    same(want, got)


def same(want: dict[str, dict[str, Any]], got: dict[str, dict[str, Any]]) -> None:
    """Every link as the single worker's: the same parents and types, and conversations and branches
    that map one-to-one onto its (ids differ; which requests share one must not)."""
    wrong = [f for f in want if any(want[f][k] != got[f][k] for k in LINK_FIELDS)]
    conversations: dict[Any, set[Any]] = {}
    branches: dict[Any, set[Any]] = {}
    for f, w in want.items():
        conversations.setdefault(w["conversation_id"], set()).add(got[f]["conversation_id"])
        key = (w["conversation_id"], w["branch_id"])
        branches.setdefault(key, set()).add((got[f]["conversation_id"], got[f]["branch_id"]))
        if (w["branch_id"] == "main") != (got[f]["branch_id"] == "main"):
            wrong.append(f)
    split = [c for c, seen in conversations.items() if len(seen) != 1]
    split_branches = [b for b, seen in branches.items() if len(seen) != 1]
    merged = len({next(iter(s)) for s in conversations.values()}) != len(conversations)
    merged_branches = len({next(iter(s)) for s in branches.values()}) != len(branches)
    for f, w in want.items():  # a request in a split or merged conversation or branch is linked wrong
        if len(conversations[w["conversation_id"]]) != 1 or len(branches[(w["conversation_id"], w["branch_id"])]) != 1:
            wrong.append(f)
    wrong = sorted(set(wrong))
    print(f"linked as one worker: {len(want) - len(wrong)}/{len(want)} requests")
    for f in wrong:  # shown with a failure: what one worker decided, and what the instances did
        print("want", f, {k: want[f].get(k) for k in (*LINK_FIELDS, "branch_id", "conversation_id")})
        print("got ", f, {k: got[f].get(k) for k in (*LINK_FIELDS, "branch_id", "conversation_id")})
    details = {f: (want[f], got[f]) for f in wrong[:5]}
    for c in split[:2]:
        details.update({f: (w, got[f]) for f, w in want.items() if w["conversation_id"] == c})
    assert not wrong and not split and not split_branches and not merged and not merged_branches, details


def stored_links(url: str, files: dict[str, str], outside: list[str]) -> dict[str, dict[str, Any]]:
    """The links the instances stored, per recorded file (parents named by file, as `single_worker`)."""
    got: dict[str, dict[str, Any]] = {f: {**NOT_LINKED, "request_type": "auxiliary"} for f in outside}
    for request_id, file in files.items():
        row = get_json(f"{url}/api/requests/{request_id}")
        got[file] = {
            "request_type": row["request_type"],
            "conversation_id": row["conversation_id"],
            "branch_id": row["branch_id"],
            "is_subtask": row["is_subtask"],
            "parent_file": files.get(row["parent_request_id"]),
            "parent_task_file": files.get(row["parent_task_request_id"]),
        }
    return got


def _stored(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM api_requests WHERE project_id = %s", (PROJECT,)).fetchone()
        return int(row[0]) if row else 0


# Failed twice in ~45 runs under load (subagent_foreground linked apart): a reply relayed before its decision
# committed (fixed 2026-12-06, tests/test_linking_shared.py reproduces it); 10/10 since (idle and under load),
# so back in `make test`.
@pytest.mark.timeout(240)
def test_sessions_sent_concurrently_through_two_instances_with_a_restart_link_as_one_worker(
    upstream_url: str, migrated_db: str, tmp_path: Path, fake: FakeControl
) -> None:
    """As above, but every session sends from its own thread at the same time (each session's requests
    in its own order, as one client does), so decisions of different sessions race on both instances
    and their four workers. The fake upstream answers each request with its recorded response, found by
    a header naming the request (the proxy forwards it; linking never reads it)."""
    sessions = all_sessions()
    env = {"CLAUDE_API_BASE_URL": upstream_url, "DATABASE_URL": migrated_db, "UPSTREAM_MAX_ATTEMPTS": "1", **FAST}
    instances = [Instance("a", tmp_path, env), Instance("b", tmp_path, env)]
    rules = [
        {
            "match": {"header": {"x-replay-file": f"<{s.name}/{rec.file}>"}},  # delimited: names nest
            "reply": {"status": rec.status, "body": rec.response},
            "times": 1,
        }
        for s in sessions
        for rec in s.requests
        if rec.path.split("?")[0] == "/v1/messages"
    ]
    fake.script(*rules)
    files: dict[str, str] = {}
    outside: list[str] = []
    total = sum(len(s.requests) for s in sessions)
    sent = 0
    b_up = threading.Event()
    lock = threading.Lock()
    errors: list[str] = []

    def play(k: int) -> None:
        nonlocal sent
        for i, rec in enumerate(sessions[k].requests):
            name = f"{sessions[k].name}/{rec.file}"
            target = instances[(i + k) % 2] if b_up.is_set() else instances[0]
            try:
                status, request_id = send(target.url, rec, {"x-replay-file": f"<{name}>"})
            except ConnectionError:  # B went down between the choice and the connection
                status, request_id = send(instances[0].url, rec, {"x-replay-file": f"<{name}>"})
            with lock:
                sent += 1
                if status != rec.status:
                    errors.append(f"{name}: {status} from {target.name}")
                if rec.path.startswith("/v1/"):
                    files[request_id] = name
                else:
                    outside.append(name)

    try:
        for instance in instances:
            instance.start()
        b_up.set()
        threads = [threading.Thread(target=play, args=(k,)) for k in range(len(sessions))]
        for t in threads:
            t.start()
        wait_for(lambda: sent >= total // 3, what="a third of the requests", timeout_s=60)
        b_up.clear()  # new requests go to A; B drains what it has in flight
        instances[1].stop()
        wait_for(lambda: sent >= total // 2 or all(not t.is_alive() for t in threads), what="more", timeout_s=60)
        instances[1].start()
        b_up.set()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert sent == total
        url = instances[0].url
        wait_for(lambda: _stored(migrated_db) >= len(files), what="every row", timeout_s=30)
        got = stored_links(url, files, outside)
        logs = "".join(instance.logs() for instance in instances)
    finally:
        b_up.clear()
        for instance in instances:
            instance.stop()
    assert "shared linking of" not in logs, "a decision fell back to one worker's memory"
    want = single_worker(interleaved(sessions), sessions)
    assert set(got) == set(want)
    same(want, got)
