"""Claude Code traffic, generated: the one body builder behind locust, the overhead harness and micro-benchmarks.

A `Session` plays one Claude Code session the way Claude Code 2.1 talks to `/v1/messages`
(/work/shared/CLAUDE-CODE-TRAFFIC.md): a three-block `system` (billing line, identity line, main prompt),
~20 tools, a first user message opened by a `<system-reminder>`, a `role: "system"` entry after it, and a
history that grows every turn: each request re-sends the previous request's messages, the assistant's
reply and a new user turn (a prompt or the `tool_result`s of the tools the reply called). So the linker
finds each request's parent by its history prefix, and the content-addressed store sees a few new parts
per request and many repeated ones, as in production. Bodies start at about `min_kb` KiB and the session
ends before one would pass `max_kb`. One `Agent` call per session adds a sub-agent request (own system
prompt, `cc_is_subagent=true;`, the agent prompt as its only user message).

The reply fed back can be the real one (`record_reply`, from the response: locust) or a plausible
synthetic one (`synthetic_reply`: pre-built corpora for wrk and the Rust load generator). User prompts
carry the fake upstream's marker `[[use_tool:NAME {...}]]` so `nexus.fake_upstream.server` answers
with that tool call; a real API reads it as text.

`corpus()` builds many sessions with synthetic replies, interleaved turn by turn, with `TOKEN` left in
every per-session string (billing hex, prompts, tool ids, session id). A load tool replaces it with a
value per pass over the corpus, so every pass is new traffic whose requests still chain into
conversations (see bench/harness/corpus.lua).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

#: Replaced by a load tool with a per-pass value (six lower-case hex digits) before sending.
TOKEN = "@@NX@@"
CC_VERSION = "2.1.330"
MODEL = "claude-sonnet-4-6"
PATH = "/v1/messages?beta=true"
IDENTITY = "You are Claude Code, Anthropic's official CLI for Claude."
SUBAGENT_IDENTITY = "You are an agent for Claude Code, Anthropic's official CLI for Claude."
BETAS = "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"
BETAS_LATER = BETAS + ",context-management-2025-06-27"
OPENED_FILE = "The user opened the file src/app.py in the IDE."

WORDS = (
    "the a file test run build error fix read write code line function return value proxy stream request "
    "response header body module import class type check path user tool result message cache token parse"
).split()
CODE_WORDS = "def return if else for in import from class self None True False await async with as try".split()

TOOL_SPECS: list[tuple[str, int, dict[str, str]]] = [
    ("Agent", 260, {"description": "string", "prompt": "string", "subagent_type": "string"}),
    ("Bash", 420, {"command": "string", "timeout": "number", "description": "string", "run_in_background": "boolean"}),
    ("Glob", 90, {"pattern": "string", "path": "string"}),
    ("Grep", 200, {"pattern": "string", "path": "string", "glob": "string", "output_mode": "string", "-n": "boolean"}),
    ("ExitPlanMode", 110, {"plan": "string"}),
    ("Read", 170, {"file_path": "string", "offset": "number", "limit": "number"}),
    ("Edit", 160, {"file_path": "string", "old_string": "string", "new_string": "string", "replace_all": "boolean"}),
    ("Write", 100, {"file_path": "string", "content": "string"}),
    ("NotebookEdit", 90, {"notebook_path": "string", "cell_id": "string", "new_source": "string"}),
    ("WebFetch", 130, {"url": "string", "prompt": "string"}),
    ("TodoWrite", 520, {"todos": "array"}),
    ("WebSearch", 90, {"query": "string", "allowed_domains": "array", "blocked_domains": "array"}),
    ("BashOutput", 60, {"bash_id": "string", "filter": "string"}),
    ("KillShell", 40, {"shell_id": "string"}),
    ("SlashCommand", 80, {"command": "string"}),
    ("Skill", 110, {"command": "string"}),
    ("AskUserQuestion", 120, {"questions": "array"}),
    ("EnterPlanMode", 70, {"reason": "string"}),
    ("ListMcpResourcesTool", 50, {"server": "string"}),
    ("ReadMcpResourceTool", 50, {"server": "string", "uri": "string"}),
]
#: Tools a main-thread prompt asks for (through the fake's marker), with an input each.
TOOL_CALLS = ("Read", "Grep", "Bash", "Edit", "Glob")


def prose(rng: random.Random, words: int) -> str:
    """Text that compresses like prose (about 3x), not like one repeated phrase."""
    return " ".join(rng.choice(WORDS) + (str(rng.randrange(1000)) if rng.random() < 0.2 else "") for _ in range(words))


def code(rng: random.Random, lines: int) -> str:
    """Numbered lines of code-like text, as `Read` returns them."""
    out = []
    for i in range(1, lines + 1):
        indent = "    " * rng.randrange(3)
        words = " ".join(rng.choice(CODE_WORDS + WORDS) for _ in range(rng.randrange(2, 10)))
        out.append(f"{i:>6}\u2192{indent}{words}")
    return "\n".join(out)


def tools(rng: random.Random) -> list[dict[str, Any]]:
    """~20 tools with Claude Code's names, long descriptions and JSON schemas (identical per version)."""
    out = []
    for name, words, props in TOOL_SPECS:
        schema = {
            "type": "object",
            "properties": {p: {"type": t, "description": prose(rng, 8)} for p, t in props.items()},
            "required": [next(iter(props))],
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        }
        out.append({"name": name, "description": prose(rng, words), "input_schema": schema})
    return out


