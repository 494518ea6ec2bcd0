"""Retry policy: exponential backoff with full jitter, honouring `retry-after`.

Only the decision of *how long* lives here; *whether* a failed call may be repeated depends on
the call (see `api.TunnelsAPI`), because a lost answer to a non-idempotent create must be
resolved by looking, never by repeating.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` counts the first try. Tests pass a recording `sleep` and tiny delays."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_retry_after: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    rng: Callable[[], float] = field(default=random.random, compare=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Delay before retry number `attempt` (1-based): full jitter, or the server's wish."""
        backoff = float(self.rng()) * min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        if retry_after is not None:
            return float(min(self.max_retry_after, retry_after) + backoff * 0.1)
        return float(backoff)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds from `retry-after-ms`, `retry-after` (seconds or an HTTP date); None if absent."""
    ms = headers.get("retry-after-ms", "").strip()
    if ms:
        try:
            value = float(ms) / 1000.0
            if value >= 0:
                return value
        except ValueError:
            pass
    raw = headers.get("retry-after", "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
        return seconds if seconds >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
