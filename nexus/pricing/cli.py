"""`nexus pricing`: the price table in effect (shipped prices with PRICING_FILE over them), and
`nexus pricing reprice`: price stored requests again after a price was added or corrected."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click
import orjson

from nexus.pricing.table import Price, PricingError, load


def _as_dict(p: Price) -> dict[str, object]:
    lc = p.long_context
    return {
        "model": p.model,
        "effectiveFrom": p.effective_from.isoformat().replace("+00:00", "Z"),
        "input": str(p.input),
        "output": str(p.output),
        "cacheRead": str(p.cache_read),
        "cacheWrite5m": str(p.cache_write_5m),
        "cacheWrite1h": str(p.cache_write_1h),
        "longContext": None
        if lc is None
        else {
            "above": lc.above,
            "input": str(lc.input),
            "output": str(lc.output),
            "cacheRead": str(lc.cache_read),
            "cacheWrite5m": str(lc.cache_write_5m),
            "cacheWrite1h": str(lc.cache_write_1h),
        },
        "note": p.note,
        "source": p.source,
    }


@click.group("pricing", invoke_without_command=True)
@click.option("--model", "wanted", help="Only this model key (e.g. claude-sonnet-4-5).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (rates as exact decimal strings).")
@click.pass_context
def pricing(ctx: click.Context, wanted: str | None, as_json: bool) -> None:
    """Print the model prices in effect, USD per million tokens, with where each comes from."""
    if ctx.invoked_subcommand is not None:
        return
    from nexus.cli_support import settings_or_exit

    settings = settings_or_exit()
    try:
        prices = load(settings.pricing_file)
    except PricingError as exc:  # pragma: no cover (settings already checked the file)
        raise click.ClickException(str(exc)) from None
    if wanted is not None:
        prices = [p for p in prices if p.model == wanted.lower()]
        if not prices:
            click.echo(f"no price for {wanted!r}: its cost is shown as unknown", err=True)
            sys.exit(1)
    if as_json:
        click.echo(orjson.dumps([_as_dict(p) for p in prices], option=orjson.OPT_INDENT_2).decode())
        return
    head = ("model", "from", "input", "output", "cache read", "write 5m", "write 1h", "long context", "source")
    rows = [head]
    for p in prices:
        lc = p.long_context
        rows.append(
            (
                p.model,
                p.effective_from.date().isoformat(),
                str(p.input),
                str(p.output),
                str(p.cache_read),
                str(p.cache_write_5m),
                str(p.cache_write_1h),
                f">{lc.above}: {lc.input}/{lc.output}" if lc else "",
                p.source,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@pricing.command("reprice")
@click.option("--unpriced", is_flag=True, help="Only requests without a cost (all of them, not just the newest).")
@click.option("--since", type=click.DateTime(), help="Requests served from this time on (UTC); default: all.")
@click.option("--until", type=click.DateTime(), help="Requests served before this time (UTC); default: now.")
def reprice(unpriced: bool, since: datetime | None, until: datetime | None) -> None:
    """Price stored requests again with the table in effect (written to the database first).

    A stored request keeps the cost it was written with: after correcting a price of the past in
    PRICING_FILE, reprice the period it covers. A start prices only the newest unpriced requests.
    """
    import psycopg

    from nexus.cli_support import settings_or_exit
    from nexus.pricing.sql import REPRICE_RANGE
    from nexus.pricing.sync import reprice_unpriced, sync_prices
    from nexus.storage.bulk_lock import BULK_UPDATE_LOCK

    settings = settings_or_exit()
    if settings.database_url is None:
        raise click.ClickException("DATABASE_URL is not set")
    start = (since or datetime(1970, 1, 1)).replace(tzinfo=UTC)
    end = (until or datetime.now(UTC)).replace(tzinfo=UTC)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        sync_prices(conn, load(settings.pricing_file))
        if unpriced:
            count = reprice_unpriced(conn, 2**62)
        else:
            with conn.transaction():
                conn.execute(BULK_UPDATE_LOCK)  # one bulk rewrite at a time (nexus.storage.bulk_lock)
                count = conn.execute(REPRICE_RANGE, {"start": start, "end": end}).rowcount
        left = conn.execute("SELECT count(*) FROM api_requests WHERE cost_usd IS NULL").fetchone()
    click.echo(f"repriced {count} requests; {left[0] if left else 0} have no price (unknown models)")
