"""Per-sender token buckets: how the hub keeps one participant from starving the others.

Each verified sender has a bucket of ``burst`` messages that refills at
``rate_per_s``; a message that finds its sender's bucket empty is refused
(``RATE_LIMITED``, dead-lettered with a rejection notice, so the sender can
send it again later).  Only *verified* senders are counted: a forged envelope
cannot spend another participant's budget.  Buckets live in one hub worker's
memory, so with W workers a sender may reach W × ``rate_per_s`` in total —
as the hub's capacity grows with W too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["SenderRateLimiter"]


class SenderRateLimiter:
    """``allow(sender)``: True while ``sender`` is within ``rate_per_s`` (bursts up to ``burst``)."""

    def __init__(self, rate_per_s: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # sender -> (tokens, when last refilled)

    def allow(self, sender: str) -> bool:
        now = self._clock()
        tokens, then = self._buckets.get(sender, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - then) * self.rate_per_s)
        allowed = tokens >= 1.0
        self._buckets[sender] = (tokens - 1.0 if allowed else tokens, now)
        return allowed
