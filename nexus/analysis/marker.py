"""The mark of an analysis request, and how the proxy checks it.

The worker asks the model through this gateway, so the request is stored and paid like any other. Its
messages quote the conversation it analyses, so the linker could take it for a turn of that
conversation (its first message may even hash the same). The worker therefore marks it with the header
`x-nexus-analysis: <job id>.<claim token>`; the proxy checks the token against the job's current claim
in the database (only its sha256 is stored there, and it changes with every claim), then stores the
request as `request_type = 'analysis'` with no conversation link.

A client cannot use the mark for anything: it only exists while a worker holds that job; a mark that
does not check out is refused (403, counted against the address like a wrong key; 429 once the address
is throttled) rather than ignored, while a live mark still passes from a throttled address (the worker
shares it with local clients, and a live mark cannot be guessed);
a valid one bypasses nothing (client keys, credentials, body checks and storage apply as to any
request) and only keeps the request out of conversations. The header is never forwarded upstream and
never stored (stored headers are an allow-list).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Any

from psycopg import AsyncConnection

HEADER = "x-nexus-analysis"
REQUEST_TYPE = "analysis"
_FORMAT = re.compile(r"([1-9][0-9]{0,17})\.([A-Za-z0-9_-]{32,64})")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def header_value(job_id: int, token: str) -> str:
    return f"{job_id}.{token}"


def parse(value: str | None) -> tuple[int, str] | None:
    """(job id, token) of a well-formed mark, else None."""
    if not value:
        return None
    match = _FORMAT.fullmatch(value.strip())
    if match is None:
        return None
    return int(match.group(1)), match.group(2)


async def verify(conn: AsyncConnection[Any], value: str | None) -> int | None:
    """The job id when `value` is the mark of a job being processed under that claim, else None."""
    parsed = parse(value)
    if parsed is None:
        return None
    job_id, token = parsed
    cur = await conn.execute(
        "SELECT claim_token_hash FROM conversation_analyses WHERE id = %s AND status = 'processing'", (job_id,)
    )
    row = await cur.fetchone()
    if row is None or row[0] is None:
        return None
    return job_id if hmac.compare_digest(bytes(row[0]), token_hash(token)) else None
