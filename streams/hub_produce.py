"""A batch's outgoing records, produced one record batch per topic-partition instead of one ``send`` each.

The hub writes a batch's forwards, dead letters, notices and provision records to topics of one
partition (inboxes, the rejected and the audit topics): there is no partition to choose, so the
records go straight into an aiokafka ``BatchBuilder`` per topic and each builder is handed over with
one ``send_batch``. ``producer.send`` per record spent ~20–40 µs each on metadata checks, the
partitioner and the accumulator (the profile in docs/performance.md). A topic of several
partitions still goes through ``send`` (the producer's partitioner picks by key, as before).

The guarantees are the producer's: acks=all, idempotence where the broker has it (sequence
numbers are set when a batch is drained, for built batches too), and the caller waits for every
future before it commits the consumed offsets.
"""

from __future__ import annotations

import asyncio
from typing import Any

Headers = list[tuple[str, bytes]] | None

LARGE = 256 * 1024
"""Records above this go through ``send()`` one by one (its size check; envelopes are a few KB)."""


class Outgoing:
    """Records to produce, in order per topic; :meth:`send` hands them to the producer, :meth:`flush` also waits."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self._by_topic: dict[str, list[tuple[bytes | None, bytes, Headers]]] = {}

    def add(self, topic: str, value: bytes, *, key: bytes | None = None, headers: Headers = None) -> None:
        self._by_topic.setdefault(topic, []).append((key, value, headers))

    def __len__(self) -> int:
        return sum(len(records) for records in self._by_topic.values())

    async def send(self) -> list[asyncio.Future[Any]]:
        """Hand every record to the producer, in order per topic; the futures resolve on the broker's acks."""
        futures: list[asyncio.Future[Any]] = []
        # Topics this producer never wrote to (a worker's first fan-out: 1,000 inboxes) are named to its client
        # all at once, so ONE metadata request fetches them: asked topic by topic, aiokafka sends a request per
        # new topic naming every topic known before it — a million topic entries for 1,000 inboxes.
        client = self.producer.client
        for topic in self._by_topic:
            if client.cluster.partitions_for_topic(topic) is None:
                client.add_topic(topic)  # the pending update's future; awaited below through partitions_for
        for topic, records in self._by_topic.items():
            partitions = await self.producer.partitions_for(topic)
            if len(partitions) == 1:
                await self._batched(topic, next(iter(partitions)), records, futures)
            else:
                for key, value, headers in records:
                    futures.append(await self.producer.send(topic, value, key=key, headers=headers))
        self._by_topic.clear()
        return futures

    async def _batched(self, topic: str, partition: int, records: list[tuple[bytes | None, bytes, Headers]],
                       futures: list[asyncio.Future[Any]]) -> None:
        producer = self.producer
        builder = producer.create_batch()
        for key, value, headers in records:
            if len(value) + len(key or b"") > LARGE:
                # send() checks the size first; a batch builder takes a first record of any size, and the
                # broker's refusal of it would leave the idempotent producer's sequence out of order.
                builder = await self._hand_over(builder, topic, partition, futures)
                futures.append(await producer.send(topic, value, key=key, headers=headers))
            elif builder.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
                builder = await self._hand_over(builder, topic, partition, futures)  # full: start the next
                builder.append(key=key, value=value, timestamp=None, headers=headers or [])
        await self._hand_over(builder, topic, partition, futures)

    async def _hand_over(self, builder: Any, topic: str, partition: int, futures: list[asyncio.Future[Any]]) -> Any:
        """Queue ``builder`` if it holds anything; returns the builder to fill next."""
        if not builder.record_count():
            return builder
        builder.close()  # nothing but ours goes into it (send() could otherwise add to it)
        futures.append(await self.producer.send_batch(builder, topic, partition=partition))
        return self.producer.create_batch()

    async def flush(self) -> None:
        """Produce everything and wait for the broker's acks (an error is raised here)."""
        futures = await self.send()
        if futures:
            await asyncio.gather(*futures)
