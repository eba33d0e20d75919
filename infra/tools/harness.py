"""What the tools share when they drive a running platform: reading a topic whole, its dead letters, waiting for
quiet, and printing a report of invariants (``renkei chaos`` and ``renkei chaos --insider``).

``renkei bench`` and ``renkei chaos`` (and the integration tests) both use these; keeping them here lets
the tools import one way only (chaos may use bench's traffic generators, never the reverse).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from infra.core.settings import Settings
from infra.platform.storage import count_everywhere

__all__ = ["dead_letter_info", "print_report", "quiesce", "read_topic"]

log = logging.getLogger("renkei.chaos")


async def quiesce(conn: Any, timeout: float = 120.0) -> None:
    """Wait until outboxes are sent and the hub has taken nothing new for two seconds."""
    end = time.monotonic() + timeout
    last, steady = -1, 0
    while time.monotonic() < end and steady < 4:
        pending = await count_everywhere(conn, "participant_outbox", "sent_at IS NULL")
        seen = await conn.fetchval("SELECT count(*) FROM hub_messages")
        steady = steady + 1 if (pending == 0 and seen == last) else 0
        last = seen
        await asyncio.sleep(0.5)


async def read_topic(settings: Settings, topic: str, partitions: int = 1, *, patience_s: float = 120.0) -> list[Any]:
    """Every record of ``topic`` from offset 0.

    On Apache Kafka up to the end offsets taken at the start: an empty fetch proves nothing there (while a
    leader moves after a broker's loss, fetches answer nothing for a while), so it reads until every
    partition's position reaches its end, for up to ``patience_s``. On Tansu, whose end offsets are wrong,
    until three fetches in a row bring nothing.
    """
    from aiokafka import TopicPartition

    from infra.platform.kafka import consumer

    cons = consumer(settings, group_id=None, fetch_max_wait_ms=50)
    await cons.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        cons.assign(tps)
        for tp in tps:
            cons.seek(tp, 0)
        ends = None if settings.kafka.tansu else await cons.end_offsets(tps)
        deadline = time.monotonic() + patience_s
        out: list[Any] = []
        idle = 0
        while True:
            batches = await cons.getmany(timeout_ms=200, max_records=10000)
            got = [r for rs in batches.values() for r in rs]
            out.extend(got)
            idle = 0 if got else idle + 1
            if ends is None:
                if idle >= 3:
                    return out
            elif all([await cons.position(tp) >= ends[tp] for tp in tps]):
                return out
            elif time.monotonic() > deadline:
                log.warning("read_topic %s: the end offsets were not reached in %.0f s; returning %d records",
                            topic, patience_s, len(out))
                return out
    finally:
        await cons.stop()


def dead_letter_info(record: Any) -> dict[str, str]:
    headers = {k: (v or b"").decode(errors="replace") for k, v in (record.headers or ())}
    return {"reason": headers.get("renkei.reason", ""), "message_id": headers.get("renkei.message_id", ""),
            "verified": headers.get("renkei.verified", ""),
            "source": f"{headers.get('renkei.src.partition', '')}@{headers.get('renkei.src.offset', '')}"}


def print_report(report: dict[str, Any], console: Any) -> None:
    import json

    from rich.table import Table

    table = Table(title="Renkei chaos: invariants")
    table.add_column("invariant")
    table.add_column("result")
    for name, ok in report["invariants"].items():
        table.add_row(name, "[green]pass[/green]" if ok else "[red]FAIL[/red]")
    console.print(table)
    console.print(json.dumps(report["counts"], indent=1, ensure_ascii=False, default=str))
    for problem in report.get("problems", []):
        console.print(f"[red]{problem}[/red]", markup=True, highlight=False)
    console.print(f"{'All invariants hold' if report['ok'] else 'Some invariants FAILED'} "
                  f"({report['elapsed_s']} s, load {report['load_avg_1m']}).")
