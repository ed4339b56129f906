"""The cost rule in memory, for what must be priced before its row is stored (a Slack message).

The database prices every stored request (`nexus/pricing/sql.py`); this is the same rule over the same
table for a request still in flight, and `tests/test_pricing.py` checks on generated requests that
both give the same cost (to PostgreSQL's 16 significant digits of a division), so the two cannot drift
apart unnoticed.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal, localcontext

from nexus.pricing.table import Price

_PROVIDER = re.compile(r"^([a-z]{2,4}\.)?anthropic\.")
_TAG = re.compile(r"\[[^]]*\]$")
_VERTEX = re.compile(r"@[^@]*$")
_BEDROCK = re.compile(r"-v[0-9]+(:[0-9]+)?$")
_DATE = re.compile(r"-([0-9]{8}|latest)$")
MILLION = Decimal(1_000_000)


def model_key(model: str) -> str:
    """The price key of a model id: `nexus_model_key` of migration 0010, step for step."""
    key = _PROVIDER.sub("", model.lower(), count=1)
    for pattern in (_TAG, _VERTEX, _BEDROCK, _DATE):
        key = pattern.sub("", key, count=1)
    return key


class PriceBook:
    """The prices in effect, by model key and start."""

    def __init__(self, prices: Sequence[Price]) -> None:
        self._starts: dict[str, list[datetime]] = {}
        self._prices: dict[str, list[Price]] = {}
        for p in sorted(prices, key=lambda p: (p.model, p.effective_from)):
            self._starts.setdefault(p.model, []).append(p.effective_from)
            self._prices.setdefault(p.model, []).append(p)

    def price(self, model: str | None, at: datetime) -> Price | None:
        if model is None:
            return None
        key = model_key(model)
        starts = self._starts.get(key)
        if not starts:
            return None
        i = bisect.bisect_right(starts, at) - 1
        return self._prices[key][i] if i >= 0 else None

    def cost(
        self,
        model: str | None,
        at: datetime,
        input_tokens: int | None,
        output_tokens: int | None,
        cache_read: int | None,
        cache_write: int | None,
        cache_write_5m: int | None = None,
        cache_write_1h: int | None = None,
    ) -> Decimal | None:
        """USD, or None when the model has no price at `at`; 0 when no token was used."""
        i, o, r = input_tokens or 0, output_tokens or 0, cache_read or 0
        w5, w1 = cache_write_5m or 0, cache_write_1h or 0
        w = max(cache_write or 0, w5 + w1)
        if i + o + r + w == 0:
            return Decimal(0)
        p = self.price(model, at)
        if p is None:
            return None
        lc = p.long_context
        if lc is not None and i + r + w > lc.above:
            rates = (lc.input, lc.output, lc.cache_read, lc.cache_write_5m, lc.cache_write_1h)
        else:
            rates = (p.input, p.output, p.cache_read, p.cache_write_5m, p.cache_write_1h)
        with localcontext() as ctx:
            ctx.prec = 60  # counts near 2**63 times a rate: no rounding before the division
            return (i * rates[0] + o * rates[1] + r * rates[2] + (w - w1) * rates[3] + w1 * rates[4]) / MILLION
