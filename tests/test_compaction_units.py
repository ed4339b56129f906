"""Finding the summary a post-compaction request quotes (`nexus/conversations/compaction.py`).

After `/compact` Claude Code restarts the history with a first user message that quotes the summary the
compaction request's reply wrote. The linker joins the two by looking for the start of that quote (the
*probe*) in recent compaction replies: a probe that takes too much (the opening sentence, the closing
instructions) finds nothing, one that takes too little could find an unrelated reply.
"""

from __future__ import annotations

from typing import Any

from nexus.conversations.compaction import MIN_PROBE_CHARS, PROBE_CHARS, canonical, reply_text, summary_probe

SUMMARY = "1. Primary Request and Intent: the user asked for a parser; 2. Key Technical Concepts: Rust, PyO3."
OPENING = (
    "This session is being continued from a previous conversation that ran out of context. "
    "The summary below covers the earlier portion of the conversation.\n\n"
)
CLOSING = "If you need specific details from before compaction (like exact code snippets), read the transcript."
WANT = "1. primary request and intent: the user asked for a parser; 2. key technical concepts: rust, pyo3"


def test_canonical_lowers_and_collapses_every_kind_of_whitespace() -> None:
    assert canonical("  One\tTwo\r\n\n  Three\u00a0Four  ") == "one two three four"
    assert canonical("") == ""


def test_the_summary_after_claude_code_2_1s_marker_up_to_its_closing() -> None:
    text = f"{OPENING}Summary:\n{SUMMARY}\n\n{CLOSING}"
    assert summary_probe(text) == WANT


def test_the_markers_of_older_clients() -> None:
    older = f"{OPENING}The conversation is summarized below:\n{SUMMARY}\nPlease continue the conversation from where"
    assert summary_probe(older) == WANT
    oldest = f"{OPENING}Summary: {SUMMARY}\nContinue the conversation from where it left off without asking."
    assert summary_probe(oldest) == WANT


def test_the_first_start_marker_wins_even_when_the_summary_says_summary() -> None:
    body = f"{SUMMARY} Summary: parser done, tests green, docs pending for the release."
    text = f"The conversation is summarized below:\n{body}\n{CLOSING}"
    assert summary_probe(text) == canonical(body).rstrip(".")


def test_the_earliest_closing_marker_ends_the_summary() -> None:
    tail = "Please continue the conversation. If you need specific details from before compaction, ask."
    assert summary_probe(f"Summary:\n{SUMMARY}\n{tail}") == WANT
    tail = "If you need specific details from before compaction, ask. Please continue the conversation."
    assert summary_probe(f"Summary:\n{SUMMARY}\n{tail}") == WANT


def test_without_a_closing_the_summary_runs_to_the_end() -> None:
    assert summary_probe(f"Summary:\n{SUMMARY}\n  ") == WANT
    assert summary_probe(f"Summary:{SUMMARY} and more.") == WANT + ". and more"


def test_trailing_full_stops_are_not_part_of_the_probe() -> None:
    """The reply may end the summary without the full stop the continuation quotes, or with more."""
    assert summary_probe(f"Summary: {SUMMARY}...") == WANT


def test_no_marker_no_probe() -> None:
    assert summary_probe(f"{OPENING}{SUMMARY} {SUMMARY}") is None
    assert summary_probe("") is None


def test_a_probe_is_at_least_sixty_characters() -> None:
    assert MIN_PROBE_CHARS == 60
    sixty = "x" * 60
    assert summary_probe(f"Summary: {sixty}") == sixty
    assert summary_probe(f"Summary: {sixty[:-1]}") is None
    assert summary_probe(f"Summary: {sixty[:-1]}.....") is None  # full stops do not count
    assert summary_probe(f"Summary: {'  '.join(sixty[:30])}") is None  # nor does collapsed space


def test_a_probe_is_the_first_two_thousand_characters() -> None:
    assert PROBE_CHARS == 2000
    long = " ".join(f"word{i}" for i in range(1000))
    probe = summary_probe(f"Summary:\n{long}\n{CLOSING}")
    assert probe == long[:2000]
    assert probe is not None and len(probe) == 2000


def reply(*blocks: Any) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": list(blocks)}


def test_reply_text_joins_the_text_blocks_canonically() -> None:
    message = reply(
        {"type": "thinking", "thinking": "hmm"},
        {"type": "text", "text": "<analysis>\nA\n</analysis>"},
        {"type": "tool_use", "id": "t", "name": "Bash", "input": {"text": "not this"}},
        {"type": "text", "text": "<summary>\n1. Primary  Request\n</summary>"},
    )
    assert reply_text(message) == "<analysis> a </analysis> <summary> 1. primary request </summary>"


def test_a_quoted_summary_is_found_in_the_reply_that_wrote_it() -> None:
    written = reply({"type": "text", "text": f"<analysis>\nthinking\n</analysis>\n\n<summary>\n{SUMMARY}\n</summary>"})
    probe = summary_probe(f"{OPENING}Summary:\n{SUMMARY}\n\n{CLOSING}")
    assert probe is not None and probe in reply_text(written)


def test_reply_text_of_what_is_not_a_reply_is_empty() -> None:
    assert reply_text(None) == ""
    assert reply_text("text") == ""
    assert reply_text({"content": "a string, not blocks"}) == ""
    assert reply_text({"text": "no content"}) == ""
    assert reply_text(reply("text", {"type": "text", "text": 5}, {"type": "text"})) == ""
    assert reply_text(reply({"type": "text", "text": "  Only  "})) == "only"


def test_claude_code_1_0s_quote_with_the_analysis_as_a_heading_is_found_in_the_reply() -> None:
    """Claude Code 1.0 quoted the whole compaction reply with its tags turned into headings
    ("Analysis:" then "Summary:"): the probe is the summary after the heading, which the reply holds
    between its `<summary>` tags (this compaction was not linked before)."""
    analysis = "The user asked for a parser in Rust; I wrote the lexer first, then the tests, then the docs."
    tagged = f"<analysis>\n{analysis}\n</analysis>\n\n<summary>\n{SUMMARY}\n</summary>"
    written = reply({"type": "text", "text": tagged})
    quoted = (
        f"{OPENING}The conversation is summarized below:\nAnalysis:\n{analysis}\n\nSummary:\n{SUMMARY}\n"
        "Please continue the conversation from where we left it off without asking the user any further questions."
    )
    assert summary_probe(quoted) == WANT
    probe = summary_probe(quoted)
    assert probe is not None and probe in reply_text(written)
