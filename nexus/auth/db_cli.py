"""`nexus credentials ...`: credentials in the database (import, list, remove, the sealing key).

Kept apart from `nexus.auth.cli` (client keys and OAuth accounts) because these commands are about
where credentials live, not what they are. Output never holds a token: names, kinds, expiries, key ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import orjson
import psycopg

from nexus.auth.credentials import CredentialError, CredentialStore
from nexus.auth.db_credentials import ACCOUNT, PROJECT, all_rows, import_document, kind_of, remove, reseal_all
from nexus.auth.db_files import import_directory, import_file, kind_and_name, write_back
from nexus.auth.sealing import SealingError, SecretBox, load_box, new_key
from nexus.settings import Settings, SettingsError, load_settings


def settings_or_fail() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def box_of(settings: Settings) -> SecretBox:
    try:
        return load_box(settings.nexus_secret_key, settings.nexus_home)
    except SealingError as exc:
        raise click.ClickException(str(exc)) from None


@contextmanager
def database(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the credentials database, or a clear error saying why there is none."""
    dsn = settings.credentials_database
    if dsn is None:
        raise click.ClickException(
            "no database: credentials are kept in the database named by DATABASE_URL (with STORAGE_ENABLED); "
            "without one, the files under CREDENTIALS_DIR are used as they are"
        )
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            yield conn
    except psycopg.errors.UndefinedTable:
        raise click.ClickException("the database has no credentials table yet: run `nexus migrate`") from None
    except psycopg.OperationalError as exc:
        first = (str(exc).strip().splitlines() or ["unreachable"])[0]
        raise click.ClickException(f"the database cannot be reached ({first})") from None
    except (CredentialError, SealingError) as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def credentials() -> None:
    """Credentials in the database: import files, list, remove, rotate the sealing key (NEXUS_SECRET_KEY)."""


@credentials.command("import")
@click.argument("path", required=False, type=click.Path(exists=True, path_type=Path))
def credentials_import(path: Path | None) -> None:
    """Import credential files (default: CREDENTIALS_DIR; or one file, or a directory of the same layout).

    Newer OAuth tokens already in the database are never replaced by older ones from a file; such a file
    is rewritten with the database's tokens instead."""
    settings = settings_or_fail()
    target = path or settings.credentials_dir
    with database(settings) as conn:
        box = box_of(settings)
        if target.is_dir():
            done, problems = import_directory(conn, box, target)
        else:
            try:
                imported = import_file(conn, box, target, target.name)
            except CredentialError as exc:
                raise click.ClickException(str(exc)) from None
            if imported.file_stale:
                write_back(target, imported.row.raw)
            done, problems = [(str(target), imported)], []
    for problem in problems:
        click.echo(f"not imported: {problem}", err=True)
    for where, imported in done:
        extra = " (the file was rewritten with them)" if imported.file_stale else ""
        click.echo(f"{where}: {imported.outcome}{extra}")
    click.echo(f"{len(done)} imported or checked, {len(problems)} not imported", err=True)
    if problems:
        raise SystemExit(1)


@credentials.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def credentials_list(as_json: bool) -> None:
    """List the credentials in the database (names, kinds, expiries; never a token)."""
    settings = settings_or_fail()
    with database(settings) as conn:
        rows = all_rows(conn, box_of(settings))
    out = [
        {
            "name": r.label,
            "type": r.type,
            "account_id": r.account_id,
            "expires_at_ms": r.expires_at_ms,
            "version": r.version,
            "key_id": r.key_id,
            "source": r.source,
        }
        for r in rows
    ]
    if as_json:
        click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return
    if not out:
        click.echo("no credentials in the database", err=True)
    for item in out:
        click.echo(f"{item['name']}  {item['type']}  {item['account_id']}  version {item['version']}")


@credentials.command("remove")
@click.argument("name")
@click.option("--account", is_flag=True, help="NAME is a named account (accounts/NAME), not a project.")
def credentials_remove(name: str, account: bool) -> None:
    """Remove a credential from the database (its file, if any, is left alone: remove it too, or the next
    start imports it again)."""
    settings = settings_or_fail()
    try:
        CredentialStore(settings.credentials_dir).project_path(name)  # the same name rules as files
    except CredentialError as exc:
        raise click.ClickException(str(exc)) from None
    with database(settings) as conn:
        if not remove(conn, kind_of(account), name):
            raise click.ClickException(f"no {'account' if account else 'project'} credential {name!r} in the database")
    click.echo(f"removed {'accounts/' if account else ''}{name} from the database")


@credentials.command("new-key")
def credentials_new_key() -> None:
    """Print a new key for NEXUS_SECRET_KEY (stdout only; nothing is stored)."""
    click.echo(new_key())


@credentials.command("rotate-key")
def credentials_rotate_key() -> None:
    """Re-seal every credential with the first key of NEXUS_SECRET_KEY (the others must still open them).

    Rotation: set NEXUS_SECRET_KEY=NEW,OLD on every instance, run this once, then set NEXUS_SECRET_KEY=NEW."""
    settings = settings_or_fail()
    with database(settings) as conn:
        box = box_of(settings)
        done = reseal_all(conn, box)
    click.echo(f"re-sealed {done} credential(s) with key {box.key_id}")


def store_login(settings: Settings, path: Path) -> str | None:
    """After `nexus oauth login` wrote `path`: the same tokens into the database (a login replaces the
    tokens whatever their age). None when there is no database; else what happened."""
    if settings.credentials_database is None:
        return None
    kind, name = kind_and_name(path)
    raw = orjson.loads(path.read_bytes())
    with database(settings) as conn:
        imported = import_document(conn, box_of(settings), kind, name, raw, str(path.resolve()), login=True)
    return imported.outcome


__all__ = ["ACCOUNT", "PROJECT", "credentials", "database", "store_login"]
