"""Joining a post-compaction request to the compaction that produced its summary.

After `/compact` (or auto-compact) Claude Code starts a new history whose first user message says
"This session is being continued from a previous conversation ..." and quotes the summary the
compaction request's reply wrote (its `<summary>` body, tags and `<analysis>` removed). The summary is
found in that text and compared, lower-cased with whitespace collapsed, against recent compaction
replies. Markers of Claude Code <= 2.0 are kept so older traffic still links.
"""

from __future__ import annotations

import re
from typing import Any

_WS = re.compile(r"\s+")
SUMMARY_STARTS = ("The conversation is summarized below:", "Summary:")
SUMMARY_ENDS = (
    "If you need specific details from before compaction",
    "Continue the conversation from where it left off",
    "Please continue the conversation",
)
#: Claude Code 1.0 kept the reply's analysis, as a heading, before the summary it quoted.
ANALYSIS_HEADING = "Analysis:"
PROBE_CHARS = 2000
#: Shorter summaries are not searched: a needle that small could match an unrelated reply.
MIN_PROBE_CHARS = 60


def canonical(text: str) -> str:
    return _WS.sub(" ", text).strip().lower()


def summary_probe(continuation_text: str) -> str | None:
    """The start of the quoted summary, canonicalised, or None when there is no usable summary."""
    for marker in SUMMARY_STARTS:
        _, found, summary = continuation_text.partition(marker)
        if found:
            break
    else:
        return None
    if summary.lstrip().startswith(ANALYSIS_HEADING):
        # Claude Code 1.0 quoted the whole reply with its tags turned into headings ("Analysis:\n..."
        # then "Summary:\n..."), where the reply holds `<analysis>...</analysis>`: the summary is
        # what follows the heading, the part both share.
        _, found, rest = summary.partition("Summary:")
        if found:
            summary = rest
    ends = [i for i in (summary.find(m) for m in SUMMARY_ENDS) if i != -1]
    if ends:
        summary = summary[: min(ends)]
    probe = canonical(summary).rstrip(".")[:PROBE_CHARS]  # pragma: no mutate ("XX.XX": lower-case, no X)
    return probe if len(probe) >= MIN_PROBE_CHARS else None


def reply_text(message: Any) -> str:
    """The text blocks of a reply, joined, canonicalised (what a summary probe is looked for in)."""
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return ""
    parts = [b["text"] for b in message["content"] if isinstance(b, dict) and isinstance(b.get("text"), str)]
    return canonical("\n".join(parts))
