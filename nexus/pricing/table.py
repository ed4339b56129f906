"""The price table: the shipped `prices.toml` plus the operator's `PRICING_FILE`, checked once.

Prices are absolute USD rates per million tokens with an effective start, never multipliers of the
input rate (newer models do not keep the old ratios), so a request served before a price change keeps
the price it was served at. A bad file fails start-up with one line naming the entry and the field:
a silently wrong price is worse than none.
"""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, date, datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

#: What a model key may look like: the normalised id `nexus_model_key` returns in SQL (lower case,
#: no date suffix, provider prefix or variant tag).
MODEL_KEY = re.compile(r"^[a-z0-9][a-z0-9.\-]{0,99}$")
#: A rate above this is certainly a typo (USD per million tokens).
MAX_RATE = Decimal(100_000)


class PricingError(ValueError):
    """A price file that cannot be used, with the entry and field at fault."""


class LongContext(msgspec.Struct, forbid_unknown_fields=True):
    """Rates that replace every rate of a request whose whole input is above `above` tokens."""

    above: int
    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal


class Entry(msgspec.Struct, forbid_unknown_fields=True):
    """One `[[price]]` of a price file."""

    models: list[str]
    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    #: a date or a UTC timestamp, quoted or as a TOML date (checked by `_start`)
    from_: Any = msgspec.field(name="from")
    long_context: LongContext | None = None
    note: str | None = None


class Price(msgspec.Struct, frozen=True):
    """The rates of one model key from `effective_from` on, as stored in `model_prices`."""

    model: str
    effective_from: datetime
    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    long_context: LongContext | None
    note: str | None
    source: str


class _File(msgspec.Struct, forbid_unknown_fields=True):
    price: list[Entry] = []


def _rates(entry: Entry | LongContext) -> list[tuple[str, Decimal]]:
    return [
        ("input", entry.input),
        ("output", entry.output),
        ("cache_read", entry.cache_read),
        ("cache_write_5m", entry.cache_write_5m),
        ("cache_write_1h", entry.cache_write_1h),
    ]


def _start(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value) if "T" in value else date.fromisoformat(value)
        except ValueError:
            raise PricingError(f"`from` = {value!r} is not a date (2026-09-01) or a timestamp") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise PricingError("`from` has no time zone: write it in UTC with a trailing Z")
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise PricingError(f"`from` = {value!r} is not a date (2026-09-01) or a timestamp")


def _check(entry: Entry, where: str) -> None:
    if not entry.models:
        raise PricingError(f"{where}: `models` is empty")
    for model in entry.models:
        if not MODEL_KEY.match(model):
            raise PricingError(
                f"{where}: model {model!r} is not a model key (lower case letters, digits, '.' and '-'; "
                "no date suffix or provider prefix)"
            )
    groups: list[tuple[str, Entry | LongContext]] = [("", entry)]
    if entry.long_context is not None:
        groups.append(("long_context.", entry.long_context))
        if entry.long_context.above < 1:
            raise PricingError(f"{where}: long_context.above must be a positive token count")
    for prefix, group in groups:
        for name, rate in _rates(group):
            if not rate.is_finite() or rate < 0 or rate > MAX_RATE:
                raise PricingError(f"{where}: {prefix}{name} = {rate} is not a rate in USD per million tokens")


def parse(text: str, source: str) -> list[Price]:
    """The prices of one file's text; `source` names it in errors and in `model_prices.source`."""
    try:
        data = tomllib.loads(text, parse_float=Decimal)  # exact: 0.3 stays 0.3
    except tomllib.TOMLDecodeError as exc:
        raise PricingError(f"{source}: not TOML: {exc}") from None
    try:
        entries = msgspec.convert(data, _File, strict=False).price
    except msgspec.ValidationError as exc:
        raise PricingError(f"{source}: {exc}") from None
    prices: list[Price] = []
    seen: set[tuple[str, datetime]] = set()
    for index, entry in enumerate(entries, 1):
        where = f"{source}: price #{index}"
        _check(entry, where)
        try:
            start = _start(entry.from_)
        except PricingError as exc:
            raise PricingError(f"{where}: {exc}") from None
        for model in entry.models:
            if (model, start) in seen:
                raise PricingError(f"{where}: {model} from {start.isoformat()} is listed twice")
            seen.add((model, start))
            prices.append(
                Price(
                    model=model,
                    effective_from=start,
                    input=entry.input,
                    output=entry.output,
                    cache_read=entry.cache_read,
                    cache_write_5m=entry.cache_write_5m,
                    cache_write_1h=entry.cache_write_1h,
                    long_context=entry.long_context,
                    note=entry.note,
                    source=source,
                )
            )
    return prices


def shipped() -> list[Price]:
    """The prices that ship with this version of Nexus."""
    text = resources.files("nexus.pricing").joinpath("prices.toml").read_text(encoding="utf-8")
    return parse(text, "shipped")


def load(override: Path | None) -> list[Price]:
    """The shipped prices with the operator's file laid over them: an operator entry for a model key
    and start replaces the shipped one; every other entry of either is kept."""
    prices = {(p.model, p.effective_from): p for p in shipped()}
    if override is not None:
        try:
            text = override.expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise PricingError(f"PRICING_FILE {override}: {exc.strerror or exc}") from None
        for price in parse(text, str(override)):
            prices[(price.model, price.effective_from)] = price
    return sorted(prices.values(), key=lambda p: (p.model, p.effective_from))
