"""Linking: the request's place in its conversation, decided before it goes upstream.

The decision is made before forwarding so that a parallel request of the same conversation sees this
one; a lookup the database has not answered yet settles later (`record.store`). The analysis worker's
own requests are marked and never become a turn of anyone's conversation.
"""

from __future__ import annotations

from typing import Any

from nexus.analysis import marker as analysis_marker
from nexus.conversations.linker import Link
from nexus.conversations.service import ConversationService, link_request
from nexus.proxy.phases.exchange import Exchange

ANALYSIS_TYPE = analysis_marker.REQUEST_TYPE


async def link(ex: Exchange, conversations: ConversationService | None, headers: Any) -> None:
    """Set the record's analysis, request type and link (nothing when linking is off)."""
    record, admitted = ex.record, ex.admitted
    if admitted.analysis_job is not None:  # the analysis worker's request: never a conversation turn
        record.analysis, record.request_type, record.link = admitted.analysis, ANALYSIS_TYPE, Link(ANALYSIS_TYPE)
    elif conversations is not None:
        auth = admitted.auth
        req = link_request(
            record.request_id, auth.project_id, record.started_at_us / 1e6, ex.path, headers, admitted.analysis
        )
        record.analysis, record.request_type = admitted.analysis, req.request_type
        record.link = await conversations.link(req)
