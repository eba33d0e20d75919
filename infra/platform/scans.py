"""Bounded partition scans: a topic's partitions, their high watermarks, the records between two offsets.

Group-less reading for the ops tools and for verifiers of published topics (checkpoints): nothing is
committed and no group is joined. On the Tansu fallback ``end_offsets`` is wrong (docs/embedded.md), so
without Kafka settings the high watermark comes from a fetch response, which is right on any broker.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from infra.core.errors import ConfigError, StackError
from infra.core.settings import KafkaSettings, Settings

__all__ = ["FETCH_TIMEOUT_S", "high_watermarks", "partitions_of", "read_range", "scan_consumer"]

FETCH_TIMEOUT_S = 15.0


async def partitions_of(consumer: Any, topic: str) -> list[int]:
    from infra.platform.kafka import topic_partitions

    parts = await topic_partitions(consumer, topic)
    if not parts:
        raise ConfigError(f"topic {topic} does not exist (see `renkei topics list`)")
    return sorted(parts)


async def high_watermarks(consumer: Any, tps: list[Any], timeout_s: float = FETCH_TIMEOUT_S, *,
                          kafka: KafkaSettings | None = None) -> dict[Any, int]:
    """The high watermark of each partition: ``end_offsets`` on Apache Kafka (``kafka`` given, not
    Tansu), else from a fetch response, which is right on any broker."""
    from infra.platform.kafka import end_offsets, high_watermarks_by_fetch

    if kafka is None:
        return await high_watermarks_by_fetch(consumer, tps, timeout_s)
    return await end_offsets(kafka, consumer, tps, timeout_s)


async def read_range(consumer: Any, tp: Any, start: int, stop: int,
                     timeout_s: float = FETCH_TIMEOUT_S) -> AsyncIterator[Any]:
    """Every record of ``tp`` with ``start <= offset < stop`` (stop = a high watermark snapshot)."""
    if start >= stop:
        return
    consumer.assign([tp])
    consumer.seek(tp, start)
    last_progress = time.monotonic()
    while True:
        batch = (await consumer.getmany(tp, timeout_ms=500, max_records=500)).get(tp, [])
        for r in batch:
            if r.offset >= stop:
                return
            yield r
        if batch:
            last_progress = time.monotonic()
        if await consumer.position(tp) >= stop:
            return
        if not batch and time.monotonic() - last_progress > timeout_s:
            raise StackError(f"{tp.topic}:{tp.partition} stopped returning records below offset {stop}")


def scan_consumer(settings: Settings) -> Any:
    """A group-less consumer for reading: it commits nothing and joins no group."""
    from infra.platform.kafka import consumer

    return consumer(settings, group_id=None, auto_offset_reset="earliest")
