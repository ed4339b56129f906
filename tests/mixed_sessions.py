"""Every recorded session at once, plus sessions derived from them the way other clients differ.

The recordings (tests/fixtures/claude_code) are Claude Code 2.1 and the Python SDK. Derived from them,
with the labels of `expected.jsonl` unchanged since only what the clients send differently is rewritten:

- `cc20_multi_turn`, `cc10_multi_turn`: the `-p`/`--continue`/`--resume` session as Claude Code 2.0 and
  1.0 sent it: no `x-claude-code-session-id` header, the session named only in `metadata.user_id`
  (`user_<hex>_account__session_<uuid>`). Three sessions now open with the same prompt and the same
  reply: identical histories, told apart only by the session each names.
- `cc10_compact`: `/compact` as Claude Code 1.0 sent it: the continuation quotes the whole reply with
  its tags turned into headings ("The conversation is summarized below:\\nAnalysis:\\n...Summary:\\n..."),
  in a session of its own whose summary is the same as the 2.1 session's.
- `twin_subagents`: the background sub-agents scenario with both `Agent` calls given the same prompt:
  two sub-agents whose first requests are identical but for their agent id.

Each derived copy has its own session ids and agent ids, so no request is a retry of the original's.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from nexus.conversations.replay import Recorded, load_recording

FIXTURES = Path(__file__).parent / "fixtures" / "claude_code"
HEX = "5e4c2b0d9a8f7e6d5c4b3a2918070605f4e3d2c1b0a99887766554433221100f"
ALPHA = "SUBTASK-ALPHA: run `echo alpha` and report what it printed."
BETA = "SUBTASK-BETA: report that there is nothing to do."
CC10_CONTINUATION = (
    "This session is being continued from a previous conversation that ran out of context. The conversation "
    "is summarized below:\nAnalysis:\n{analysis}\n\nSummary:\n{summary}\nPlease continue the conversation from "
    "where we left it off without asking the user any further questions. Continue with the last task that you "
    "were asked to work on."
)


@dataclass
class Session:
    name: str
    scenario: str  # the fixture directory whose expected.jsonl holds its labels
    requests: list[Recorded]


def _ids(recording: list[Recorded]) -> set[str]:
    """The session and agent ids a recording carries (rewritten in a copy)."""
    found = set()
    for rec in recording:
        for name in ("x-claude-code-session-id", "x-claude-code-agent-id"):
            if rec.headers.get(name):
                found.add(rec.headers[name])
        if rec.body is not None:
            metadata = orjson.loads(rec.body).get("metadata") or {}
            user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
            if isinstance(user_id, str) and user_id.startswith("{"):
                session = orjson.loads(user_id).get("session_id")
                if session:
                    found.add(session)
    return found


def _rewrite(text: str, swaps: dict[str, str]) -> str:
    for old, new in swaps.items():
        text = text.replace(old, new)
    return text


def derive(name: str, scenario: str, swaps: dict[str, str] | None = None, *, legacy: str | None = None) -> Session:
    """A copy of a recorded scenario with fresh session and agent ids, `swaps` applied to every request
    and reply, and with `legacy` (a user agent) the session said only in a legacy `metadata.user_id`."""
    recording = load_recording(FIXTURES / scenario)
    fresh = {old: (str(uuid.uuid4()) if "-" in old else uuid.uuid4().hex[:17]) for old in _ids(recording)}
    swaps = {**fresh, **(swaps or {})}
    out = []
    for rec in recording:
        headers = {k: _rewrite(v, swaps) for k, v in rec.headers.items()}
        body = orjson.loads(_rewrite(rec.body.decode(), swaps)) if rec.body is not None else None
        response: Any = orjson.loads(_rewrite(orjson.dumps(rec.response).decode(), swaps))
        if legacy is not None and isinstance(body, dict):
            session = headers.pop("x-claude-code-session-id", None)
            headers["user-agent"] = legacy
            if session is not None:
                body["metadata"] = {"user_id": f"user_{HEX}_account__session_{session}"}
            if scenario == "compact":
                _old_compaction_quote(body)
        raw = orjson.dumps(body) if body is not None else None
        out.append(replace(rec, headers=headers, body=raw, response=response))
    return Session(name, scenario, out)


def _old_compaction_quote(body: dict[str, Any]) -> None:
    """Claude Code 1.0's continuation: the whole compaction reply, its tags turned into headings."""
    first = body["messages"][0]
    if not (isinstance(first.get("content"), str) and first["content"].startswith("This session is being")):
        return
    reply = orjson.loads((FIXTURES / "compact" / "0004-messages.json").read_bytes())["response"]["body"]
    written = reply["content"][0]["text"]
    analysis = written.split("<analysis>")[1].split("</analysis>")[0].strip()
    summary = written.split("<summary>")[1].split("</summary>")[0].strip()
    first["content"] = CC10_CONTINUATION.format(analysis=analysis, summary=summary)


def all_sessions() -> list[Session]:
    """Every recorded scenario as it was recorded, and the derived sessions."""
    recorded = sorted(p.name for p in FIXTURES.iterdir() if (p / "expected.jsonl").exists())
    sessions = [Session(name, name, load_recording(FIXTURES / name)) for name in recorded]
    sessions += [
        derive("cc20_multi_turn", "multi_turn_continue_resume", legacy="claude-cli/2.0.14 (external, cli)"),
        derive("cc10_multi_turn", "multi_turn_continue_resume", legacy="claude-cli/1.0.128 (external, cli)"),
        derive("cc10_compact", "compact", legacy="claude-cli/1.0.128 (external, cli)"),
        derive("twin_subagents", "subagents_background", {BETA: ALPHA}),
    ]
    return sessions


def interleaved(sessions: list[Session]) -> list[tuple[int, int, Recorded]]:
    """All sessions at once: request i of every session before request i + 1 of any; (k, i, request)."""
    out = []
    for i in range(max(len(s.requests) for s in sessions)):
        for k, session in enumerate(sessions):
            if i < len(session.requests):
                out.append((k, i, session.requests[i]))
    return out
