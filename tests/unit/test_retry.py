"""infra.core.retry.Backoff: waits grow to a cap, each drawn in [(1 - jitter) * ceiling, ceiling]."""

from __future__ import annotations

from infra.core.retry import Backoff


def test_waits_double_to_the_cap_and_never_overflow():
    backoff = Backoff(base_s=0.2, cap_s=5.0)
    assert [backoff.ceiling(n) for n in (0, 1, 2, 3, 4, 5, 6)] == [0.2, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0]
    assert backoff.ceiling(10_000) == 5.0


def test_jitter_spreads_waits_within_its_share():
    backoff = Backoff(base_s=1.0, cap_s=8.0, jitter=0.25)
    waits = [backoff.delay(4) for _ in range(500)]
    assert all(6.0 <= w <= 8.0 for w in waits)
    assert len(set(waits)) > 100  # drawn, not fixed
    assert Backoff(jitter=0.0).delay(3) == Backoff().ceiling(3)
