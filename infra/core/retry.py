"""Waiting before trying again: exponential backoff with jitter, the one helper every retrying loop uses.

Attempt ``n`` (1 = the first retry) waits at most ``min(base_s * 2**(n-1), cap_s)`` and at least
``1 - jitter`` of that: the random part keeps many workers that failed together (a broker or database
restart) from all coming back in the same instant.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    base_s: float = 0.2
    cap_s: float = 5.0
    jitter: float = 0.5  # the share of each wait drawn at random; 0 = always the ceiling

    def ceiling(self, attempt: int) -> float:
        """The longest wait before attempt ``attempt``."""
        return min(self.base_s * 2.0 ** min(max(attempt - 1, 0), 62), self.cap_s)

    def delay(self, attempt: int, *, rng: Callable[[], float] = random.random) -> float:
        """The wait before attempt ``attempt``: in ``[(1 - jitter) * ceiling, ceiling]``."""
        top = self.ceiling(attempt)
        return top - self.jitter * top * rng()
