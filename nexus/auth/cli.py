"""`nexus keys ...` and `nexus oauth ...`: the operator's side of client keys and OAuth accounts.

Kept out of `nexus/cli.py` (which only adds these groups) so each command stays next to the code it
drives. Output never contains a token: a client key is printed once, on creation, on stdout alone (so
`KEY=$(nexus keys create --project p)` works); everything else shows previews, dates and states.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

from nexus.auth import oauth_status
from nexus.auth.client_keys import ClientKey, ClientKeyStore
from nexus.auth.credentials import Credential, CredentialError, CredentialStore
from nexus.auth.db_cli import box_of, database, store_login
from nexus.auth.db_credentials import ACCOUNT, all_rows, file_path, refresh_row
from nexus.auth.db_files import write_back
from nexus.auth.login import LoginError, complete_login, parse_pasted, start_login
from nexus.auth.oauth_status import fingerprint
from nexus.auth.reference_keys import ReferenceKey, read_reference_keys, remove_reference_keys
from nexus.auth.refresh import refresh_credential
from nexus.auth.token_endpoint import OAuthError, TokenEndpoint
from nexus.settings import Settings, SettingsError, load_settings

POLICY = (
    "Note: Anthropic's policy is that subscription (Free/Pro/Max) OAuth credentials are for their owner's own "
    "use: each person uses their own subscription. Hold only your own account here (docs/credentials.md)."
)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _when(epoch_s: float | None) -> str:
    """An absolute UTC time and how far it is from now, for people reading a terminal."""
    if epoch_s is None:
        return "-"
    delta = epoch_s - time.time()
    span = abs(delta)
    rel = f"{span:.0f} s" if span < 120 else f"{span / 60:.0f} min" if span < 7200 else f"{span / 3600:.1f} h"
    stamp = datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{stamp} ({'in ' + rel if delta >= 0 else rel + ' ago'})"


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max([len(c), *(len(str(r[c])) for r in rows)]) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        click.echo("  ".join(str(row[c]).ljust(widths[c]) for c in columns).rstrip())


# --- nexus keys ----------------------------------------------------------------------------------


def _key_store(settings: Settings) -> ClientKeyStore:
    if not settings.api_key_salt:
        raise click.ClickException("API_KEY_SALT is not set: client keys are stored as digests salted with it")
    from nexus.auth.service import client_key_store

    return client_key_store(settings)


def _key_row(key: ClientKey) -> dict[str, Any]:
    return {
        "id": key.key_id,
        "preview": key.preview,
        "project": key.project,
        "name": key.name or "-",
        "created": _when(key.created_at),
        "expires": _when(key.expires_at) if key.expires_at else "never",
        "revoked": _when(key.revoked_at) if key.revoked_at else "no",
    }


@click.group()
def keys() -> None:
    """Client keys for ENABLE_CLIENT_AUTH: create, list, revoke."""


@keys.command("create")
@click.option("--project", required=True, help="Project the key belongs to (it overrides any train-id header).")
@click.option("--name", help="A label for the key, e.g. who holds it.")
@click.option("--expires-days", type=click.FloatRange(min=0, min_open=True), help="Expire the key after D days.")
def keys_create(project: str, name: str | None, expires_days: float | None) -> None:
    """Create a key and print it once (stdout); only its salted digest is stored."""
    store = _key_store(_settings())
    try:
        CredentialStore(store.directory.parent).project_path(project)  # the same name rules as credential files
    except CredentialError as exc:
        raise click.ClickException(str(exc)) from None
    key, secret = store.create(project, name, expires_days)
    click.echo(secret)
    click.echo(f"created client key {key.key_id} for project {project!r}; it is shown only this once", err=True)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def keys_list(as_json: bool) -> None:
    """List keys (previews only, never the keys)."""
    found = _key_store(_settings()).list()
    if as_json:
        rows = [
            {k: getattr(key, k) for k in ("key_id", "preview", "project", "name", "created_at", "expires_at")}
            | {"revoked_at": key.revoked_at, "usable": key.problem() is None}
            for key in found
        ]
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    elif not found:
        click.echo("no client keys", err=True)
    else:
        _table([_key_row(k) for k in found], ["id", "preview", "project", "name", "created", "expires", "revoked"])


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (as `nexus keys list` shows it); takes effect on the next request."""
    key = _key_store(_settings()).revoke(key_id)
    if key is None:
        raise click.ClickException(f"no client key with id {key_id[:40]!r}")
    click.echo(f"revoked client key {key.key_id} ({key.preview}, project {key.project!r})")


