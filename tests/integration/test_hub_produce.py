"""The hub's batch producer (``streams.hub_produce.Outgoing``) on the real broker: nothing lost, nothing
reordered, keys and headers kept, and a record too large for any batch refused loudly, not dropped."""

from __future__ import annotations

import pytest
from aiokafka.errors import MessageSizeTooLargeError

from infra.platform.kafka import producer
from infra.platform.topics import MAX_RECORD_BYTES
from infra.tools.bench import create_topics
from infra.tools.harness import read_topic
from streams.hub_produce import Outgoing

pytestmark = pytest.mark.integration


async def test_every_record_arrives_in_order_with_its_key_and_headers(settings, unique):
    one, four = f"{unique}.out.one", f"{unique}.out.four"
    await create_topics(settings, {one: 1, four: 4})
    prod = producer(settings)
    await prod.start()
    try:
        out = Outgoing(prod)
        # 3,000 records of 600 B: more than one 1 MB record batch, so a full batch is handed over mid-way.
        values = [f"{i:06d}".encode() + b"x" * 594 for i in range(3000)]
        for i, v in enumerate(values):
            out.add(one, v, key=f"k{i % 7}".encode(), headers=[("renkei.n", str(i).encode())] if i % 3 == 0 else None)
            out.add(four, v, key=f"k{i % 7}".encode())
        assert len(out) == 6000
        await out.flush()
        assert len(out) == 0
    finally:
        await prod.stop()
    got = await read_topic(settings, one)
    assert [r.value for r in got] == values
    assert [r.key for r in got] == [f"k{i % 7}".encode() for i in range(3000)]
    assert [dict(r.headers).get("renkei.n") for r in got] == [str(i).encode() if i % 3 == 0 else None
                                                              for i in range(3000)]
    spread = await read_topic(settings, four, 4)
    assert sorted(r.value for r in spread) == sorted(values)
    by_key: dict[bytes, set[int]] = {}
    for r in spread:  # the producer's partitioner still chooses by key on a topic of several partitions
        by_key.setdefault(r.key, set()).add(r.partition)
    assert all(len(parts) == 1 for parts in by_key.values())


async def test_a_record_larger_than_a_batch_is_refused_and_the_others_still_go(settings, unique):
    topic = f"{unique}.out.big"
    await create_topics(settings, {topic: 1})
    prod = producer(settings)
    await prod.start()
    try:
        out = Outgoing(prod)
        out.add(topic, b"before")
        out.add(topic, b"x" * (MAX_RECORD_BYTES + 1))
        with pytest.raises(MessageSizeTooLargeError):
            await out.flush()
        out = Outgoing(prod)
        out.add(topic, b"after")
        await out.flush()
    finally:
        await prod.stop()
    assert [r.value for r in await read_topic(settings, topic)] == [b"before", b"after"]


async def test_topics_new_to_the_producer_take_one_metadata_request_not_one_each(settings, unique):
    """A hub worker's first fan-out writes to 1,000 inboxes it never wrote to: their metadata comes in one request
    (asked topic by topic, aiokafka sent one per new topic, each naming every topic before it)."""
    inboxes = [f"{unique}.inbox.bank-{9000 + i}" for i in range(60)]
    await create_topics(settings, dict.fromkeys(inboxes, 1))
    warm = producer(settings)  # the inboxes' leaders elected and known to the broker, as on a running platform
    await warm.start()
    try:
        out = Outgoing(warm)
        for topic in inboxes:
            out.add(topic, b"first")
        await out.flush()
    finally:
        await warm.stop()
    prod = producer(settings)
    await prod.start()
    updates: list[int] = []
    prod.client.cluster.add_listener(lambda cluster: updates.append(len(cluster.topics())))
    try:
        out = Outgoing(prod)
        for topic in inboxes:
            out.add(topic, topic.encode())
        await out.flush()
    finally:
        await prod.stop()
    assert len(updates) <= 2, f"{len(updates)} metadata updates for {len(inboxes)} new topics"
    for topic in inboxes[::15]:
        assert [r.value for r in await read_topic(settings, topic)] == [b"first", topic.encode()]
