"""When and how long to wait before trying the upstream again.

Only failures before any byte reached the client are retried: connection errors, 5xx and 529. A 429 is
not retried here: it is the account's limit, and the client's SDK already honours `retry-after` itself,
so retrying here would double the wait and hide the signal. The delay is exponential with up to 50%
jitter (so many clients failing together do not return together), never shorter than the upstream's
`retry-after`, and bounded in attempts and total elapsed time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


@dataclass(frozen=True, slots=True)  # pragma: no mutate (slots save memory; frozen is tested)
class RetryPolicy:
    max_attempts: int
    base_delay_s: float
    max_delay_s: float
    budget_s: float

    def backoff(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Delay before attempt number `attempt + 1` (attempt counts from 1)."""
        delay = min(self.base_delay_s * (2 ** (attempt - 1)), self.max_delay_s)
        delay += delay * random.random() * 0.5
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        return delay

    def next_delay(self, attempt: int, elapsed_s: float, retry_after_s: float | None = None) -> float | None:
        """The wait before another attempt, or None when the attempts or the time budget are spent."""
        if attempt >= self.max_attempts:
            return None
        if retry_after_s is not None and retry_after_s > self.max_delay_s:
            return None  # the upstream asks for a longer pause than we may hold the client
        delay = self.backoff(attempt, retry_after_s)
        if elapsed_s + delay > self.budget_s:
            return None
        return delay


def is_retryable_status(status: int) -> bool:
    return status >= 500  # includes 529 overloaded


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a `retry-after` header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
