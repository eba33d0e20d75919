"""infra.core.clock.elapsed_ms: a span on the monotonic clock, in milliseconds to a tenth."""

from __future__ import annotations

import time

from infra.core.clock import elapsed_ms


def test_elapsed_ms_measures_a_span_in_milliseconds():
    took = elapsed_ms(time.perf_counter() - 0.25)
    assert 250.0 <= took < 250.0 + 5_000  # a loaded machine may add, never subtract
    assert took == round(took, 1)


def test_elapsed_ms_of_now_is_about_zero():
    assert 0.0 <= elapsed_ms(time.perf_counter()) < 1_000
