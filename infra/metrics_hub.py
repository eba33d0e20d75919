"""The hub's series read on demand: lookup legs still waiting for a bank's answer.

A lookup (相続時・災害時照会) fans out to the banks; each bank's part is a *leg*,
open until the bank answers or the lookup's deadline seals the result.  At each
scrape the hub counts the open legs per bank and the age of the oldest, from its
own tables (``hub_lookups``, ``hub_lookup_banks``).  Labels are participant ids
of banks (a closed set: the platform's participants); no subject, no correlation
id, nothing of the person.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from infra.metrics import Gauge, WorkerMetrics

OPEN_LEGS = """
SELECT b.bank_id, count(*) AS legs, extract(epoch FROM now() - min(l.created_at)) AS oldest_s
FROM hub_lookup_banks b JOIN hub_lookups l ON l.correlation_id = b.correlation_id
WHERE b.answered_at IS NULL AND NOT l.result_emitted
GROUP BY b.bank_id
"""


class LookupLegGauges:
    """``renkei_lookup_legs_outstanding{bank}`` and ``renkei_lookup_leg_oldest_seconds{bank}``."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        bank = {"bank": metrics.participants}
        self.outstanding = metrics.register(Gauge(
            "renkei_lookup_legs_outstanding", "Hub: lookup legs sent to a bank and not answered yet, by bank",
            labels=bank))
        self.oldest = metrics.register(Gauge(
            "renkei_lookup_leg_oldest_seconds", "Hub: age of the oldest unanswered lookup leg, by bank", labels=bank))

    def update(self, rows: list[Any]) -> None:
        """Replace the figures with ``rows`` (bank_id, legs, oldest_s): a bank that answered everything drops out."""
        self.outstanding.clear()
        self.oldest.clear()
        for row in rows:
            self.outstanding.set(row["legs"], bank=row["bank_id"])
            self.oldest.set(float(row["oldest_s"] or 0.0), bank=row["bank_id"])

    def collector(self, pool: Callable[[], Any]) -> Callable[[], Awaitable[None]]:
        """A ``MetricsServer`` ``collect`` hook reading the hub's pool (``pool()`` None: not started yet)."""

        async def collect() -> None:
            current = pool()
            if current is None:
                return
            async with current.acquire() as conn:
                self.update(await conn.fetch(OPEN_LEGS))

        return collect
