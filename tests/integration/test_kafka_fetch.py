"""Consumer fetches on the real broker: a partition whose records were buffered while the loop was busy
is fetched again as soon as the loop has taken them (``infra.platform.kafka.fetch_whole_assignment``),
not after the broker's held fetch of the other partitions comes back."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic

from infra.core.settings import Settings
from infra.platform.kafka import admin_client, consumer, fetch_whole_assignment, producer

pytestmark = pytest.mark.integration

HELD_MS = 30_000  # the broker holds a fetch that finds nothing this long: far above what any step here takes
BUSY_S = 0.5  # longer than aiokafka's prefetch backoff (0.1 s): the loop "processes a batch" this long


async def _topic(settings: Settings, name: str, partitions: int) -> None:
    admin = admin_client(settings)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def _record_after_a_busy_batch(settings: Settings, *, whole_assignment: bool) -> float | None:
    """Seconds until a record produced to a just-drained partition is returned (None: not within 10 s)."""
    topic = f"{settings.kafka.topic_prefix}.fetch"
    await _topic(settings, topic, 2)
    prod = producer(settings, linger_ms=0)
    cons = consumer(settings, group_id=None, fetch_max_wait_ms=HELD_MS)
    await prod.start()
    await cons.start()
    try:
        tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        cons.assign(tps)
        await cons.seek_to_beginning(*tps)
        if whole_assignment:
            fetch_whole_assignment(cons)
        await prod.send_and_wait(topic, b"first", partition=0)
        got = await cons.getmany(timeout_ms=10_000)
        assert [r.value for rs in got.values() for r in rs] == [b"first"]
        # Taken: a fetch of both partitions is held now. A record arrives while "the batch is processed" and
        # stays buffered longer than the prefetch backoff.
        await prod.send_and_wait(topic, b"during the batch", partition=0)
        await asyncio.sleep(BUSY_S)
        got = await cons.getmany(timeout_ms=10_000)
        assert [r.value for rs in got.values() for r in rs] == [b"during the batch"]
        # The buffered partition is taken; the next record on it must come back without the held wait.
        await prod.send_and_wait(topic, b"after the batch", partition=0)
        start = time.monotonic()
        got = await cons.getmany(timeout_ms=10_000)
        values = [r.value for rs in got.values() for r in rs]
        return time.monotonic() - start if values == [b"after the batch"] else None
    finally:
        await cons.stop()
        await prod.stop()


async def test_a_partition_drained_after_a_busy_batch_is_fetched_at_once(settings: Settings):
    if settings.kafka.tansu:
        pytest.skip("Tansu answers a held fetch only when its wait ends: the case is Apache Kafka's")
    waited = await _record_after_a_busy_batch(settings, whole_assignment=True)
    assert waited is not None, "the record on the drained partition was not fetched within 10 s"


async def test_without_it_the_partition_waits_out_the_held_fetch(settings: Settings):
    """The control: aiokafka's default leaves the drained partition out of the held fetch (the wait removed)."""
    if settings.kafka.tansu:
        pytest.skip("Tansu answers a held fetch only when its wait ends: the case is Apache Kafka's")
    waited = await _record_after_a_busy_batch(settings, whole_assignment=False)
    assert waited is None, f"fetched after {waited:.2f} s: aiokafka no longer leaves the partition out"
