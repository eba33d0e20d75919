"""``renkei lag``: per consumer group and partition, committed offset, high watermark and lag.

The high watermark is ``end_offsets`` on Apache Kafka; on the Tansu fallback,
where that is wrong when the last batch holds several records, it is read from
a fetch response (``infra.kafka.end_offsets``). Committed offsets are asked for
with explicit partitions (every partition of the platform's topics, i.e. under
the topic prefix), because Tansu cannot answer the "all partitions" form.
"""

from __future__ import annotations

import argparse
from typing import Any

from infra.ops import emit, high_watermarks, scan_consumer
from infra.settings import Settings


def lag_of(committed: int | None, high_watermark: int) -> int | None:
    """Records not yet consumed; None when the group never committed on the partition."""
    if committed is None or committed < 0:
        return None
    return max(0, high_watermark - committed)


def group_state(described: Any) -> tuple[str, int]:
    """(state, member count) from a DescribeGroups response (any version)."""
    group = described.groups[0]
    return str(group[2]), len(group[5])


async def describe_group(admin: Any, group: str) -> tuple[str, int]:
    return group_state((await admin.describe_consumer_groups([group]))[0])


async def consumer_lag(settings: Settings, group: str | None = None) -> dict[str, Any]:
    from aiokafka import TopicPartition

    from infra.kafka import admin_client, topic_partitions

    prefix = settings.kafka.topic_prefix
    admin = admin_client(settings)
    consumer = scan_consumer(settings)
    await admin.start()
    await consumer.start()
    try:
        groups = [group] if group else sorted(g[0] for g in await admin.list_consumer_groups())
        topics = sorted(t for t in await consumer.topics() if t.startswith(prefix) and not t.startswith("__"))
        candidates = [TopicPartition(t, p) for t in topics for p in sorted(await topic_partitions(consumer, t))]
        found: list[dict[str, Any]] = []
        for g in groups:
            offsets = await admin.list_consumer_group_offsets(g, partitions=candidates) if candidates else {}
            committed = {tp: om.offset for tp, om in offsets.items() if om is not None and om.offset >= 0}
            state, members = await describe_group(admin, g)
            found.append({"group": g, "state": state, "members": members, "committed": committed})
        tps = sorted({tp for f in found for tp in f["committed"]})
        marks = await high_watermarks(consumer, tps, kafka=settings.kafka)
    finally:
        await consumer.stop()
        await admin.close()
    out = []
    for f in found:
        rows = [{"topic": tp.topic, "partition": tp.partition, "committed": off, "high_watermark": marks[tp],
                 "lag": lag_of(off, marks[tp])} for tp, off in sorted(f["committed"].items())]
        out.append({"group": f["group"], "state": f["state"], "members": f["members"], "partitions": rows,
                    "total_lag": sum(r["lag"] or 0 for r in rows)})
    return {"groups": out}


async def run(settings: Settings, args: argparse.Namespace) -> int:
    report = await consumer_lag(settings, args.group)
    rows = [[g["group"], g["state"], g["members"], p.get("topic"), p.get("partition"), p.get("committed"),
             p.get("high_watermark"), p.get("lag")] for g in report["groups"] for p in g["partitions"] or [{}]]
    emit(args, report, "Consumer lag", ["group", "state", "members", "topic", "p", "committed", "high watermark",
                                        "lag"], rows,
         footer="total lag: " + ", ".join(f"{g['group']} {g['total_lag']}" for g in report["groups"]))
    return 0