@keys.command("import")
@click.option(
    "--remove",
    is_flag=True,
    help="Then remove the imported keys from the files (the client_api_key fields, the key files' entries).",
)
def keys_import(remove: bool) -> None:
    """Turn the reference system's client keys (client_api_key in credential files, TRAIN_CLIENT_KEYS_DIR
    key files) into salted records: the same keys keep working, and with --remove no file holds them in clear."""
    settings = _settings()
    store = _key_store(settings)
    found, problems = read_reference_keys(settings.credentials_dir, settings.client_keys_dir)
    for problem in problems:
        click.echo(f"skipped: {problem}", err=True)
    done: list[ReferenceKey] = []
    counts = {"imported": 0, "already imported": 0, "not imported": 0}
    for ref in found:
        try:
            key, created = store.import_key(ref.key, ref.project, f"imported from {ref.source}")
        except ValueError:
            counts["not imported"] += 1
            click.echo(
                f"{ref.source}: a key without the cnp_live_/cnp_test_ prefix is not imported; it keeps working "
                "from its file (or issue a new one with `nexus keys create`)",
                err=True,
            )
            continue
        state = "imported" if created else "already imported"
        counts[state] += 1
        if key.project == ref.project:
            done.append(ref)
        click.echo(f"{state}: {key.key_id} ({key.preview}) for project {key.project!r} from {ref.source}")
    if remove:
        for line in remove_reference_keys(settings.credentials_dir, settings.client_keys_dir, done):
            click.echo(line)
    click.echo(", ".join(f"{n} {state}" for state, n in counts.items()), err=True)


# --- nexus oauth ---------------------------------------------------------------------------------


@click.group()
def oauth() -> None:
    """OAuth accounts held by the proxy: login, refresh, status."""


@oauth.command("login")
@click.option("--account", help="Save as the named account accounts/NAME.credentials.json.")
@click.option("--project", help="Save as the project's credential PROJECT.credentials.json (default: default).")
def oauth_login(account: str | None, project: str | None) -> None:
    """Sign in with PKCE: open the printed URL, then paste the code#state shown back here."""
    if account and project:
        raise click.UsageError("give --account or --project, not both")
    settings = _settings()
    store = CredentialStore(settings.credentials_dir)
    try:
        path = store.account_path(account) if account else store.project_path(project or "default")
    except CredentialError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(POLICY, err=True)
    request = start_login(settings)
    click.echo("Open this URL in a browser, sign in, then paste the code shown (code#state):")
    click.echo(request.url)
    click.echo("code: ", nl=False)
    pasted = sys.stdin.readline()
    try:
        cred = complete_login(settings, request, parse_pasted(pasted, request.state), path)
    except (LoginError, OAuthError) as exc:
        raise click.ClickException(f"login failed: {exc}") from None
    click.echo(f"saved {path} (account {cred.account_id!r}, token expires {_when(_seconds(cred.expires_at_ms))})")
    if (outcome := store_login(settings, path)) is not None:
        click.echo(f"stored in the database ({outcome}): every instance sharing it uses this login")


def _seconds(ms: int | None) -> float | None:
    return ms / 1000 if ms is not None else None


def _oauth_targets(store: CredentialStore, name: str | None) -> list[Path]:
    """The files `name` designates (a named account first, then a project), or every OAuth credential."""
    if name is None:
        creds, _ = store.all()
        return [c.path for c in creds if c.kind == "oauth"]
    try:
        candidates = [store.account_path(name), store.project_path(name)]
    except CredentialError as exc:
        raise click.ClickException(str(exc)) from None
    found = [p for p in candidates if p.exists()]
    if not found:
        raise click.ClickException(f"no credential named {name!r} (looked for {', '.join(map(str, candidates))})")
    return found[:1]


@oauth.command("refresh")
@click.argument("account", required=False)
def oauth_refresh(account: str | None) -> None:
    """Refresh ACCOUNT's tokens now (all OAuth credentials if omitted), under the same machine-wide lock."""
    settings = _settings()
    store = CredentialStore(settings.credentials_dir)
    endpoint = TokenEndpoint(settings.claude_oauth_token_url, settings.claude_oauth_client_id)
    if settings.credentials_database:
        _db_refresh(settings, store, endpoint, account)
        return
    targets = _oauth_targets(store, account)
    if not targets:
        raise click.ClickException(f"no OAuth credentials in {settings.credentials_dir}")
    failed = 0
    for path in targets:
        where = store.where(path)
        try:
            cred, _ = refresh_credential(path, endpoint, lambda _c: True, where=where, honour_failures=False)
        except (OAuthError, CredentialError, OSError) as exc:
            failed += 1
            click.echo(f"{where}: refresh failed: {exc}", err=True)
            continue
        click.echo(f"{where}: refreshed, token expires {_when(_seconds(cred.expires_at_ms))}")
    if failed:
        sys.exit(1)


