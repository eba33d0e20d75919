"""The hub's plain aiokafka loop (``streams.hub_loop``) on the real broker and PostgreSQL.

Two hub loops in one consumer group share the ingress topic's partitions and forward every inquiry
exactly once between them; stopped, each commits what it processed, so a hub started afterwards
reads only what came after (no redelivery, nothing lost).
"""

from __future__ import annotations

import asyncio
import random

import pytest

from infra.crypto.envelope import peek
from infra.platform.topics import TopicNames
from infra.tools.bench import produce_all, seal_inquiries
from infra.tools.harness import eventually, read_topic
from streams.hub_loop import HubLoop
from tests.integration.platform_fixtures import hub_pseudonyms, isolated_platform

pytestmark = pytest.mark.integration


async def test_two_hub_loops_share_ingress_and_a_stopped_one_leaves_nothing_to_redeliver(endpoints, database,
                                                                                          tmp_path):
    async with isolated_platform(endpoints, database, tmp_path / "state", workers=[]) as platform:  # hubs below
        s = platform.settings
        names = TopicNames(s.kafka.topic_prefix)
        first = seal_inquiries(s, 200, per_message=False, rng=random.Random(1))
        later = seal_inquiries(s, 10, per_message=False, rng=random.Random(2))
        a, b = HubLoop(s), HubLoop(s)
        await a.start()
        await b.start()
        try:
            # Wait for the settled assignment: while the group rebalances, the first hub still lists all
            # four partitions beside the second hub's new two (seen in CI), so "settled" means each of the
            # four partitions has exactly one owner and both hubs own some.
            await eventually(lambda: a.consumer.assignment() and b.consumer.assignment()
                             and not a.consumer.assignment() & b.consumer.assignment()
                             and len(a.consumer.assignment() | b.consumer.assignment()) == 4,
                             timeout=120, interval=0.1, what="the two hubs to split the four partitions")
            await produce_all(s, names.ingress, first)
            await eventually(lambda: a.hub.service.totals.received + b.hub.service.totals.received >= 200,
                             timeout=120, interval=0.1, what="the 200 inquiries at the two hubs")
            assert a.hub.service.totals.received > 0 and b.hub.service.totals.received > 0  # both worked
        finally:
            await a.stop()
            await b.stop()
        for loop in (a, b):
            assert loop.hub.service.totals.rejected == 0 and loop.hub.service.totals.redelivered == 0

        c = HubLoop(s)
        await c.start()
        try:
            await produce_all(s, names.ingress, later)
            await eventually(lambda: c.hub.service.totals.received >= 10, timeout=120, interval=0.1,
                             what="the 10 later inquiries at the third hub")
            await asyncio.sleep(1)  # a redelivered batch would show up in the same poll or the next
            assert c.hub.service.totals.received == 10 and c.hub.service.totals.redelivered == 0
        finally:
            await c.stop()

        legs = hub_pseudonyms(s)
        forwarded = [peek(r.value).message_id for r in await read_topic(s, names.inbox("registry"))]
        sent = [peek(v).message_id for _, v in first + later]
        assert sorted(forwarded) == sorted(legs.leg_message_id(m, "registry") for m in sent)  # each once
        assert await read_topic(s, names.rejected) == []
