"""The `nexus` command line.

Command-line options are written into the environment before anything starts, so the settings object
stays the single source of truth and worker processes spawned by Granian see the same values.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

import click
import orjson

from nexus import __version__
from nexus.cli_support import settings_or_exit
from nexus.settings import get_settings, settings_markdown


def _apply_env(**values: Any) -> None:
    for name, value in values.items():
        if value is not None:
            os.environ[name.upper()] = str(value)
    get_settings.cache_clear()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nexus")
def main() -> None:
    """Nexus: a gateway in front of the Anthropic Messages API."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--markdown", is_flag=True, help="Print the documented settings table (defaults, meanings).")
def config(as_json: bool, markdown: bool) -> None:
    """Print the effective settings, secrets masked."""
    if markdown:
        from nexus.compat.reference_env import reference_markdown

        click.echo(settings_markdown() + "\n" + reference_markdown(), nl=False)
        return
    _warn_environment(settings_or_exit(), "nexus", once=False)
    values = settings_or_exit().masked()
    if as_json:
        click.echo(orjson.dumps(values, option=orjson.OPT_INDENT_2).decode())
        return
    width = max(len(k) for k in values)
    for key, value in values.items():
        click.echo(f"{key.ljust(width)}  {'(unset)' if value is None else value}")


def _warn_environment(settings: Any, service: str, *, once: bool = True) -> None:
    """One warning per variable set that Nexus does not use as its owner expects (a reference-system
    variable it does not support, a misspelt setting); `nexus serve`'s children do not repeat them."""
    from nexus.compat.environment import environment_warnings, warn_once
    from nexus.observability.logs import emit

    for line in warn_once() if once else environment_warnings(os.environ):
        emit(f"warning: {line}", settings.log_format, service, "warning")


def _prepare_storage(settings: Any) -> None:
    """Apply pending migrations before workers start; an unreachable database must not stop the proxy."""
    if not settings.storage_enabled or settings.database_url is None:
        return
    from nexus.observability.logs import emit
    from nexus.storage.migrate import migrate

    try:
        applied = migrate(settings.database_url, settings.pricing_file)
    except Exception as exc:
        reason = " ".join(f"{exc.__class__.__name__}: {exc}".split())  # one line, whatever libpq said
        emit(f"warning: migrations not applied ({reason}); rows will be spooled", settings.log_format, "nexus-proxy")
        return
    if applied:
        emit(f"applied migrations: {', '.join(applied)}", settings.log_format, "nexus-proxy")


def _import_credentials(settings: Any) -> list[str] | None:
    """Import CREDENTIALS_DIR into the database before workers start (docs/credentials.md); a database
    that cannot be reached leaves the workers on this machine's files until it can. Returns the OAuth
    credentials the database holds (None without one), for the policy notice."""
    if not settings.credentials_database:
        return None
    from nexus.auth.db_files import import_at_start
    from nexus.auth.sealing import load_box
    from nexus.observability.logs import emit

    try:
        box = load_box(settings.nexus_secret_key, settings.nexus_home)
        lines, stored_oauth = import_at_start(settings.credentials_database, box, settings.credentials_dir)
    except Exception as exc:
        reason = " ".join(f"{exc.__class__.__name__}: {exc}".split())
        emit(f"warning: credentials not imported into the database ({reason})", settings.log_format, "nexus-proxy")
        return None
    if settings.api_key_salt:
        from nexus.auth.db_client_keys import DbClientKeyStore
        from nexus.auth.service import client_key_store

        store = client_key_store(settings)
        try:
            if isinstance(store, DbClientKeyStore) and (new := store.import_files()):
                lines.append(f"client keys: {new} imported from {store.directory}")
        except Exception as exc:
            reason = " ".join(f"{exc.__class__.__name__}: {exc}".split())
            lines.append(f"warning: client keys not imported into the database ({reason})")
        finally:
            if isinstance(store, DbClientKeyStore):
                store.close()
    if not settings.nexus_secret_key and str(settings.nexus_home) not in settings.credentials_database:
        lines.append(
            f"warning: NEXUS_SECRET_KEY is unset: credentials in the database are sealed with "
            f"{settings.nexus_home / 'secret.key'}; every instance sharing DATABASE_URL needs the same key, so set "
            "NEXUS_SECRET_KEY on each (`nexus credentials new-key`; docs/scaling.md)"
        )
    for line in lines:
        emit(line, settings.log_format, "nexus-proxy")
    return stored_oauth


