"""The topic layout applied to the real broker: created once, idempotent after."""

from __future__ import annotations

import pytest

from infra.domain.participants import load_participants
from infra.platform.kafka import admin_client
from infra.platform.topics import TopicNames, apply_layout, layout

pytestmark = pytest.mark.integration


async def test_apply_creates_then_is_idempotent(settings):
    specs = layout(TopicNames(settings.kafka.topic_prefix), load_participants(banks=3))
    admin = admin_client(settings)
    await admin.start()
    try:
        first = await apply_layout(admin, specs)
        assert [r.status for r in first] == ["created"] * len(specs)
        second = await apply_layout(admin, specs)
        assert [r.status for r in second] == ["exists"] * len(specs)
        described = {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics([s.name for s in specs])}
        assert described == {s.name: s.partitions for s in specs}
    finally:
        await admin.close()


async def test_partition_drift_is_reported_not_changed(settings):
    from aiokafka.admin import NewTopic

    names = TopicNames(settings.kafka.topic_prefix)
    admin = admin_client(settings)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(names.ingress, 1, 1)])
        specs = [s for s in layout(names, []) if s.name == names.ingress]
        result = await apply_layout(admin, specs)
        assert result[0].status == "drift" and "partitions 1" in result[0].detail
    finally:
        await admin.close()
