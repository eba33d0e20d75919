"""Login failures per client address: how the portal stops anyone locking cards in bulk.

A card locks after three wrong PINs (the My Number card's rule), so whoever
can guess card ids could lock many of them.  :class:`LoginThrottle` counts
each client's failed logins over a sliding window; over the limit, the
client's next logins are refused (``RATE_LIMITED``, HTTP 429 with
``Retry-After``) before any card is touched.  With the defaults one address
can lock at most six cards per quarter of an hour.  Successful logins are not
counted, so people behind one address are not blocked by each other's
successes.  The counts live in the portal process's memory, bounded by
``max_clients`` (the least recently seen are forgotten first).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

FAILURES_PER_CLIENT = 20
WINDOW_S = 15 * 60.0


class LoginThrottle:
    """``retry_after(client)``: None while ``client`` may try; else the seconds until it may again."""

    def __init__(self, max_failures: int = FAILURES_PER_CLIENT, window_s: float = WINDOW_S, *,
                 max_clients: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        if max_failures < 1 or window_s <= 0:
            raise ValueError("a throttle needs at least one failure and a positive window")
        self.max_failures, self.window_s = max_failures, window_s
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str, now: float) -> deque[float]:
        seen = self._failures.get(client)
        if seen is None:
            return deque()
        while seen and seen[0] <= now - self.window_s:
            seen.popleft()
        if not seen:
            del self._failures[client]
        return seen

    def retry_after(self, client: str) -> float | None:
        now = self._clock()
        seen = self._recent(client, now)
        if len(seen) < self.max_failures:
            return None
        return max(0.0, seen[0] + self.window_s - now)

    def failed(self, client: str) -> None:
        """Count one failed login of ``client``."""
        now = self._clock()
        seen = self._recent(client, now)
        if client not in self._failures:
            self._failures[client] = seen
        self._failures.move_to_end(client)
        seen.append(now)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)


__all__ = ["FAILURES_PER_CLIENT", "LoginThrottle", "WINDOW_S"]
