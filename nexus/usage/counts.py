"""What counts as a token count, read from whatever an upstream reply left in `usage`.

Two rules, for two kinds of value:

- The four bigint columns (`input_tokens`, `output_tokens`, `cache_creation_input_tokens`,
  `cache_read_input_tokens`) were already normalised by storage (`stored_count`, used by
  `nexus.storage.records`): a whole number >= 0 (or a float with no fraction, which is how orjson reads
  an integer past 64 bits) clamped at bigint's maximum and flagged `int_clamped`; anything else,
  negative numbers included, stored as NULL and flagged
  `usage_not_integer`. Sums read them as they are, in `numeric`, so adding clamped values is exact
  and never overflows. `column_count` applies the same rule to a reply read in memory, so
  `/token-stats` counts what the database will hold.
- Every other count lives only in the stored `usage` JSON, as upstream sent it (the 5-minute /
  1-hour split of cache writes under `usage.cache_creation`). There `token_count` / `sql_token_count`
  count a value only when it is a JSON number with a whole value in `[0, 2**63 - 1]` (`3.0` counts
  as 3); a fraction, a string, a boolean, null, an object, a negative number or one past bigint is
  not a token count and counts as 0 (the dashboard shows it, marked). A reader never casts text that
  may not be a number, so no stored value can make a query fail.
"""

from __future__ import annotations

import math
from decimal import Decimal

#: The largest count a bigint column holds; also the largest JSON value counted as tokens.
MAX_COUNT = 2**63 - 1


def token_count(value: object) -> int | None:
    """`value` as a token count (a whole number in `[0, MAX_COUNT]`), or None when it is not one.

    The same rule as `sql_token_count`, for values already loaded from JSON (the request page)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            return None
        number = int(value)
    elif isinstance(value, Decimal):
        if not (value.is_finite() and value == value.to_integral_value()):
            return None
        number = int(value)
    else:
        return None
    return number if 0 <= number <= MAX_COUNT else None


def sql_token_count(jsonb: str) -> str:
    """SQL for the `numeric` token count of the jsonb expression `jsonb`, NULL when it is not one.

    Only a JSON number is ever cast (`jsonb -> numeric` cannot fail on one: jsonb holds no NaN or
    infinity). The type test is the outer CASE, not one side of an AND: PostgreSQL may evaluate an
    AND's operands in any order, but a CASE only evaluates the branch it takes, so the cast never
    sees a string or an object. `jsonb` must be a constant expression of this package, never a
    caller's text.
    """
    n = f"({jsonb})::numeric"
    return (
        f"CASE WHEN jsonb_typeof({jsonb}) = 'number' THEN "
        f"CASE WHEN {n} BETWEEN 0 AND {MAX_COUNT} AND {n} = trunc({n}) THEN trunc({n}) END END"
    )


def stored_count(value: object) -> int | None:
    """A reply's count as storage keeps it in its bigint column: a whole number >= 0 (a float with no
    fraction too), which the encoder clamps at bigint's maximum (flagged `int_clamped`); None for
    anything else (a negative number included: a hostile upstream must not pull sums down)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    else:
        return None
    return number if number >= 0 else None


def column_count(value: object) -> int:
    """A count as the bigint column will hold it (`stored_count`, clamped), 0 when none is stored."""
    number = stored_count(value)
    return 0 if number is None else min(number, MAX_COUNT)


#: The 5-minute and 1-hour parts of a request's cache writes, which exist only in the stored `usage`
#: JSON (`usage.cache_creation`), as upstream sent it.
CACHE_WRITE_5M_SQL = sql_token_count("usage -> 'cache_creation' -> 'ephemeral_5m_input_tokens'")
CACHE_WRITE_1H_SQL = sql_token_count("usage -> 'cache_creation' -> 'ephemeral_1h_input_tokens'")