def main_prompt(rng: random.Random, cwd: str) -> str:
    sections = ["Tone and style", "Proactiveness", "Doing tasks", "Tool usage policy", "Code References"]
    parts = [f"# {s}\n" + prose(rng, 260) for s in sections]
    env = (
        f"<env>\nWorking directory: {cwd}\nIs directory a git repo: Yes\nPlatform: linux\n"
        f"OS Version: Linux 6.1.0\nToday's date: 2026-11-25\n</env>\n"
        f"You are powered by the model named Sonnet 4.6. The exact model ID is {MODEL}.\n"
    )
    git = (
        "gitStatus: This is the git status at the start of the conversation.\n"
        f"Current branch: main\n\nStatus:\n M {cwd}/src/app.py\n"
    )
    return "\n\n".join(parts) + "\n\n" + env + "\n" + git


@dataclass(frozen=True, slots=True)
class Request:
    """One request as Claude Code sends it."""

    body: bytes
    headers: dict[str, str]
    stream: bool
    thread: str  # "main" or "subagent"
    path: str = PATH


@dataclass(slots=True)
class _Thread:
    """One message history: the main thread or a sub-agent's."""

    system: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    messages: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    limit: int = 1_000_000


class Session:
    """One Claude Code session: call `next_request()`, send it, then `record_reply()` (or let the
    next call invent a reply), until `next_request()` returns None."""

    def __init__(
        self,
        seed: int,
        *,
        stream_share: float = 0.8,
        token: str | None = None,
        min_kb: int = 40,
        max_kb: int = 60,
        api_key: str = "sk-ant-api03-nexus-bench",
        shared_tools: list[dict[str, Any]] | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.token = token if token is not None else f"{self.rng.getrandbits(24):06x}"
        self.stream_share = stream_share
        self.max_bytes = max_kb * 1024
        self.session_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))[:-6] + self.token
        self.headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "x-api-key": api_key,
            "anthropic-version": "2023-06-01",
            "anthropic-beta": BETAS,
            "anthropic-dangerous-direct-browser-access": "true",
            "x-app": "cli",
            "user-agent": f"claude-cli/{CC_VERSION} (external, cli)",
            "x-stainless-lang": "js",
            "x-stainless-package-version": "0.70.0",
            "x-stainless-os": "Linux",
            "x-stainless-arch": "x64",
            "x-stainless-runtime": "node",
            "x-stainless-runtime-version": "v24.3.0",
            "x-stainless-retry-count": "0",
            "x-stainless-timeout": "600",
            "x-claude-code-session-id": self.session_id,
        }
        self.user_id = orjson.dumps(
            {"device_id": f"{self.rng.getrandbits(256):064x}", "account_uuid": "", "session_id": self.session_id}
        ).decode()
        self.cwd = f"/home/dev/project-{self.rng.randrange(10_000)}"
        all_tools = shared_tools if shared_tools is not None else tools(random.Random(CC_VERSION))
        self.main = _Thread(self._system(main_prompt(self.rng, self.cwd), subagent=False), all_tools)
        self.main.messages = self._opening(min_kb * 1024)
        self.sub: _Thread | None = None
        self.agent_launched = False
        self.current: _Thread | None = None
        self.replied = True
        self.ids = 0

    # --- building blocks --------------------------------------------------------------------
    def _system(self, prompt: str, *, subagent: bool) -> list[dict[str, Any]]:
        billing = f"x-anthropic-billing-header: cc_version={CC_VERSION}.{self.token}; cc_entrypoint=cli;"
        if subagent:
            billing += " cc_is_subagent=true;"
        identity = SUBAGENT_IDENTITY if subagent else IDENTITY
        return [
            {"type": "text", "text": billing},
            {"type": "text", "text": identity},
            {"type": "text", "text": prompt, "cache_control": {"type": "ephemeral"}},
        ]

    def _opening(self, min_bytes: int) -> list[dict[str, Any]]:
        """The first user message (CLAUDE.md reminder padded so the first body is `min_bytes`) and a
        `role: "system"` note, as Claude Code 2.1 sends them."""
        task = self._prompt()
        base = len(orjson.dumps({"system": self.main.system, "tools": self.main.tools})) + len(task["text"]) + 900
        words = max(50, (min_bytes - base) // 6)
        reminder = (
            "<system-reminder>\nAs you answer the user's questions, you can use the following context:\n"
            f"# claudeMd\nContents of {self.cwd}/CLAUDE.md (project instructions, checked into the codebase):\n\n"
            + prose(self.rng, words)
            + "\n\nIMPORTANT: this context may or may not be relevant to your tasks.\n</system-reminder>\n"
        )
        return [
            {"role": "user", "content": [{"type": "text", "text": reminder}, task]},
            {"role": "system", "content": f"<system-reminder>\n{OPENED_FILE}\n</system-reminder>"},
        ]

    def _prompt(self, tool: str | None = None) -> dict[str, Any]:
        text = f"{prose(self.rng, self.rng.randrange(15, 60))} (task {self.token})"
        if tool is None:
            tool = self.rng.choice(TOOL_CALLS)
        if tool:
            text += f" [[use_tool:{tool} {orjson.dumps(self._tool_input(tool)).decode()}]]"
        return {"type": "text", "text": text}

    def _tool_input(self, tool: str) -> dict[str, Any]:
        path = f"{self.cwd}/src/{self.rng.choice(WORDS)}_{self.rng.randrange(100)}.py"
        if tool == "Read":
            return {"file_path": path}
        if tool == "Grep":
            return {"pattern": self.rng.choice(WORDS), "path": self.cwd, "output_mode": "content", "-n": True}
        if tool == "Bash":
            return {"command": f"pytest -q {path}", "description": "Run the tests"}
        if tool == "Edit":
            return {"file_path": path, "old_string": prose(self.rng, 8), "new_string": prose(self.rng, 9)}
        if tool == "Agent":
            return {"description": "Survey the module", "prompt": self._agent_prompt(), "subagent_type": "Explore"}
        return {"pattern": "**/*.py", "path": self.cwd}

    def _agent_prompt(self) -> str:
        return f"Find where {self.rng.choice(WORDS)} is handled in {self.cwd} and report ({self.token}). " + prose(
            self.rng, 40
        )

    def _tool_result(self, block: dict[str, Any]) -> dict[str, Any]:
        name = block.get("name")
        if name == "Agent":
            content: str = "Async agent launched successfully. agentId: " + block["id"][-8:]
        elif name in ("Read", "Grep"):
            content = code(self.rng, self.rng.randrange(15, 45))
        else:
            content = prose(self.rng, self.rng.randrange(40, 200))
        return {"type": "tool_result", "tool_use_id": block["id"], "content": content}

    def _tool_id(self) -> str:
        self.ids += 1
        return f"toolu_01{self.token}{self.ids:04d}{self.rng.getrandbits(40):010x}"

    # --- the conversation -------------------------------------------------------------------
    def synthetic_reply(self) -> list[dict[str, Any]]:
        """What a model might answer to the last request: the tool its prompt asked for, else text."""
        thread = self.current or self.main
        last = thread.messages[-1]["content"] if thread.messages else ""
        text = {"type": "text", "text": prose(self.rng, self.rng.randrange(20, 90))}
        blocks = last if isinstance(last, list) else []
        if any(b.get("type") == "tool_result" for b in blocks):
            return [text]
        marker = next((b["text"] for b in blocks if b.get("type") == "text" and "[[use_tool:" in b["text"]), "")
        if not marker:
            return [text]
        name, _, raw = marker.rsplit("[[use_tool:", 1)[1].removesuffix("]]").partition(" ")
        return [text, {"type": "tool_use", "id": self._tool_id(), "name": name, "input": orjson.loads(raw)}]

    def record_reply(self, content: list[dict[str, Any]]) -> None:
        """The assistant content of the response to the last request (JSON `content`, or rebuilt from SSE)."""
        thread = self.current
        if thread is None or self.replied:
            return
        self.replied = True
        thread.messages.append({"role": "assistant", "content": content})
        uses = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_use"]
        if uses:
            thread.messages.append({"role": "user", "content": [self._tool_result(b) for b in uses]})
            for b in uses:
                if b.get("name") == "Agent" and thread is self.main:
                    prompt = b.get("input", {}).get("prompt") or self._agent_prompt()
                    sub_system = self._system(prose(self.rng, 900), subagent=True)
                    sub_tools = [t for t in self.main.tools if t["name"] in ("Bash", "Glob", "Grep", "Read")]
                    self.sub = _Thread(sub_system, sub_tools, [{"role": "user", "content": prompt}], limit=2)
        elif thread is self.sub:
            thread.limit = thread.requests  # the sub-agent answered: it is done
        else:
            ask = "Agent" if not self.agent_launched and len(thread.messages) > 4 else None
            self.agent_launched = self.agent_launched or ask == "Agent"
            thread.messages.append({"role": "user", "content": [self._prompt(ask)]})

    def next_request(self) -> Request | None:
        """The next request of this session, or None once its body would pass `max_kb`."""
        if not self.replied:
            self.record_reply(self.synthetic_reply())
        thread = self.sub if self.sub is not None and self.sub.requests < self.sub.limit else self.main
        stream = self.rng.random() < self.stream_share
        body = self._body(thread, stream)
        if len(body) > self.max_bytes:
            return None
        thread.requests += 1
        self.current, self.replied = thread, False
        headers = self.headers
        if self.main.requests > 3:
            headers = {**headers, "anthropic-beta": BETAS_LATER}  # the beta list changes within a session
        return Request(body, headers, stream, "main" if thread is self.main else "subagent")

    def _body(self, thread: _Thread, stream: bool) -> bytes:
        return orjson.dumps(
            {
                "model": MODEL,
                "messages": _render(thread.messages),
                "system": thread.system,
                "tools": thread.tools,
                "metadata": {"user_id": self.user_id},
                "max_tokens": 32000,
                "thinking": {"type": "adaptive"},
                "stream": stream,
            }
        )


def _render(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as sent: `cache_control` on the last block of the last message only, and a user text turn
    sent as a block list the first time comes back as a plain string afterwards."""
    out: list[dict[str, Any]] = []
    last = len(messages) - 1
    for i, msg in enumerate(messages):
        content = msg["content"]
        if i == last:
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
            blocks[-1] = {**blocks[-1], "cache_control": {"type": "ephemeral"}}
            content = blocks
        elif (i > 0 and msg["role"] == "user" and isinstance(content, list) and len(content) == 1) and content[0].get(
            "type"
        ) == "text":
            content = content[0]["text"]
        out.append({"role": msg["role"], "content": content})
    return out


def session_requests(seed: int, **kwargs: Any) -> list[Request]:
    """Every request of one session, with synthetic replies."""
    session = Session(seed, **kwargs)
    out = []
    while (req := session.next_request()) is not None:
        out.append(req)
    return out


def corpus(sessions: int = 48, *, seed: int = 1, stream_share: float = 0.8, **kwargs: Any) -> list[Request]:
    """Requests of `sessions` sessions, interleaved turn by turn (turn 1 of each, then turn 2, ...), so a
    request's parent was sent long before it even at high concurrency. `TOKEN` is left in place."""
    shared = tools(random.Random(CC_VERSION))
    per_session = [
        session_requests(seed * 100_003 + i, token=TOKEN, stream_share=stream_share, shared_tools=shared, **kwargs)
        for i in range(sessions)
    ]
    out: list[Request] = []
    for turn in range(max(len(s) for s in per_session)):
        out.extend(s[turn] for s in per_session if turn < len(s))
    return out


def one_body(*, stream: bool, kb: int = 50, seed: int = 7) -> bytes:
    """One Claude Code body of about `kb` KiB (a mid-session turn), token filled in: micro-benchmarks."""
    session = Session(seed, stream_share=1.0 if stream else 0.0, min_kb=40, max_kb=60)
    body = b""
    while (req := session.next_request()) is not None and len(req.body) <= kb * 1024:
        body = req.body
    return body


def write_corpus(path: Path, requests: list[Request]) -> None:
    """One request a line, `stream<TAB>session id<TAB>body` (bodies are compact JSON: no raw newline),
    read by bench/harness/corpus.lua and the Rust load generator."""
    with path.open("wb") as fh:
        for req in requests:
            sid = req.headers["x-claude-code-session-id"]
            fh.write(b"%d\t%s\t%s\n" % (int(req.stream), sid.encode(), req.body))


def corpus_headers() -> dict[str, str]:
    """Headers every corpus line shares (the session id travels per line)."""
    return {k: v for k, v in Session(0).headers.items() if k != "x-claude-code-session-id"}
