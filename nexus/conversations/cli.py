"""`nexus replay DIR` and `nexus relink`: the linker run over recorded or stored traffic."""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime
from pathlib import Path

import click
import orjson

from nexus.conversations.linker import Linker


@click.command("replay")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--project", help="Project for every request (default: resolved from each request's headers).")
@click.option("--store/--no-store", default=None, help="Also store the requests (default: when DATABASE_URL is set).")
def replay_command(directory: Path, project: str | None, store: bool | None) -> None:
    """Link recorded requests (one JSON file each, in file-name order); print one JSON line per request."""
    from nexus.conversations.replay import load_recording, replay_lines
    from nexus.settings import get_settings

    settings = get_settings()
    recording = load_recording(directory)
    if not recording:
        raise click.ClickException(f"no recorded requests (*.json with path and response) in {directory}")
    writer = None
    if store or (store is None and settings.database_url and settings.storage_enabled):
        from nexus.storage.writer import build_writer

        writer = build_writer(settings)
        if writer is None:
            raise click.ClickException("--store needs DATABASE_URL")
        writer.start()
    try:
        for line, record in replay_lines(recording, Linker(), project, with_records=writer is not None):
            click.echo(orjson.dumps(line).decode())
            if writer is not None and record is not None:
                writer.submit(record)
    finally:
        if writer is not None:
            writer.close()
            stats = writer.snapshot()
            click.echo(f"stored {stats['rows_written']} rows ({stats['spooled_batches']} batches spooled)", err=True)


@click.command("relink")
@click.option("--since", type=click.DateTime(), help="Relink rows from this time on (earlier rows keep their links).")
@click.option("--dry-run", is_flag=True, help="Compute the new links and report, change nothing.")
def relink_command(since: datetime | None, dry_run: bool) -> None:
    """Rebuild the conversation links of stored requests with the current linker."""
    from nexus.conversations.relink import relink
    from nexus.settings import get_settings

    dsn = get_settings().database_url
    if dsn is None:
        raise click.ClickException("DATABASE_URL is not set")
    if sys.platform == "win32":  # pragma: no cover
        asyncio.set_event_loop_policy(asyncio.WindowsSelectorEventLoopPolicy())  # type: ignore[attr-defined]
    report = asyncio.run(relink(dsn, since=since, dry_run=dry_run))
    verb = "would change" if dry_run else "changed"
    click.echo(
        f"{report.rows} rows read, {verb} the conversation of {report.changed}; "
        f"conversations {report.conversations_before} -> {report.conversations_after}"
    )
