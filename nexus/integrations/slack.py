"""Slack notifications: a message per conversation turn (and per failed request), batched and rate-limited.

What notifies (as the reference system did, docs/slack.md): a finished `/v1/messages` request of a
chosen type (`SLACK_REQUEST_TYPES`, `main` by default) whose last user message carries text a person
typed that differs from the last such text seen for its project, i.e. the first request of each turn
(tool-result round trips of the same turn stay quiet); and, with `SLACK_NOTIFY_ERRORS`, every request
that failed. Projects are chosen by `SLACK_PROJECTS` / `SLACK_EXCLUDED_PROJECTS`.

One notification is one attachment: the prompt and reply excerpts and one line per tool call, then
project, model, account and tokens, with a link to the request's dashboard page. Every text in it
passes `nexus.security.masking.mask_secrets`; no header is ever read. Up to `SLACK_BATCH_MAX`
notifications share one webhook post, and posts are spaced by the rate limit
(`SLACK_MAX_POSTS_PER_MINUTE`): under a burst the queue fills and further requests are dropped and
counted, and the next post says how many were left out. A failed post is retried once (after the
receiver's `Retry-After` when it gives one), then given up and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
import xxhash

from nexus.integrations.events import FinishedRequest, Reading, ToolCall
from nexus.integrations.http import Posted, post_json
from nexus.integrations.queue import BatchQueue, Counts
from nexus.security.masking import mask_secrets
from nexus.settings import Settings

log = logging.getLogger("nexus.integrations.slack")

#: Slack shows up to this many characters of an attachment's text comfortably; longer is cut.
MAX_TEXT = 3000
REPLY_LINES = 20
#: Projects whose last prompt is remembered for turn detection (oldest forgotten first).
REMEMBERED_PROJECTS = 1000
ATTEMPTS = 2
#: Characters past an excerpt's end that are masked with it (longer than any key shape but a PEM block).
MASK_MARGIN = 4096


@dataclass(frozen=True, slots=True)
class SlackConfig:
    webhook_url: str
    channel: str | None
    username: str
    icon_emoji: str
    projects: frozenset[str]
    excluded: frozenset[str]
    request_types: frozenset[str]
    notify_errors: bool
    min_interval_s: float
    batch_max: int
    batch_interval_s: float
    queue_size: int
    excerpt_chars: int
    dashboard_url: str

    @classmethod
    def of(cls, s: Settings) -> SlackConfig:
        assert s.slack_webhook_url is not None
        return cls(
            webhook_url=s.slack_webhook_url,
            channel=s.slack_channel,
            username=s.slack_username,
            icon_emoji=s.slack_icon_emoji,
            projects=_items(s.slack_projects),
            excluded=_items(s.slack_excluded_projects),
            request_types=_items(s.slack_request_types),
            notify_errors=s.slack_notify_errors,
            min_interval_s=60.0 / s.slack_max_posts_per_minute,
            batch_max=s.slack_batch_max,
            batch_interval_s=s.slack_batch_interval_ms / 1000,
            queue_size=s.slack_queue_size,
            excerpt_chars=s.slack_excerpt_chars,
            dashboard_url=s.dashboard_link.rstrip("/"),
        )

    def project_notifies(self, project: str) -> bool:
        if project in self.excluded:
            return False
        return not self.projects or project in self.projects


class SlackNotifier:
    """One per proxy worker."""

    def __init__(self, config: SlackConfig) -> None:
        self.config = config
        self.counts = Counts("slack")
        self.queue: BatchQueue[FinishedRequest] = BatchQueue(
            self.counts, config.queue_size, config.batch_max, config.batch_interval_s, self._deliver, size=_body_bytes
        )
        self._last_prompt: OrderedDict[str, int] = OrderedDict()
        self._next_post_at = 0.0
        self._left_out = 0  # dropped since the last post, said in the next one
        self._dropped_seen = 0
        self.posts = 0

    # --- request path -------------------------------------------------------------------------
    def offer(self, event: FinishedRequest) -> None:
        """Queue `event` if it may notify (cheap checks only; the rest is decided off the loop)."""
        c = self.config
        if not c.project_notifies(event.project_id):
            return
        if event.failed:
            if not c.notify_errors or event.outcome == "client_disconnected":
                return
        elif event.path != "/v1/messages" or event.request_type not in c.request_types:
            return
        self.queue.offer(event)

    # --- background ---------------------------------------------------------------------------
    async def _deliver(self, batch: list[FinishedRequest]) -> None:
        attachments = await asyncio.to_thread(self._notifications, batch)
        if not attachments:
            return
        loop = asyncio.get_running_loop()
        wait = self._next_post_at - loop.time()
        if wait > 0:  # the rate limit: meanwhile the queue fills, and drops what does not fit
            await asyncio.sleep(wait)
        dropped = self.counts.totals["dropped"]
        self._left_out += dropped - self._dropped_seen
        self._dropped_seen = dropped
        payload = self.payload(attachments, self._left_out)
        posted = await self._post(payload)
        self._next_post_at = loop.time() + self.config.min_interval_s
        if posted.ok:
            self.posts += 1
            self._left_out = 0
            self.counts.add("sent", len(attachments))
        else:
            # the reason only: the URL is the credential, and the body may quote the payload
            log.warning("slack: webhook post failed (%s); %d notifications given up", posted.error, len(attachments))
            self.counts.add("failed", len(attachments))

    async def _post(self, payload: bytes) -> Posted:
        posted = Posted(None, error="not sent")
        for attempt in range(ATTEMPTS):
            posted = await asyncio.to_thread(post_json, self.config.webhook_url, payload)
            if posted.ok or (posted.status is not None and posted.status < 500 and posted.status != 429):
                return posted  # delivered, or refused for good (404: webhook revoked, 400: payload)
            if attempt + 1 < ATTEMPTS:
                await asyncio.sleep(posted.retry_after_s if posted.retry_after_s is not None else 1.0)
        return posted

    def _notifications(self, batch: list[FinishedRequest]) -> list[dict[str, Any]]:
        """Attachments for the requests of `batch` that notify (a worker thread: parsing happens here)."""
        out = []
        for event in batch:
            try:
                reading = Reading.of(event)
            except Exception:
                log.exception("slack: request %s could not be read", event.request_id)
                self.counts.add("failed")
                continue
            if not event.failed and not self._new_turn(event.project_id, reading.prompt):
                self.counts.add("skipped")
                continue
            out.append(self.attachment(event, reading))
        return out

    def _new_turn(self, project: str, prompt: str | None) -> bool:
        """Whether `prompt` starts a new turn in `project` (not None, and not the last one seen there)."""
        if not prompt:
            return False
        digest = xxhash.xxh3_64_intdigest(prompt.encode("utf-8", "replace"))
        if self._last_prompt.get(project) == digest:
            return False
        self._last_prompt[project] = digest
        self._last_prompt.move_to_end(project)
        while len(self._last_prompt) > REMEMBERED_PROJECTS:
            self._last_prompt.popitem(last=False)
        return True

    # --- the message ----------------------------------------------------------------------------
    def attachment(self, event: FinishedRequest, reading: Reading) -> dict[str, Any]:
        c = self.config
        lines: list[str] = []
        if event.failed:
            status = event.status if event.status is not None else "none"
            lines.append(f"Error: {mask_secrets(event.error or event.outcome)} (status {status})")
        if reading.prompt:
            lines.append(":bust_in_silhouette: User: " + masked_excerpt(reading.prompt, c.excerpt_chars))
        if reading.reply:
            lines.append(":robot_face: Claude: " + masked_excerpt(reading.reply, c.excerpt_chars, REPLY_LINES))
        lines.extend(":wrench: " + tool_line(call) for call in reading.tool_calls[:20])
        if len(reading.tool_calls) > 20:
            lines.append(f":wrench: … and {len(reading.tool_calls) - 20} more tool calls")
        text = "\n".join(lines) or "(no text)"
        if len(text) > MAX_TEXT:
            text = text[:MAX_TEXT] + "... (truncated)"
        footer = [mask_secrets(event.project_id), mask_secrets(reading.model or event.model or "unknown model")]
        if event.account_id:
            footer.append(mask_secrets(event.account_id))
        footer.append(f"Tokens: {_n(reading.input_tokens)} in / {_n(reading.output_tokens)} out")
        if reading.cache_read_tokens:
            footer.append(f"cache read {reading.cache_read_tokens:,}")
        if event.duration_ms is not None:
            footer.append(f"{event.duration_ms / 1000:.1f} s")
        return {
            "color": "danger" if event.failed else "good",
            "title": f"Request {event.request_id}",
            "title_link": f"{c.dashboard_url}/requests/{quote(event.request_id, safe='')}",
            "text": text,
            "footer": " | ".join(footer),
            "ts": event.timestamp_ms // 1000,
            "mrkdwn_in": ["text"],
        }

    def payload(self, attachments: list[dict[str, Any]], left_out: int) -> bytes:
        c = self.config
        n = len(attachments)
        text = f"{n} new request{'s' if n != 1 else ''}" if n > 1 else ""
        if left_out:
            text += ("; " if text else "") + f"{left_out} more left out (rate limit)"
        body: dict[str, Any] = {"username": c.username, "icon_emoji": c.icon_emoji, "attachments": attachments}
        if text:
            body["text"] = text
        if c.channel:
            body["channel"] = c.channel
        return orjson.dumps(body)

    def snapshot(self) -> dict[str, Any]:
        return {"queued": len(self.queue), "posts": self.posts, **self.counts.totals}


def masked_excerpt(text: str, chars: int, lines: int | None = None) -> str:
    """The start of `text`, secrets masked. Masked before the final cut, with a margin, so a secret
    that straddles the cut is recognised whole (and a private key block cut short is masked to the end)."""
    return excerpt(mask_secrets(text[: chars + MASK_MARGIN]), chars, lines)


def excerpt(text: str, chars: int, lines: int | None = None) -> str:
    text = text.strip()
    if lines is not None:
        split = text.split("\n")
        if len(split) > lines:
            text = "\n".join(split[:lines]) + "\n…"
    return text if len(text) <= chars else text[:chars].rstrip() + "…"


def tool_line(call: ToolCall) -> str:
    """`Name: summary` of one tool call (file names, the start of a command, patterns...), masked."""
    inp = call.input if isinstance(call.input, dict) else {}

    def s(key: str) -> str | None:
        value = inp.get(key)
        return value if isinstance(value, str) and value else None

    name = mask_secrets(call.name[:200])
    summary: str | None = None
    cut = 100
    if name in ("Read", "Write", "Edit", "MultiEdit", "NotebookEdit"):
        path = s("file_path") or s("notebook_path") or s("path")
        summary = path.rsplit("/", 1)[-1] if path else None
    elif name == "Bash":
        summary, cut = s("command"), 50
    elif name in ("Grep", "Glob"):
        summary = s("pattern")
    elif name == "LS":
        summary = s("path")
    elif name == "TodoWrite" and isinstance(inp.get("todos"), list):
        states: dict[str, int] = {}
        for todo in inp["todos"]:
            state = todo.get("status") if isinstance(todo, dict) else None
            key = state if isinstance(state, str) else "other"
            states[key] = states.get(key, 0) + 1
        summary = ", ".join(f"{v} {k}" for k, v in sorted(states.items()))
    elif name == "WebSearch":
        summary = s("query")
    elif name == "WebFetch":
        try:
            summary = urlsplit(s("url") or "").hostname
        except ValueError:  # not a URL (an unclosed IPv6 bracket)
            summary = None
    else:
        summary = s("prompt") or s("description")
    if not summary:
        return name
    summary = mask_secrets(summary[:MASK_MARGIN]).replace("\n", " ")  # masked whole, then cut
    return f"{name}: {summary[:cut]}{'…' if len(summary) > cut else ''}"


def _n(value: int | None) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _items(value: str) -> frozenset[str]:
    return frozenset(item.strip() for item in value.split(",") if item.strip())


def _body_bytes(event: FinishedRequest) -> int:
    return event.body_bytes
