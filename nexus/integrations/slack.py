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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
import xxhash

from nexus.integrations.events import FinishedRequest, Reading, ToolCall
from nexus.integrations.http import Posted, post_json
from nexus.integrations.queue import BatchQueue, Counts, in_thread
from nexus.pricing.cost import PriceBook
from nexus.pricing.table import load as load_prices
from nexus.security.masking import mask_secrets
from nexus.settings import Settings

log = logging.getLogger("nexus.integrations.slack")

#: Slack shows up to this many characters of an attachment's text comfortably; longer is cut.
MAX_TEXT = 3000
REPLY_LINES = 20
#: Longest model name shown (model ids are short; the client may send anything there).
MAX_MODEL = 200
#: Projects whose last prompt is remembered for turn detection (oldest forgotten first).
REMEMBERED_PROJECTS = 1000
ATTEMPTS = 2
#: Characters past an excerpt's end that are masked with it (longer than any key shape but a PEM block).
MASK_MARGIN = 4096


@dataclass(frozen=True, slots=True)
class SlackConfig:
    webhook_url: str | None
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
    #: The price table in effect (shipped + PRICING_FILE): a message shows what its request cost.
    prices: PriceBook

    @classmethod
    def of(cls, s: Settings) -> SlackConfig:
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
            batch_interval_s=s.slack_batch_interval_s,
            queue_size=s.slack_queue_size,
            excerpt_chars=s.slack_excerpt_chars,
            dashboard_url=s.dashboard_link.rstrip("/"),
            prices=PriceBook(load_prices(s.pricing_file)),
        )

    def project_notifies(self, project: str) -> bool:
        if project in self.excluded:
            return False
        return not self.projects or project in self.projects


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a post goes and how it is signed. `shared` is the global webhook (SLACK_WEBHOOK_URL): the
    one failures and the "left out" count go to."""

    url: str
    channel: str | None
    username: str
    icon_emoji: str
    shared: bool


#: A project's `slack` block, from its credential file (`CREDENTIALS_DIR/<project>.credentials.json`).
ProjectSlack = Callable[[str], Any]


class SlackNotifier:
    """One per proxy worker."""

    def __init__(self, config: SlackConfig, project_slack: ProjectSlack | None = None) -> None:
        self.config = config
        self.project_slack = project_slack
        self.counts = Counts("slack")
        self.queue: BatchQueue[tuple[FinishedRequest, tuple[Destination, ...]]] = BatchQueue(
            self.counts, config.queue_size, config.batch_max, config.batch_interval_s, self._deliver, size=_item_bytes
        )
        self.shared = (
            Destination(config.webhook_url, config.channel, config.username, config.icon_emoji, True)
            if config.webhook_url
            else None
        )
        self._last_prompt: OrderedDict[str, int] = OrderedDict()
        self._next_post_at: dict[str, float] = {}
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
        elif event.route != "/v1/messages" or event.request_type not in c.request_types:
            return
        destinations = self.destinations(event.project_id, event.failed)
        if destinations:
            self.queue.offer((event, destinations))

    def destinations(self, project: str, failed: bool) -> tuple[Destination, ...]:
        """Where a project's notifications go: the global webhook (with the project's channel, username
        or icon when its `slack` block names them) and the project's own `webhook_url` (turns only, as
        in the reference system); none when the block says `"enabled": false`."""
        block = self._block(project)
        if block is None:
            return (self.shared,) if self.shared is not None else ()
        if block.get("enabled") is False:
            return ()
        out: list[Destination] = []
        own_url = _http_url(block.get("webhook_url"))
        style = (
            _text(block.get("channel")),
            _text(block.get("username")) or self.config.username,
            _text(block.get("icon_emoji")) or self.config.icon_emoji,
        )
        if self.shared is not None:
            if own_url is None and any(_text(block.get(k)) for k in ("channel", "username", "icon_emoji")):
                out.append(Destination(self.shared.url, style[0] or self.shared.channel, style[1], style[2], True))
            else:
                out.append(self.shared)
        if own_url is not None and not failed:
            out.append(Destination(own_url, *style, False))
        return tuple(out)

    def _block(self, project: str) -> dict[str, Any] | None:
        if self.project_slack is None:
            return None
        try:
            block = self.project_slack(project)
        except Exception:  # an invalid credential file: the request path reports it, not this
            return None
        return block if isinstance(block, dict) else None

    # --- background ---------------------------------------------------------------------------
    async def _deliver(self, batch: list[tuple[FinishedRequest, tuple[Destination, ...]]]) -> None:
        notes = await in_thread(self._notifications, batch)
        if not notes:
            return
        groups: dict[Destination, list[int]] = {}
        for i, (_, destinations) in enumerate(notes):
            for destination in destinations:
                groups.setdefault(destination, []).append(i)
        delivered = [True] * len(notes)
        for destination, indexes in groups.items():
            if not await self._send(destination, [notes[i][0] for i in indexes]):
                for i in indexes:
                    delivered[i] = False
        sent = sum(delivered)
        self.counts.add("sent", sent)
        self.counts.add("failed", len(notes) - sent)

    async def _send(self, destination: Destination, attachments: list[dict[str, Any]]) -> bool:
        """One post, after the rate limit of its webhook allows it."""
        loop = asyncio.get_running_loop()
        wait = self._next_post_at.get(destination.url, 0.0) - loop.time()
        if wait > 0:  # the rate limit: meanwhile the queue fills, and drops what does not fit
            await asyncio.sleep(wait)
        left_out = 0
        if destination.shared:
            dropped = self.counts.totals["dropped"]
            self._left_out += dropped - self._dropped_seen
            self._dropped_seen = dropped
            left_out = self._left_out
        posted = await self._post(destination.url, self.payload(destination, attachments, left_out))
        now = loop.time()
        self._next_post_at[destination.url] = now + self.config.min_interval_s
        if len(self._next_post_at) > REMEMBERED_PROJECTS:  # webhooks that have waited long enough
            self._next_post_at = {u: t for u, t in self._next_post_at.items() if t > now}
        if not posted.ok:
            # the reason only: the URL is the credential, and the body may quote the payload
            kind = "the global" if destination.shared else "a project's"
            log.warning("slack: post to %s webhook failed (%s); %d notifications", kind, posted.error, len(attachments))
            return False
        self.posts += 1
        if destination.shared:
            self._left_out = 0
        return True

    async def _post(self, url: str, payload: bytes) -> Posted:
        posted = Posted(None, error="not sent")
        for attempt in range(ATTEMPTS):
            posted = await in_thread(post_json, url, payload)
            if posted.ok or (posted.status is not None and posted.status < 500 and posted.status != 429):
                return posted  # delivered, or refused for good (404: webhook revoked, 400: payload)
            if attempt + 1 < ATTEMPTS:
                await asyncio.sleep(posted.retry_after_s if posted.retry_after_s is not None else 1.0)
        return posted

    def _notifications(
        self, batch: list[tuple[FinishedRequest, tuple[Destination, ...]]]
    ) -> list[tuple[dict[str, Any], tuple[Destination, ...]]]:
        """Attachments for the requests of `batch` that notify (a worker thread: parsing happens here)."""
        out = []
        for event, destinations in batch:
            try:
                reading = Reading.of(event)
            except Exception:
                log.exception("slack: request %s could not be read", event.request_id)
                self.counts.add("failed")
                continue
            if not event.failed and not self._new_turn(event.project_id, reading.prompt):
                self.counts.add("skipped")
                continue
            out.append((self.attachment(event, reading), destinations))
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
        text = slack_escape(text)  # after the cut: an entity is never cut in half
        model = reading.model or event.model or "unknown model"  # client text: masked, and cut like an excerpt
        footer = [mask_secrets(event.project_id), excerpt(mask_secrets(model[: MAX_MODEL + MASK_MARGIN]), MAX_MODEL)]
        if event.account_id:
            footer.append(mask_secrets(event.account_id))
        footer.append(f"Tokens: {_n(reading.input_tokens)} in / {_n(reading.output_tokens)} out")
        if reading.cache_read_tokens:
            footer.append(f"cache read {reading.cache_read_tokens:,}")
        cost = c.prices.cost(
            model,
            datetime.fromtimestamp(event.timestamp_ms / 1000, UTC),
            reading.input_tokens,
            reading.output_tokens,
            reading.cache_read_tokens,
            reading.cache_creation_tokens,
            reading.cache_write_5m,
            reading.cache_write_1h,
        )
        footer.append(f"Cost: {_usd(cost)}")
        if event.duration_ms is not None:
            footer.append(f"{event.duration_ms / 1000:.1f} s")
        return {
            "color": "danger" if event.failed else "good",
            "title": f"Request {event.request_id}",
            "title_link": f"{c.dashboard_url}/requests/{quote(event.request_id, safe='')}",
            "text": text,
            "footer": slack_escape(" | ".join(footer)),
            "ts": event.timestamp_ms // 1000,
            "mrkdwn_in": ["text"],
        }

    def payload(self, destination: Destination, attachments: list[dict[str, Any]], left_out: int) -> bytes:
        n = len(attachments)
        text = f"{n} new request{'s' if n != 1 else ''}" if n > 1 else ""
        if left_out:
            text += ("; " if text else "") + f"{left_out} more left out (rate limit)"
        body: dict[str, Any] = {
            "username": destination.username,
            "icon_emoji": destination.icon_emoji,
            "attachments": attachments,
        }
        if text:
            body["text"] = text
        if destination.channel:
            body["channel"] = destination.channel
        return orjson.dumps(body)

    def snapshot(self) -> dict[str, Any]:
        return {"queued": len(self.queue), "posts": self.posts, **self.counts.totals}


def slack_escape(text: str) -> str:
    """Slack's own escaping: `<` starts a mention (`<!channel>` would notify everyone in the channel) or
    a link (`<https://evil|innocent text>`), so untrusted text has `&`, `<` and `>` as entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


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


def _usd(cost: Decimal | None) -> str:
    """The request's cost as the dashboard writes it; "unknown" (never $0) for a model without a price."""
    if cost is None:
        return "unknown"
    if cost == 0:
        return "$0"
    return f"${cost:,.4f}" if cost < 1 else f"${cost:,.2f}"


def _n(value: int | None) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _items(value: str) -> frozenset[str]:
    return frozenset(item.strip() for item in value.split(",") if item.strip())


def _item_bytes(item: tuple[FinishedRequest, tuple[Destination, ...]]) -> int:
    return item[0].body_bytes


def _text(value: object) -> str | None:
    return value[:200] if isinstance(value, str) and value.strip() else None


def _http_url(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    return value if parts.scheme in ("http", "https") and parts.netloc else None
