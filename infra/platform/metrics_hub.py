"""The hub's series read at each scrape: failed provision-record writes, and lookup legs waiting for a bank.

- ``renkei_provision_write_failures_total``: the hub's claim-and-record transactions that failed
  (database away, timeout) and were retried — fail closed, nothing of the batch is forwarded meanwhile
  (``HubService.write_failures``).
- A lookup (相続時・災害時照会) fans out to the banks; each bank's part is a *leg*, open until the bank
  answers or the lookup's deadline seals the result.  The hub counts the open legs per bank and the age
  of the oldest, from its own tables (``hub_lookups``, ``hub_lookup_banks``).  Labels are participant ids
  of banks (a closed set: the platform's participants); no subject, no correlation id, nothing of the person.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from infra.platform.metrics import Counter, Gauge, WorkerMetrics

OPEN_LEGS = """
SELECT b.bank_id, count(*) AS legs, extract(epoch FROM now() - min(l.created_at)) AS oldest_s
FROM hub_lookup_banks b JOIN hub_lookups l ON l.correlation_id = b.correlation_id
WHERE b.answered_at IS NULL AND NOT l.result_emitted
GROUP BY b.bank_id
"""
QUERY_TIMEOUT_S = 5.0
"""A scrape during a database outage answers (without the lookup figures) instead of hanging."""


class HubFigures:
    """The hub's scrape-time series, registered in its :class:`WorkerMetrics`."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        bank = {"bank": metrics.participants}
        self.write_failures = metrics.register(Counter(
            "renkei_provision_write_failures_total",
            "Hub: provision-record transactions that failed and were retried (nothing forwarded meanwhile)"))
        self.outstanding = metrics.register(Gauge(
            "renkei_lookup_legs_outstanding", "Hub: lookup legs sent to a bank and not answered yet, by bank",
            labels=bank))
        self.oldest = metrics.register(Gauge(
            "renkei_lookup_leg_oldest_seconds", "Hub: age of the oldest unanswered lookup leg, by bank", labels=bank))

    def count_write_failures(self, total: int) -> None:
        """Bring the counter up to the hub's running ``total`` of failed record transactions."""
        missing = total - self.write_failures.value()
        if missing > 0:
            self.write_failures.inc(missing)

    def update_legs(self, rows: list[Any]) -> None:
        """Replace the figures with ``rows`` (bank_id, legs, oldest_s): a bank that answered everything drops out."""
        self.outstanding.clear()
        self.oldest.clear()
        for row in rows:
            self.outstanding.set(row["legs"], bank=row["bank_id"])
            self.oldest.set(float(row["oldest_s"] or 0.0), bank=row["bank_id"])

    def collector(self, service: Callable[[], Any]) -> Callable[[], Awaitable[None]]:
        """A ``MetricsServer`` ``collect`` hook reading the hub's service (``service()`` None: not started yet).
        A failed query raises: the scrape still answers, ``/health`` says ``failing``."""

        async def collect() -> None:
            current = service()
            if current is None:
                return
            self.count_write_failures(current.write_failures)

            async def legs() -> list[Any]:
                async with current.pool.acquire() as conn:
                    return list(await conn.fetch(OPEN_LEGS))

            self.update_legs(await asyncio.wait_for(legs(), QUERY_TIMEOUT_S))

        return collect
