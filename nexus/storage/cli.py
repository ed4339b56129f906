"""`nexus storage quarantine`: the rows PostgreSQL refused, listed, retried or dropped."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
import orjson
import psycopg

from nexus.settings import SettingsError, load_settings
from nexus.storage import quarantine


@click.group("storage")
def storage() -> None:
    """Stored requests: the quarantine of rows PostgreSQL refused."""


@storage.command("quarantine")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per row.")
@click.option("--retry", is_flag=True, help="Send every listed row again (as it is, then in its last-resort form).")
@click.option("--drop", is_flag=True, help="Delete the listed rows for good (after reading them).")
@click.option("--id", "ids", multiple=True, help="Only this row (repeatable); default: all.")
def quarantine_command(as_json: bool, retry: bool, drop: bool, ids: tuple[str, ...]) -> None:
    """List the quarantined rows; with --retry store the ones PostgreSQL now accepts."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    if settings.database_url is None:
        raise click.ClickException("DATABASE_URL is not set")
    files = quarantine.QuarantineFiles(settings.nexus_home / "quarantine")
    with psycopg.connect(settings.database_url) as conn:
        rows = quarantine.list_table(conn) + list(files.rows())
        if ids:
            rows = [r for r in rows if r.id in set(ids)]
        outcome: dict[str, str] = {}
        if retry:
            stored_table, stored_files = [], set()
            for row in rows:
                error = quarantine.retry(conn, row)
                outcome[row.id] = "stored" if error is None else f"refused again: {error}"
                if error is None:
                    (stored_files.add(row.id) if row.id.startswith("file:") else stored_table.append(int(row.id)))
                elif not row.id.startswith("file:"):
                    quarantine.note_retry(conn, int(row.id), error)
                    conn.commit()
            quarantine.delete(conn, stored_table)
            conn.commit()
            files.remove(stored_files)
        elif drop:
            quarantine.delete(conn, [int(r.id) for r in rows if not r.id.startswith("file:")])
            conn.commit()
            files.remove({r.id for r in rows if r.id.startswith("file:")})
            outcome = {r.id: "dropped" for r in rows}
    for row in rows:
        item: dict[str, Any] = row.summary() | ({"result": outcome[row.id]} if row.id in outcome else {})
        if as_json:
            click.echo(orjson.dumps(item).decode())
            continue
        at = datetime.fromtimestamp(row.quarantined_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        line = f"{row.id}  {at}  {row.table_name}  {row.request_id or '-'}  {row.error[:160]}"
        click.echo(line + (f"  -> {outcome[row.id]}" if row.id in outcome else ""))
    if not as_json:
        click.echo(f"{len(rows)} quarantined row(s)" + (" handled" if outcome else ""), err=True)
