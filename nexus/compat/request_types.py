"""Nexus's request types in the reference system's vocabulary, for the fields that carry its names.

The reference stored only `inference` requests (conversation turns) and called housekeeping calls
(titles, quota probes) `query_evaluation`; its scripts and dashboards read `requestType == "inference"`
and `requestsByType.inference`. Nexus classifies finer (docs/conversations.md): a main turn, a
sub-agent's, a compaction are all the reference's `inference`; `auxiliary` is its `query_evaluation`.
Other values (`count_tokens`, `unknown`) have no reference name and pass through. Nexus's own names
(`request_type`, `requestTypes`) keep the finer value: nothing is lost.
"""

from __future__ import annotations

from collections.abc import Mapping

from nexus.conversations.classify import AUXILIARY, LINKED_TYPES

INFERENCE, QUERY_EVALUATION = "inference", "query_evaluation"


def reference_request_type(request_type: str | None) -> str | None:
    if request_type in LINKED_TYPES:
        return INFERENCE
    if request_type == AUXILIARY:
        return QUERY_EVALUATION
    return request_type


def reference_type_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """Counts by Nexus type, summed by reference type (largest first, as the reference ordered them)."""
    merged: dict[str, int] = {}
    for request_type, count in counts.items():
        name = reference_request_type(request_type) or "unknown"
        merged[name] = merged.get(name, 0) + int(count)
    return dict(sorted(merged.items(), key=lambda item: -item[1]))
