"""Finding the rows of a refused batch that PostgreSQL will not take, so that every other row goes in.

When a batch is refused for its content (`failures.classify`), its rows are split in halves and each
half sent again (in its own transaction) until the refused rows stand alone; a refused row is sent
once more in its last-resort form (`nexus._core.copy_row_last_resort`: every JSON value as a JSON
string, text re-escaped) and, only if even that is refused, kept in the quarantine with the error.
With one bad row in a batch of n this costs about 2 log2(n) extra transactions, and only on that
rare path. If the database goes away meanwhile, the outage is raised: the caller spools the whole
batch, which is safe to send again (inserts skip rows already stored).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from nexus._core import NexusCoreError, copy_payload, copy_row_field, copy_row_last_resort, copy_rows
from nexus.storage.failures import OUTAGE, classify, describe
from nexus.storage.payload import Batch
from nexus.storage.quarantine import QuarantinedRow, now
from nexus.storage.records import BLOB_TYPES_BY_COUNT

log = logging.getLogger("nexus.storage")

Attempt = Callable[[Batch], None]  # pragma: no mutate (a type alias)
Keep = Callable[[QuarantinedRow], None]  # pragma: no mutate (a type alias)


@dataclass(slots=True)  # pragma: no mutate (slots save memory)
class Isolated:
    requests: int = 0  # request rows stored (as they were or in their last-resort form)
    blobs: int = 0  # content rows stored
    last_resort: int = 0  # rows of either table stored in their last-resort form
    quarantined: int = 0  # rows of either table kept in the quarantine


def isolate(batch: Batch, attempt: Attempt, keep: Keep) -> Isolated:
    """Store what can be stored of `batch`; raise the error of an outage if one happens meanwhile."""
    counts = Isolated()
    if batch.blobs:
        blob_rows = copy_rows(batch.blobs)
        types = BLOB_TYPES_BY_COUNT[_field_count(blob_rows[0])] if blob_rows else []
        _bisect(blob_rows, types, "content_blobs", lambda rows: attempt(Batch(b"", copy_payload(rows))), keep, counts)
    if batch.requests:
        types = batch.request_types()
        request_rows = copy_rows(batch.requests)
        _bisect(request_rows, types, "api_requests", lambda rows: attempt(Batch(copy_payload(rows), b"")), keep, counts)
    return counts


def _bisect(
    rows: list[bytes],
    types: list[str],
    table: str,
    send: Callable[[list[bytes]], None],
    keep: Keep,
    counts: Isolated,
) -> None:
    pending = [rows] if rows else []
    while pending:
        part = pending.pop()
        try:
            send(part)
            _count(counts, table, len(part))
            continue
        except Exception as exc:
            if classify(exc) == OUTAGE:
                raise
            error: BaseException = exc  # pragma: no mutate (replaced before it is kept; else only logged)
        if len(part) > 1:
            middle = len(part) // 2
            pending += [part[middle:], part[:middle]]  # the first half is tried first: order kept
            continue
        row = part[0]
        try:
            send([copy_row_last_resort(types, row)])
            _count(counts, table, 1)
            counts.last_resort += 1
            log.warning(
                "%s row %s stored in its last-resort form after: %s", table, _request_id(table, row), describe(error)
            )
            continue
        except NexusCoreError as exc:
            error = exc
        except Exception as exc:
            if classify(exc) == OUTAGE:
                raise
            error = exc
        keep(
            QuarantinedRow(
                "",
                table,
                _field_count(row),
                _request_id(table, row),
                row,
                getattr(error, "sqlstate", None),
                describe(error),
                now(),
            )
        )
        counts.quarantined += 1


def _count(counts: Isolated, table: str, rows: int) -> None:
    if table == "api_requests":
        counts.requests += rows
    else:
        counts.blobs += rows


def _field_count(row: bytes) -> int:
    return int.from_bytes(row[:2], "big", signed=True)  # pragma: no mutate (a small positive count)


def _request_id(table: str, row: bytes) -> str | None:
    if table != "api_requests":
        return None
    try:
        raw = copy_row_field(row, 0)
    except NexusCoreError:
        return None
    return str(uuid.UUID(bytes=raw)) if raw is not None and len(raw) == 16 else None
