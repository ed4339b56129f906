"""`nexus worker`: the analysis worker on its own (`nexus serve` starts one when AI_WORKER_ENABLED)."""

from __future__ import annotations

import click

from nexus import __version__
from nexus.settings import SettingsError, load_settings


@click.command("worker")
def worker_command() -> None:
    """Run the AI analysis worker: claim queued analyses from DATABASE_URL and store their results."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    if settings.database_url is None:
        raise click.ClickException("DATABASE_URL is not set: the worker reads its queue from the database")
    problem = settings.analysis_problem()
    if problem is not None:
        raise click.ClickException(problem)
    from nexus.analysis.worker import run_worker
    from nexus.observability import logs

    logs.configure(settings.log_format, "nexus-worker", debug=settings.debug)
    click.echo(f"nexus worker {__version__}: AI analysis, provider {settings.ai_analysis_provider}", err=True)
    run_worker(settings, settings.database_url)
