"""Credential files and the database: importing files, and writing rotated tokens back to them.

Files under `CREDENTIALS_DIR` keep working when credentials live in the database: each is imported at
start-up, again whenever it changes on disk (a login, an edit), and by `nexus credentials import`. From
then on the database holds the truth; a file whose tokens are older than the database's (another
instance refreshed them) is rewritten from the database, as a refresh on this machine always did, so
the file never holds a spent refresh token for longer than the next look at it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import psycopg

from nexus.auth.credentials import SUFFIX, CredentialError, CredentialStore, read_credential
from nexus.auth.db_credentials import ACCOUNT, PROJECT, Imported, import_document, older_tokens
from nexus.auth.files import credential_lock, write_atomically
from nexus.auth.sealing import SecretBox


def kind_and_name(path: Path) -> tuple[str, str]:
    """What a credential file is: a named account (`accounts/`) or a project's credential."""
    if not path.name.endswith(SUFFIX):
        raise CredentialError(f"{path.name}: a credential file's name ends with {SUFFIX}")
    return (ACCOUNT if path.parent.name == "accounts" else PROJECT), path.name.removesuffix(SUFFIX)


def import_file(conn: psycopg.Connection[Any], box: SecretBox, path: Path, where: str | None = None) -> Imported:
    """Import one credential file (read under its lock, so never half of a rewrite)."""
    kind, name = kind_and_name(path)
    try:
        with credential_lock(path):
            cred = read_credential(path, where)
    except OSError:  # a read-only directory (a mounted secret): no lock file can be made
        if not path.exists():
            raise
        cred = read_credential(path, where)  # written by rename if at all, so never half of a rewrite
    return import_document(conn, box, kind, name, cred.raw, str(path.resolve()))


def import_directory(
    conn: psycopg.Connection[Any], box: SecretBox, directory: Path
) -> tuple[list[tuple[str, Imported]], list[str]]:
    """Import every credential file of a CREDENTIALS_DIR layout; what happened to each, and the
    problems of the files that could not be imported (naming the file, never a value)."""
    store = CredentialStore(directory)
    done: list[tuple[str, Imported]] = []
    problems: list[str] = []
    for path in store.paths():
        where = store.where(path)
        try:
            imported = import_file(conn, box, path, where)
        except CredentialError as exc:
            problems.append(str(exc))
            continue
        except OSError as exc:
            problems.append(f"{where}: cannot be read ({exc.strerror})")
            continue
        if imported.file_stale:
            write_back(path, imported.row.raw)
        done.append((where, imported))
    return done, problems


def write_back(path: Path, raw: dict[str, Any]) -> bool:
    """Rewrite an existing file with the database's document; whether it was written. A file that is
    gone stays gone (this machine no longer keeps it), and one whose tokens are newer than `raw` (a
    login since) is left for the next import to take."""
    if not path.exists():  # checked first: the lock would create the directory and a lock file
        return False
    with credential_lock(path):
        try:
            current = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return False
        except orjson.JSONDecodeError:
            current = None
        if current == raw or (isinstance(current, dict) and older_tokens(raw, current)):
            return False
        write_atomically(path, raw)
        return True


def import_at_start(dsn: str, box: SecretBox, directory: Path) -> tuple[list[str], list[str]]:
    """What `nexus proxy` does before its workers start: import CREDENTIALS_DIR. Returns one line per
    file that changed the database (never a value; files that could not be imported are reported by
    `nexus.auth.service.startup_lines`), and the OAuth credentials the database holds, for the policy
    notice (an instance with an empty folder serves them too)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        done, _ = import_directory(conn, box, directory)
        oauth = conn.execute(
            "SELECT CASE WHEN kind = 'account' THEN 'accounts/' ELSE '' END || name FROM credentials "
            "WHERE type = 'oauth' ORDER BY kind DESC, name"
        ).fetchall()
    lines = [f"credentials: {where} {imported.outcome}" for where, imported in done if imported.outcome != "unchanged"]
    return lines, [str(r[0]) for r in oauth]
