"""`nexus demo-data`: fill a database with realistic Claude Code traffic (see `nexus.demo_data`)."""

from __future__ import annotations

import click


@click.command("demo-data")
@click.option("--requests", "requests", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="How many requests to store.")  # fmt: skip
@click.option("--days", type=click.IntRange(min=1), default=30, show_default=True,
              help="Spread the sessions over this many days before today (UTC).")  # fmt: skip
@click.option("--seed", type=int, default=1, show_default=True,
              help="Same seed, same day: the same rows (a second run stores nothing new).")  # fmt: skip
@click.option("--batch-rows", type=click.IntRange(min=1, max=10_000), default=500, show_default=True,
              help="Rows per COPY batch.")  # fmt: skip
@click.option("--embedded", is_flag=True, help="Fill the embedded database under NEXUS_HOME, not DATABASE_URL.")
@click.option("--no-progress", is_flag=True, help="No progress line on stderr.")
def demo_data_command(requests: int, days: int, seed: int, batch_rows: int, embedded: bool, no_progress: bool) -> None:
    """Store N realistic Claude Code requests (sessions, sub-agents, compactions, errors) through the
    proxy's own record building and COPY path, so the dashboard and the API can be tried and
    benchmarked on a full database. Migrates the database first."""
    from nexus.cli_support import settings_or_exit
    from nexus.demo_data import fill, print_progress
    from nexus.storage.embedded import database_url_or_embedded
    from nexus.storage.migrate import migrate

    settings = settings_or_exit()
    say = lambda line: click.echo(line, err=True)  # noqa: E731
    try:
        with database_url_or_embedded(None if embedded else settings.database_url, settings.nexus_home, say) as url:
            migrate(url, settings.pricing_file)
            summary = fill(
                url, requests, seed=seed, days=days, batch_rows=batch_rows,
                progress=None if no_progress else print_progress(requests),
            )  # fmt: skip
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    rate = summary.requests / summary.seconds if summary.seconds > 0 else 0.0
    click.echo(
        f"stored {summary.requests:,} requests ({summary.new:,} new) in {summary.sessions:,} sessions "
        f"({summary.recorded_sessions:,} replayed from recordings), {summary.errors:,} upstream errors, "
        f"{summary.refused:,} refused; {summary.seconds:.1f} s ({rate:,.0f} requests/s)"
    )
