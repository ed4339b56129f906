"""The SQL that prices requests: one cost expression, applied when a row is written.

Each request's cost is computed once, when the writer inserts it (`PRICE_JOIN` + `COST` in the insert
from staging, nexus/storage/payload.py), at the price in effect when it was served, and stored in
`api_requests.cost_usd`; rows whose model had no price then stay NULL and are priced again at each
start (`REPRICE_UNPRICED`), so a price added later reaches them. Every cost Nexus shows is that
column or a sum of it: a conversation, a day and an account are priced alike, and a usage query
costs no more than its token sums.

The rule (docs/pricing.md): NULL counts are 0; cache writes are split into 5-minute and 1-hour writes
by `usage.cache_creation` when the reply gave it, and any rest is priced at the 5-minute rate (every
write was one before 1-hour caching); long-context rates replace every rate of a request whose whole
input is above the model's threshold; a request that used no tokens cost 0 whatever its model.
"""

from __future__ import annotations

from typing import Any

from nexus.usage.counts import CACHE_WRITE_1H_SQL, CACHE_WRITE_5M_SQL

# numeric, never bigint: a hostile upstream's counts are clamped at bigint's maximum, and a sum of two
# of them must not make PostgreSQL refuse the row it prices
_I = "coalesce(input_tokens, 0)::numeric"
_O = "coalesce(output_tokens, 0)::numeric"
_R = "coalesce(cache_read_input_tokens, 0)::numeric"
_W5 = f"coalesce({CACHE_WRITE_5M_SQL}, 0)"
_W1 = f"coalesce({CACHE_WRITE_1H_SQL}, 0)"
#: All cache writes: the stored total, or the split's sum when an upstream's total was smaller.
_W = f"greatest(coalesce(cache_creation_input_tokens, 0)::numeric, {_W5} + {_W1})"


def _priced(prefix: str) -> str:
    # the writes the split does not call 1-hour writes are priced at the 5-minute rate
    return (
        f"({_I} * p_{prefix}input + {_O} * p_{prefix}output + {_R} * p_{prefix}cache_read "
        f"+ ({_W} - {_W1}) * p_{prefix}cache_write_5m + {_W1} * p_{prefix}cache_write_1h) / 1000000"
    )


#: A request's cost in USD (`numeric`) over a row of api_requests' columns joined by `PRICE_JOIN`;
#: NULL when its model had no price when it was served.
COST = (
    f"CASE WHEN {_I} + {_O} + {_R} + {_W} = 0 THEN 0 "
    "WHEN p_input IS NULL THEN NULL "
    f"WHEN p_lc_above IS NOT NULL AND {_I} + {_R} + {_W} > p_lc_above THEN {_priced('lc_')} "
    f"ELSE {_priced('')} END"
)


def price_join(alias: str) -> str:
    """The price in effect for each row of `alias` (a table or staging alias with api_requests'
    columns); its columns are prefixed `price_` / `p_`, so none clashes with a request's."""
    return (
        f"LEFT JOIN model_price_periods ON price_model = nexus_model_key({alias}.model) "
        f'AND {alias}."timestamp" >= price_from AND {alias}."timestamp" < price_to'
    )


#: Price the newest `%(limit)s` rows that have no cost yet (stored before pricing existed, or of a
#: model that had no price), newest first through the partial index of unpriced rows: run after each
#: price sync, bounded so a first start over a long history is not held up (`nexus pricing reprice
#: --unpriced` prices the rest). Rows that still have no price stay NULL, unknown.
REPRICE_UNPRICED = (
    "UPDATE api_requests AS t SET cost_usd = s.cost FROM ("  # noqa: S608 (constant SQL)
    f'SELECT r.request_id, r."timestamp", {COST} AS cost FROM api_requests AS r {price_join("r")} '
    'WHERE r.cost_usd IS NULL ORDER BY r."timestamp" DESC LIMIT %(limit)s) AS s '
    'WHERE t.request_id = s.request_id AND t."timestamp" = s."timestamp" AND s.cost IS NOT NULL '
    "AND t.cost_usd IS NULL"
)

#: Price again every row served in `[%(start)s, %(end)s)`: `nexus pricing reprice`, after a price of
#: the past was corrected.
REPRICE_RANGE = (
    "UPDATE api_requests AS t SET cost_usd = s.cost FROM ("  # noqa: S608 (constant SQL)
    f'SELECT r.request_id, r."timestamp", {COST} AS cost FROM api_requests AS r {price_join("r")} '
    'WHERE r."timestamp" >= %(start)s AND r."timestamp" < %(end)s) AS s '
    'WHERE t.request_id = s.request_id AND t."timestamp" = s."timestamp" '
    'AND t."timestamp" >= %(start)s AND t."timestamp" < %(end)s AND t.cost_usd IS DISTINCT FROM s.cost'
)

#: Decimal places a summed cost is shown with (a millionth of a dollar: below one token of any model).
PLACES = 6

#: One request's cost as a JSON-friendly float, or NULL (shown as unknown, never as zero).
REQUEST_COST_USD = "cost_usd::float8 AS cost_usd"

#: Aggregates: the priced requests' total, and how many requests had no price (the total is then a
#: lower bound, and the pages say so).
COST_SUMS = (
    f"round(coalesce(sum(cost_usd), 0), {PLACES})::float8 AS cost_usd, "
    "count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_requests"
)


def summed_cost(row: dict[str, Any]) -> float | None:
    """The cost of a row of `COST_SUMS` (with its `requests` count): the priced requests' total, or
    None (unknown, never zero) when every request that used tokens had no price. With only some
    unpriced, the total is a lower bound and `unpriced_requests` says how many are missing."""
    unpriced = int(row["unpriced_requests"])
    if unpriced and unpriced >= int(row["requests"]):
        return None
    return float(row["cost_usd"])
