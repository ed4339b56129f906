"""Spark: recommendations found in conversations, and feedback on them sent to the Spark API.

Spark is a recommendation service that Claude Code reaches as the MCP tool
`mcp__spark__get_recommendation` (docs/spark.md). A recommendation is a `tool_use` of that tool (its
input has the `query` and `context`) answered by a `tool_result` whose text is JSON with a
`session_id` and the recommendation as markdown in `response` (and, once given, `feedback`).
`find_recommendations` pairs them up in a stored request's messages for the dashboard, which shows
them on the request page and posts feedback through `SparkClient` to `{SPARK_API_URL}/send_feedback`
with `Authorization: Bearer SPARK_API_KEY`, in the reference system's schema.

Everything here is untrusted model and tool output: it is parsed, bounded, and only ever shown as text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from nexus.integrations.http import Posted, post_json

TOOL_NAME = "mcp__spark__get_recommendation"
#: A session id as Spark issues them; anything else is not looked up or sent.
SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-:.]{0,199}")
MAX_COMMENT = 5000
MAX_SECTIONS = 50
MAX_BATCH = 100
_HEADING = re.compile(r"^(#{1,4})\s+(.+?)\s*#*\s*$", re.MULTILINE)
_LINK = re.compile(r"\[([^\]\n]{1,300})\]\((https?://[^\s)]{1,2000})\)")


class FeedbackError(ValueError):
    """Feedback that cannot be sent as it is (shown to the person who filled in the form)."""


@dataclass(slots=True)
class Section:
    id: str
    title: str
    text: str


@dataclass(slots=True)
class Recommendation:
    session_id: str
    tool_use_id: str | None
    query: str | None
    context: str | None
    response: str
    sections: list[Section] = field(default_factory=list)
    sources: list[tuple[str, str]] = field(default_factory=list)  # (title, url)
    feedback: Any = None


def is_spark_tool(name: object) -> bool:
    return isinstance(name, str) and (name == TOOL_NAME or name.endswith("spark__get_recommendation"))


def find_recommendations(request_body: Any, response_body: Any = None) -> list[Recommendation]:
    """Every Spark recommendation in a request's messages (a tool_use of the Spark tool and its result)."""
    messages = request_body.get("messages") if isinstance(request_body, dict) else None
    if not isinstance(messages, list):
        return []
    calls: dict[str, dict[str, Any]] = {}
    found: list[Recommendation] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for block in content:
            if not isinstance(block, dict):
                continue
            if (
                block.get("type") == "tool_use"
                and is_spark_tool(block.get("name"))
                and isinstance(block.get("id"), str)
            ):
                inp = block.get("input")
                calls[block["id"]] = inp if isinstance(inp, dict) else {}
            elif block.get("type") == "tool_result" and block.get("tool_use_id") in calls:
                rec = _recommendation(block["tool_use_id"], calls[block["tool_use_id"]], block.get("content"))
                if rec is not None:
                    found.append(rec)
    return found


def _recommendation(tool_use_id: str, call: dict[str, Any], content: Any) -> Recommendation | None:
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "".join(b.get("text", "") for b in content if isinstance(b, dict) and isinstance(b.get("text"), str))
    else:
        return None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    session_id, response = data.get("session_id"), data.get("response")
    if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id) or not isinstance(response, str):
        return None
    query, context = call.get("query"), call.get("context")
    return Recommendation(
        session_id=session_id,
        tool_use_id=tool_use_id,
        query=query if isinstance(query, str) else None,
        context=context if isinstance(context, str) else None,
        response=response,
        sections=sections(response),
        sources=sources(response),
        feedback=data.get("feedback"),
    )


def sections(markdown: str) -> list[Section]:
    """The recommendation's sections, one per heading; `id` is the heading's slug (what Spark's
    `section_feedbacks` name)."""
    heads = list(_HEADING.finditer(markdown))
    out: list[Section] = []
    seen: set[str] = set()
    for i, head in enumerate(heads[:MAX_SECTIONS]):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(markdown)
        title = head.group(2).strip()
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:80] or f"section-{i + 1}"
        while slug in seen:
            slug += "-x"
        seen.add(slug)
        out.append(Section(slug, title, markdown[head.end() : end].strip()))
    return out


