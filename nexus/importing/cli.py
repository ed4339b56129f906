"""`nexus import-reference --from postgresql://...`: the command and its summary."""

from __future__ import annotations

import sys
from typing import Any

import click

#: Failed rows named one by one in the summary (the rest are counted).
SHOWN_FAILURES = 20


@click.command("import-reference")
@click.option(
    "--from",
    "source_url",
    required=True,
    metavar="POSTGRESQL_URL",
    help="The reference system's database (read only), e.g. postgresql://user:pass@host:5432/claude_nexus.",
)
@click.option("--embedded", is_flag=True, help="Import into the embedded database under NEXUS_HOME, not DATABASE_URL.")
@click.option(
    "--batch-size", type=click.IntRange(1, 10_000), default=100, show_default=True, help="Requests per batch."
)
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many requests (the next run resumes there).")
@click.option(
    "--restart", is_flag=True, help="Forget the checkpoint and read everything again (rows already here are skipped)."
)
@click.option(
    "--no-relink", is_flag=True, help="Do not run `nexus relink` afterwards (the next import or relink does)."
)
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines on stderr.")
def import_reference_command(
    source_url: str,
    embedded: bool,
    batch_size: int,
    limit: int | None,
    restart: bool,
    no_relink: bool,
    no_progress: bool,
) -> None:
    """Bring over the stored history of the system Nexus replaces (docs/migrating.md).

    Reads api_requests (with streaming_chunks where a response is missing), projects and
    conversation_analyses from the reference database and writes them into Nexus's database
    (DATABASE_URL, or the embedded one when it is unset or with --embedded): bodies content-addressed,
    usage read as the proxy reads it, the reference's request and conversation ids kept. Idempotent
    (a second run adds nothing) and resumable (a checkpoint per batch: an interrupted run continues
    where it stopped). A bad row is counted failed and named, never the end of the import. Credentials,
    client keys, project keys and Slack webhooks are never copied: the summary says what was left.
    Then runs `nexus relink` from the earliest imported row, so the history is threaded by Nexus's rules.

    Exit status: 0 when every request was imported or skipped, 2 when some failed (named in the
    summary), 1 when the import could not run.
    """
    from nexus.cli_support import settings_or_exit
    from nexus.importing.run import ImportBusyError, import_reference
    from nexus.importing.source import NotReferenceError
    from nexus.storage.embedded import database_url_or_embedded

    settings = settings_or_exit()
    say = lambda line: click.echo(line, err=True)  # noqa: E731
    try:
        with database_url_or_embedded(None if embedded else settings.database_url, settings.nexus_home, say) as url:
            report = import_reference(
                source_url,
                url,
                batch_size=batch_size,
                limit=limit,
                restart=restart,
                relink=not no_relink,
                progress=not no_progress,
            )
    except NotReferenceError as exc:
        raise click.ClickException(f"{_safe(source_url)} is not a reference database: {exc}") from None
    except ImportBusyError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # connection refused, authentication failed...: one line, no URL with its password
        reason = " ".join(str(exc).split())[:500] or exc.__class__.__name__
        raise click.ClickException(f"import stopped ({exc.__class__.__name__}): {reason}") from None
    for line in summary(report):
        click.echo(line)
    if report.failed:
        sys.exit(2)


def _safe(url: str) -> str:
    from nexus.importing.source import source_name

    return source_name(url)


def summary(report: Any) -> list[str]:
    """The lines printed at the end (no secret: counts, ids and account names only)."""
    lines = [f"reference database: {report.source}"]
    if report.resumed_after is not None:
        at, key = report.resumed_after
        lines.append(f"resumed after {at.isoformat()} {key}")
    failed = len(report.failed)
    lines.append(
        f"requests: {report.read} read, {report.imported} imported, {report.skipped} skipped (already here), "
        f"{failed} failed" + ("" if report.complete else " (stopped by --limit: run again to continue)")
    )
    for request_id, reason in report.failed[:SHOWN_FAILURES]:
        lines.append(f"  failed {request_id}: {reason}")
    if failed > SHOWN_FAILURES:
        lines.append(f"  ... and {failed - SHOWN_FAILURES} more")
    if report.chunks:
        lines.append(f"streaming_chunks: {report.chunks} chunks (used where a response body was missing)")
    for name, counts in (("projects", report.projects), ("conversation_analyses", report.analyses)):
        lines.append(
            f"{name}: {counts.read} read, {counts.imported} imported, {counts.skipped} skipped, "
            f"{len(counts.failed)} failed"
        )
        lines += [f"  failed {label}: {reason}" for label, reason in counts.failed[:SHOWN_FAILURES]]
    if report.analyses_shown:
        lines.append(f"  {report.analyses_shown} finished analyses added to Nexus's own (shown on their conversations)")
    if report.analyses_pending:
        lines.append(
            f"  {report.analyses_pending} analyses never finished in the reference: not queued again "
            "(request them from the dashboard)"
        )
    left = report.secrets
    if left.credential_accounts:
        lines.append(
            f"credentials: {len(left.credential_accounts)} not imported (their tokens would be stored in clear): "
            + ", ".join(left.credential_accounts[:SHOWN_FAILURES])
            + ". Put each account in CREDENTIALS_DIR/accounts/<account>.credentials.json or log in again "
            "with `nexus oauth login` (docs/credentials.md)."
        )
    if left.client_keys:
        lines.append(
            f"project_api_keys: {left.client_keys} client keys not imported (stored in clear there); "
            "issue new ones with `nexus keys create`"
        )
    if left.project_keys or left.slack_webhooks:
        lines.append(
            f"projects: {left.project_keys} project keys and {left.slack_webhooks} Slack webhook URLs not copied "
            "(secrets); set SLACK_WEBHOOK_URL again where needed"
        )
    if report.relink is not None:
        r = report.relink
        lines.append(
            f"relink from {report.relink_from.isoformat()}: {r.rows} rows read, changed the conversation of "
            f"{r.changed}; conversations {r.conversations_before} -> {r.conversations_after}"
        )
    elif report.relink_from is not None:
        lines.append(f"relink pending from {report.relink_from.isoformat()}: run `nexus relink` or import again")
    return lines