def _db_refresh(settings: Settings, store: CredentialStore, endpoint: TokenEndpoint, name: str | None) -> None:
    """`nexus oauth refresh` against the database: the same advisory lock as the proxies, and the
    rotated tokens written back to this machine's file when it keeps one."""
    with database(settings) as conn:
        box = box_of(settings)
        rows = [r for r in all_rows(conn, box) if r.type == "oauth" and (name is None or r.name == name)]
        if name is not None:
            rows = sorted(rows, key=lambda r: r.kind != ACCOUNT)[:1]  # a named account first, as with files
        if not rows:
            raise click.ClickException(
                f"no OAuth credential {'named ' + repr(name) + ' ' if name else ''}in the database"
            )
        failed = 0
        for row in rows:
            try:
                fresh, _ = refresh_row(conn, box, row.kind, row.name, endpoint, lambda _r: True, honour_failures=False)
            except (OAuthError, CredentialError) as exc:
                failed += 1
                click.echo(f"{row.label}: refresh failed: {exc}", err=True)
                continue
            write_back(file_path(store.directory, fresh.kind, fresh.name), fresh.raw)
            click.echo(f"{row.label}: refreshed, token expires {_when(_seconds(fresh.expires_at_ms))}")
    if failed:
        sys.exit(1)


def _db_status_rows(settings: Settings) -> list[dict[str, Any]]:
    """`nexus oauth status` rows from the database (what every instance shares)."""
    now = time.time()
    with database(settings) as conn:
        rows = [r for r in all_rows(conn, box_of(settings)) if r.type == "oauth"]
    out = []
    for row in rows:
        expires = row.expires_at_ms / 1000 if row.expires_at_ms is not None else None
        current = row.refresh_fingerprint == fingerprint(row.refresh_token)
        expired = expires is not None and expires <= now
        if (row.needs_login and current and row.refresh_token) or (expired and not row.refresh_token):
            state = "needs login"
        elif expired:
            state = "expired"
        elif expires is not None and expires - now < oauth_status.EXPIRING_S:
            state = "expiring"
        else:
            state = "valid"
        out.append(
            {
                "account": row.label,
                "account_id": row.account_id,
                "file": row.source or "(database)",
                "state": state,
                "expires_at": expires,
                "last_refresh_at": row.last_refresh_at,
                "last_login_at": row.last_login_at,
                "last_error": row.last_error if current else None,
            }
        )
    return out


def _status_row(store: CredentialStore, cred: Credential) -> dict[str, Any]:
    health = oauth_status.health(cred)
    return {
        "account": ("accounts/" if cred.is_account else "") + cred.name,
        "account_id": cred.account_id,
        "file": str(cred.path),
        "state": health.state,
        "expires_at": _seconds(health.expires_at_ms),
        "last_refresh_at": health.last_refresh_at,
        "last_login_at": health.last_login_at,
        "last_error": health.last_error,
    }


@oauth.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def oauth_status_command(as_json: bool) -> None:
    """Per OAuth credential: expiry, last refresh, state (valid, expiring, expired, needs login), last error."""
    settings = _settings()
    store = CredentialStore(settings.credentials_dir)
    if settings.credentials_database:
        problems: list[CredentialError] = []
        rows = _db_status_rows(settings)
    else:
        creds, problems = store.all()
        rows = [_status_row(store, c) for c in creds if c.kind == "oauth"]
    if as_json:
        invalid = [{"state": "invalid", "last_error": str(p)} for p in problems]
        click.echo(orjson.dumps(rows + invalid, option=orjson.OPT_INDENT_2).decode())
        return
    for problem in problems:
        click.echo(f"invalid credential file: {problem}", err=True)
    if not rows:
        where = "the database" if settings.credentials_database else store.directory
        click.echo(f"no OAuth credentials in {where}", err=True)
        return
    shown = [
        {
            **r,
            "expires": _when(r["expires_at"]),
            "last refresh": _when(r["last_refresh_at"]),
            "last error": r["last_error"] or "-",
        }
        for r in rows
    ]
    _table(shown, ["account", "state", "expires", "last refresh", "last error", "file"])