def sources(markdown: str) -> list[tuple[str, str]]:
    """The markdown links of the recommendation (its sources), each once, in order."""
    out: list[tuple[str, str]] = []
    for title, url in _LINK.findall(markdown):
        if urlsplit(url).hostname and (title, url) not in out:
            out.append((title, url))
    return out[:100]


def feedback_payload(
    session_id: str,
    rating: object,
    comments: object,
    section_feedbacks: dict[str, str] | None = None,
    source_feedbacks: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The reference's `send_feedback` body, validated: `{session_id, feedback: {recommendation_feedback:
    {overall_feedback: {rating 1-5, comments}, section_feedbacks?}, source_feedbacks?}}`."""
    if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id):
        raise FeedbackError("unknown Spark session id")
    try:
        score = int(str(rating))
    except ValueError:
        raise FeedbackError("rating must be a whole number from 1 to 5") from None
    if not 1 <= score <= 5:
        raise FeedbackError("rating must be a whole number from 1 to 5")
    text = comments if isinstance(comments, str) else ""
    if len(text) > MAX_COMMENT:
        raise FeedbackError(f"comments are limited to {MAX_COMMENT} characters")
    recommendation: dict[str, Any] = {"overall_feedback": {"rating": score, "comments": text}}
    sections_given = [{"section_id": k, "feedback": v} for k, v in (section_feedbacks or {}).items() if v.strip()][
        :MAX_SECTIONS
    ]
    if sections_given:
        recommendation["section_feedbacks"] = sections_given
    feedback: dict[str, Any] = {"recommendation_feedback": recommendation}
    sources_given = [{"source_url": k, "feedback": v} for k, v in (source_feedbacks or {}).items() if v.strip()]
    if sources_given:
        feedback["source_feedbacks"] = sources_given[:100]
    return {"session_id": session_id, "feedback": feedback}


@dataclass(frozen=True, slots=True)
class SparkAnswer:
    ok: bool
    status: int | None
    data: Any = None
    error: str | None = None


class SparkClient:
    """The three calls the reference relayed: send feedback, read a session's feedback, read several."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"authorization": f"Bearer {api_key}", "accept": "application/json"}
        self.timeout_s = timeout_s

    def send_feedback(self, payload: dict[str, Any]) -> SparkAnswer:
        return self._call("POST", "/send_feedback", payload)

    def session_feedback(self, session_id: str) -> SparkAnswer:
        if not SESSION_ID.fullmatch(session_id):
            raise FeedbackError("unknown Spark session id")
        return self._call("GET", f"/sessions/{quote(session_id, safe='')}/feedback")

    def batch_feedback(self, session_ids: list[str]) -> SparkAnswer:
        if not session_ids or len(session_ids) > MAX_BATCH or not all(SESSION_ID.fullmatch(s) for s in session_ids):
            raise FeedbackError(f"between 1 and {MAX_BATCH} valid session ids")
        return self._call("POST", "/feedback/batch", {"session_ids": session_ids})

    def _call(self, method: str, path: str, payload: Any = None) -> SparkAnswer:
        body = orjson.dumps(payload) if payload is not None else b""
        posted: Posted = post_json(self.base_url + path, body, self._headers, self.timeout_s, method=method)
        data: Any = None
        if posted.body:
            try:
                data = orjson.loads(posted.body)
            except orjson.JSONDecodeError:
                data = None
        if posted.ok:
            return SparkAnswer(True, posted.status, data)
        detail = data.get("detail") if isinstance(data, dict) else None
        error = posted.error or "failed"
        if isinstance(detail, str):
            error += f": {detail[:200]}"
        return SparkAnswer(False, posted.status, data, f"Spark API {error}")
