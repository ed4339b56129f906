"""`nexus import-reference`: the whole import, from a reference database into Nexus's.

Order: migrations on the target (so its tables exist), projects, requests (keyset batches, each
stored with its checkpoint), analyses, then `nexus relink` from the earliest row imported, so the
history is threaded by Nexus's rules. Secrets are never copied: credential rows, client keys, project
keys and Slack webhooks are counted and named in the summary instead. One import runs at a time per
target database (an advisory lock), and the reference database is only read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from nexus.importing import extras, source, target
from nexus.importing.progress import Progress
from nexus.importing.rows import EPOCH, BadRow, conversation_of, to_record
from nexus.storage.migrate import migrate
from nexus.storage.records import ExchangeRecord

if TYPE_CHECKING:
    from nexus.conversations.relink import RelinkReport

LOCK_KEY = 0x6E78696D70  # "nximp"
TABLE = "api_requests"


class ImportBusyError(Exception):
    """Another import into the same database is running."""


@dataclass(slots=True)
class Report:
    source: str = ""
    read: int = 0
    imported: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    resumed_after: tuple[datetime, str] | None = None
    complete: bool = False  # every request after the checkpoint was read (no --limit cut)
    chunks: int = 0
    projects: extras.TableCounts = field(default_factory=extras.TableCounts)
    analyses: extras.TableCounts = field(default_factory=extras.TableCounts)
    analyses_shown: int = 0  # finished analyses copied into Nexus's conversation_analyses this run
    analyses_pending: int = 0  # reference jobs that never finished: not queued again
    secrets: extras.SecretsLeft = field(default_factory=extras.SecretsLeft)
    relink: RelinkReport | None = None  # when it ran
    relink_from: datetime | None = None


def import_reference(
    source_dsn: str,
    target_dsn: str,
    *,
    batch_size: int = 100,
    limit: int | None = None,
    restart: bool = False,
    relink: bool = True,
    progress: bool = True,
    on_batch: Callable[[Report], None] | None = None,
) -> Report:
    report = Report(source=source.source_name(source_dsn))
    with source.connect(source_dsn) as src:
        lay = source.layout(src)
        migrate(target_dsn)
        with target.connect(target_dsn) as dst:
            locked = dst.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
            dst.commit()
            if not locked or not locked[0]:
                raise ImportBusyError("another nexus import-reference is writing to this database")
            try:
                if restart:
                    target.forget_checkpoint(dst, report.source)
                report.projects = extras.import_projects(src, lay, dst, report.source)
                _requests(src, lay, dst, report, batch_size, limit, progress, on_batch)
                report.analyses = extras.import_analyses(src, lay, dst, report.source)
                report.analyses_shown, report.analyses_pending = extras.offer_analyses(dst, report.source)
                report.secrets = extras.secrets_left(src, lay)
                report.relink_from = target.relink_pending(dst)
                if relink and report.relink_from is not None:
                    report.relink = _relink(target_dsn, report.relink_from)
                    target.relinked(dst)
            finally:
                dst.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
                dst.commit()
    return report


def _relink(dsn: str, since: datetime) -> RelinkReport:
    from nexus.conversations.relink import relink

    return asyncio.run(relink(dsn, since=since))


def _requests(
    src: psycopg.Connection[Any],
    lay: source.Layout,
    dst: psycopg.Connection[Any],
    report: Report,
    batch_size: int,
    limit: int | None,
    show: bool,
    on_batch: Callable[[Report], None] | None,
) -> None:
    checkpoint = target.read_checkpoint(dst, report.source, TABLE)
    report.resumed_after = checkpoint.last
    without_time = source.count_without_time(src)
    report.failed += [("(no timestamp)", "timestamp is missing")] * without_time
    report.chunks = source.count_chunks(src, lay)
    total = source.count_after(src, checkpoint.last)
    bar = Progress(min(total, limit) if limit is not None else total, enabled=show)
    writer = target.Writer(dst)
    try:
        for fetched in source.batches(src, lay, checkpoint.last, batch_size, limit):
            _batch(src, lay, writer, report, fetched)
            bar.advance(
                len(fetched.rows) + len(fetched.unreadable), report.imported, report.skipped, len(report.failed)
            )
            if on_batch is not None:
                on_batch(report)
        if limit is not None and report.read >= limit and source.count_after(src, _last(dst, report.source)):
            return  # cut by --limit with rows left: not finished
        with dst.transaction():
            target.save_checkpoint(dst, report.source, TABLE, None, (0, 0, 0, 0), finished=True)
        report.complete = True
    finally:
        bar.close()


def _last(dst: psycopg.Connection[Any], origin: str) -> tuple[datetime, str] | None:
    return target.read_checkpoint(dst, origin, TABLE).last


def _batch(
    src: psycopg.Connection[Any], lay: source.Layout, writer: target.Writer, report: Report, fetched: source.Fetched
) -> None:
    """Store one fetched batch with its checkpoint; add its counts to `report`."""
    failed: list[tuple[str, str]] = list(fetched.unreadable)
    needs_chunks = [r.request_id for r in fetched.rows if r.response_body is None and r.request_id]
    chunks = source.chunks_for(src, lay, needs_chunks) if report.chunks else {}
    built: list[tuple[ExchangeRecord, str | None]] = []
    for row in fetched.rows:
        try:
            built.append((to_record(row, chunks.get(row.request_id or "")), conversation_of(row)))
        except BadRow as exc:
            failed.append((str(row.request_id), str(exc)))
        except Exception as exc:  # a row no rule foresaw: reported, never the end of the import
            failed.append((str(row.request_id), f"{exc.__class__.__name__}: {exc}"[:300]))
    there = target.present(writer.conn, [(rec.request_id, _at(rec)) for rec, _ in built])
    writer.conn.commit()
    fresh = [(rec, conv) for rec, conv in built if rec.request_id not in there]
    skipped = len(built) - len(fresh)
    earliest = min((_at(rec) for rec, _ in fresh), default=None)
    read = len(fetched.rows) + len(fetched.unreadable)

    def checkpoint(conn: psycopg.Connection[Any], refused: target.Refused) -> None:
        counts = (read, len(fresh) - len(refused), skipped, len(failed) + len(refused))
        target.save_checkpoint(conn, report.source, TABLE, fetched.last, counts, relink_from=earliest)

    refused: target.Refused = []
    if fresh:
        writer.partitions({_at(rec).date() for rec, _ in fresh})
        try:
            batch, keys = writer.rows(fresh)
        except ValueError:
            batch, keys, fresh = _encodable(writer, fresh, failed)
        refused = writer.store(batch, keys, checkpoint)
    else:
        with writer.conn.transaction():
            checkpoint(writer.conn, [])
    failed += [(str(rid), f"refused by PostgreSQL (quarantined): {err}") for rid, err in refused]
    report.read += read
    report.imported += len(fresh) - len(refused)
    report.skipped += skipped
    report.failed += failed


def _encodable(
    writer: target.Writer, fresh: list[tuple[ExchangeRecord, str | None]], failed: list[tuple[str, str]]
) -> tuple[Any, list[bytes], list[tuple[ExchangeRecord, str | None]]]:
    """The batch without the records the encoder refuses (a bug, not data: reported as failed)."""
    kept = []
    for item in fresh:
        try:
            writer.rows([item])
        except ValueError as exc:
            failed.append((item[0].request_id, f"could not be encoded: {exc}"[:300]))
            continue
        kept.append(item)
    batch, keys = writer.rows(kept)
    return batch, keys, kept


def _at(record: ExchangeRecord) -> datetime:
    return EPOCH + timedelta(microseconds=record.started_at_us)
