"""Durations a person reads: ``elapsed_ms`` is a span measured on the monotonic clock, never a point in time.

Points in time are epoch milliseconds and carry ``epoch`` or ``at`` in their names (record timestamps,
key validity); the two are easy to confuse when both are called ``*_ms``, hence one helper for spans.
"""

from __future__ import annotations

import time

__all__ = ["elapsed_ms"]


def elapsed_ms(started: float) -> float:
    """Milliseconds since ``started`` (a ``time.perf_counter()`` reading), to a tenth."""
    return round((time.perf_counter() - started) * 1000, 1)
