"""Stopping a participant runtime lets its in-flight commit finish: no stray aiokafka traceback.

``make demo`` used to end with aiokafka's "Task exception was never retrieved": ``stop()`` cancelled
the consume loop inside ``consumer.commit()``, whose shielded request went on alone and failed once
the consumer (then the broker) was gone. Here the commit is made slow (the real commit, delayed) and
``stop()`` is called while it is in flight: the batch's offset must be committed on the broker and no
task may die unobserved.
"""

from __future__ import annotations

import asyncio
import gc

import pytest
from aiokafka import TopicPartition

from infra.platform.kafka import admin_client, producer
from infra.platform.topics import TopicNames
from streams.participant import ParticipantRuntime

pytestmark = pytest.mark.integration


async def _committed(settings, group: str, tp: TopicPartition) -> int | None:
    admin = admin_client(settings)
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(group, partitions=[tp])
    finally:
        await admin.close()
    om = found.get(tp)
    return None if om is None or om.offset < 0 else om.offset


async def test_stop_during_a_commit_lets_it_finish(running_platform):
    settings = running_platform.settings
    group = f"{settings.kafka.topic_prefix}.stop-test"
    inbox = TopicNames(settings.kafka.topic_prefix).inbox("dicj")
    unobserved: list[dict] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unobserved.append(context))
    runtime = ParticipantRuntime(settings, ["dicj"], {}, group=group)
    try:
        await runtime.start()
        while not runtime.consumer.assignment():
            await asyncio.sleep(0.1)
        committing = asyncio.Event()
        real_commit = runtime.consumer.commit

        async def slow_commit(*args, **kwargs):
            committing.set()
            await asyncio.sleep(1.0)  # a commit still in flight when stop() comes
            return await real_commit(*args, **kwargs)

        runtime.consumer.commit = slow_commit
        send = producer(settings)
        await send.start()
        try:
            meta = await send.send_and_wait(inbox, b"not an envelope: dead-lettered, then committed")
        finally:
            await send.stop()
        await asyncio.wait_for(committing.wait(), 60)
    finally:
        await runtime.stop()
    gc.collect()  # "Task exception was never retrieved" is reported when the task is collected
    await asyncio.sleep(0.5)
    loop.set_exception_handler(previous)
    assert await _committed(settings, group, TopicPartition(inbox, meta.partition)) == meta.offset + 1
    assert unobserved == []