def _run_proxy() -> None:
    settings = settings_or_exit()
    _warn_environment(settings, "nexus-proxy")
    _startup_checks(settings)
    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels

    from nexus.allocator import tune_allocator
    from nexus.auth.service import startup_lines
    from nexus.observability import logs, metrics
    from nexus.ports import raise_open_files_limit
    from nexus.proxy.drain import worker_kill_timeout_s

    files = raise_open_files_limit()
    tune_allocator()  # before Granian forks the workers, which inherit it
    backpressure = min(settings.proxy_backpressure, max(64, files // max(1, settings.proxy_workers) - 256))
    _prepare_storage(settings)
    stored_oauth = _import_credentials(settings)
    for line in startup_lines(settings, stored_oauth):
        logs.emit(line, settings.log_format, "nexus-proxy", "warning")
    metrics_dir, owned = metrics.prepare_multiprocess_dir(settings.prometheus_multiproc_dir)
    server = Granian(
        "nexus.proxy.app:create_app",
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.RSGI,
        loop=Loops.uvloop,
        workers=settings.proxy_workers,
        runtime_threads=settings.proxy_threads,
        log_level=LogLevels.debug if settings.debug else LogLevels.warning,
        log_dictconfig=logs.granian_config(settings.log_format),
        workers_kill_timeout=worker_kill_timeout_s(settings),
        backlog=2048,
        backpressure=backpressure,
        websockets=False,
    )
    logs.emit(
        f"nexus proxy {__version__} on http://{settings.host}:{settings.port} -> {settings.claude_api_base_url}",
        settings.log_format,
        "nexus-proxy",
    )
    _tune_gc()
    try:
        server.serve()
    finally:
        if owned:
            metrics.remove_multiprocess_dir(metrics_dir)


def _startup_checks(settings: Any) -> None:
    from nexus.startup import StartupError, check_port, check_proxy

    try:
        check_port(settings.host, settings.port, "PORT or --port")
        check_proxy(settings)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None


def _check_port(host: str, port: int, setting: str) -> None:
    from nexus.startup import StartupError, check_port

    try:
        check_port(host, port, setting)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None


def dashboard_url(settings: Any) -> str:
    """The address to open: a wildcard bind is reached as localhost (`http://0.0.0.0:3001` answers 403)."""
    from nexus.dashboard.urls import shown_url

    return shown_url(settings.dashboard_bind, settings.dashboard_port)


def _tune_gc() -> None:
    """Fewer, cheaper garbage collections in the workers (forked from here, so they inherit this).

    Every request allocates thousands of short-lived objects, so with the default thresholds (700, 10,
    10) a worker ran ~50 young collections a second and, every few seconds, a full one over everything
    alive, the conversation index included: 8% of the request path's time and pauses of ~45 ms that
    landed in the p99 (bench/micro/request_path.py, 20,000 requests). Freezing what start-up created
    keeps it out of every scan, and a larger young generation makes collections rarer (2.6% of the
    time, worst pause ~10 ms, same run). Nothing is kept longer than one young generation's worth.
    """
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)
    _tune_switch_interval()


#: How long a thread that wants the GIL waits before the holder is asked to let go (CPython: 5 ms).
SWITCH_INTERVAL_S = 0.001


def _tune_switch_interval() -> None:
    """Hand the GIL over after 1 ms instead of 5 (in the workers, forked from here).

    A worker's storage writer and overflow thread call into libpq and the Rust encoder with the GIL
    released, and need it back after each call; with the event loop busy serving requests each of
    those waits lasted up to the 5 ms default, so a batch's transaction took ~3x longer beside a busy
    thread than alone (110 vs 34 ms for 200 rows, measured with `send` into PostgreSQL), the write
    queue backed up and rows went through the spool. Measured 2026-12-06 (two `nexus proxy`
    instances, one with each value, wrk c=32 of the varied Claude Code corpus, 3-4 alternated rounds,
    twice): 8% less CPU per request (966 -> 875 us, 903 -> 833 us) and 9-11% more requests/s. At c=1
    (two runs, 4-5 rounds) the latency stayed within the rounds' spread either way (p50 2.17 -> 1.92 ms
    in one, 1.38 -> 1.48 ms in the other), and the CPU per request was ~10% higher in the second (an idle
    worker switches more often): the saturated case is the one the setting is for."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def _proxy_options(fn: Any) -> Any:
    fn = click.option("--workers", type=int, help="Worker processes (PROXY_WORKERS).")(fn)
    fn = click.option("--threads", type=int, help="Runtime threads per worker (PROXY_THREADS).")(fn)
    fn = click.option("--port", type=int, help="Listen port (PORT).")(fn)
    fn = click.option("--host", help="Listen address (HOST).")(fn)
    return fn


@main.command()
@_proxy_options
def proxy(host: str | None, port: int | None, threads: int | None, workers: int | None) -> None:
    """Run the proxy alone (Granian, RSGI, uvloop)."""
    _apply_env(host=host, port=port, proxy_threads=threads, proxy_workers=workers)
    _run_proxy()


@main.command()
@click.option("--host", help="Listen address (DASHBOARD_HOST).")
@click.option("--port", type=int, help="Listen port (DASHBOARD_PORT).")
@click.option("--embedded", is_flag=True, help="Read the embedded database under NEXUS_HOME (no DATABASE_URL).")
def dashboard(host: str | None, port: int | None, embedded: bool) -> None:
    """Run the dashboard alone (Robyn; reads the database only)."""
    from nexus.compat.environment import CHECKED_MARKER, dashboard_port_warning

    port_warning = None if port is not None or os.environ.get(CHECKED_MARKER) else dashboard_port_warning(os.environ)
    _apply_env(dashboard_host=host, dashboard_port=port)
    settings = settings_or_exit()
    _warn_environment(settings, "nexus-dashboard")
    if port_warning is not None:
        from nexus.observability.logs import emit

        emit(f"warning: {port_warning}", settings.log_format, "nexus-dashboard", "warning")
    _check_port(settings.dashboard_bind, settings.dashboard_port, "DASHBOARD_PORT or --port")
    url, stop_embedded = settings.database_url, None
    if embedded:
        from nexus.storage.embedded import start_embedded

        url, stop_embedded = start_embedded(settings.nexus_home / "postgres")
    if url is None:
        raise click.ClickException("DATABASE_URL is not set (or pass --embedded for the embedded database)")
    from nexus.dashboard.app import run

    click.echo(f"nexus dashboard {__version__} on {dashboard_url(settings)}", err=True)
    try:
        run(settings, url)
    finally:
        if stop_embedded is not None:
            stop_embedded()


@main.command()
@_proxy_options
@click.option("--dashboard-port", type=int, help="Dashboard listen port (DASHBOARD_PORT).")
def serve(
    host: str | None, port: int | None, threads: int | None, workers: int | None, dashboard_port: int | None
) -> None:
    """Run the gateway: the proxy and the dashboard, with an embedded PostgreSQL when DATABASE_URL is unset."""
    _apply_env(host=host, port=port, proxy_threads=threads, proxy_workers=workers, dashboard_port=dashboard_port)
    settings = settings_or_exit()
    _warn_environment(settings, "nexus-serve")
    _startup_checks(settings)
    _check_port(settings.dashboard_bind, settings.dashboard_port, "DASHBOARD_PORT or --dashboard-port")
    if settings.storage_enabled and settings.database_url is None:
        from nexus.startup import StartupError, check_writable

        try:
            check_writable(settings.nexus_home, "NEXUS_HOME", "the embedded PostgreSQL's data and the spool")
        except StartupError as exc:
            raise click.ClickException(str(exc)) from None
    from nexus.supervise import serve_all

    sys.exit(serve_all(settings))


@main.command("migrate")
@click.option("--embedded", is_flag=True, help="Migrate the embedded database under NEXUS_HOME instead.")
@click.option(
    "--wait-seconds",
    type=click.FloatRange(min=0),
    default=0,
    help="Wait this long for the database to accept connections first (a job started beside its database).",
)
def migrate_command(embedded: bool, wait_seconds: float) -> None:
    """Apply pending SQL migrations to DATABASE_URL (idempotent, safe to run concurrently)."""
    from nexus.storage.migrate import migrate, wait_for_database

    settings = settings_or_exit()
    url = settings.database_url
    stop_embedded = None
    if embedded:
        from nexus.storage.embedded import start_embedded

        url, stop_embedded = start_embedded(settings.nexus_home / "postgres")
    if url is None:
        raise click.ClickException("DATABASE_URL is not set (or pass --embedded for the embedded database)")
    try:
        if wait_seconds:
            try:
                wait_for_database(url, wait_seconds)
            except Exception as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
                raise click.ClickException(f"database not reachable after {wait_seconds:g} s: {reason}") from None
        applied = migrate(url, settings.pricing_file)
    finally:
        if stop_embedded is not None:
            stop_embedded()
    click.echo("applied: " + ", ".join(applied) if applied else "database is up to date")


@main.command("fake-upstream")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8123, show_default=True, type=int)
@click.option("--event-delay-ms", default=0, show_default=True, type=float, help="Pacing between SSE events.")
@click.option("--record-dir", help="Record every request (and its response) as one JSON file in this directory.")
def fake_upstream(host: str, port: int, event_delay_ms: float, record_dir: str | None) -> None:
    """Run the faithful fake Anthropic API (for tests, benchmarks and offline trials)."""
    from nexus.fake_upstream.server import serve as serve_fake
    from nexus.ports import PortInUseError

    try:
        serve_fake(host=host, port=port, event_delay_ms=event_delay_ms, record_dir=record_dir)
    except PortInUseError as exc:
        raise click.ClickException(str(exc)) from None


def _add_domain_commands() -> None:
    from nexus.analysis.cli import worker_command
    from nexus.auth.cli import keys, oauth
    from nexus.auth.db_cli import credentials
    from nexus.conversations.cli import relink_command, replay_command
    from nexus.demo_data_cli import demo_data_command
    from nexus.importing.cli import import_reference_command
    from nexus.pricing.cli import pricing
    from nexus.storage.cli import storage

    main.add_command(replay_command)
    main.add_command(relink_command)
    main.add_command(keys)
    main.add_command(oauth)
    main.add_command(credentials)
    main.add_command(storage)
    main.add_command(import_reference_command)
    main.add_command(pricing)
    main.add_command(worker_command)
    main.add_command(demo_data_command)


_add_domain_commands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
