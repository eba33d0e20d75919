"""``renkei lag``: per consumer group and partition, committed offset, high watermark and lag.

The high watermark is ``end_offsets`` on Apache Kafka; on the Tansu fallback,
where that is wrong when the last batch holds several records, it is read from
a fetch response (``infra.platform.kafka.end_offsets``). Committed offsets are asked for
with explicit partitions (every partition of the platform's topics, i.e. under
the topic prefix), because Tansu cannot answer the "all partitions" form.

Which groups: every group the broker lists, and always the platform's own
worker groups (``infra.platform.stack.WORKERS``: hub, registry, banks, DICJ desk) — Tansu answers
ListGroups with nothing, and a worker group missing or empty is exactly what
an operator must see. Each group shows its state and its members (client id,
host, assigned partitions, read from the group's own assignment), and each
assigned partition shows up at once, before the group has committed anything
on it (``committed`` and ``lag`` are then null).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any

from infra.core.settings import Settings
from infra.ops import emit, high_watermarks, scan_consumer


def lag_of(committed: int | None, high_watermark: int) -> int | None:
    """Records not yet consumed; None when the group never committed on the partition."""
    if committed is None or committed < 0:
        return None
    return max(0, high_watermark - committed)


def group_state(described: Any) -> tuple[str, int]:
    """(state, member count) from a DescribeGroups response (any version)."""
    state, members = group_members(described)
    return state, len(members)


@dataclass(frozen=True)
class GroupMember:
    """One member of a consumer group, as the group coordinator describes it."""

    member_id: str
    client_id: str
    host: str
    partitions: tuple[tuple[str, int], ...]  # (topic, partition) assigned to it; empty while rebalancing

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["partitions"] = [{"topic": t, "partition": p} for t, p in self.partitions]
        return out


@dataclass(frozen=True)
class GroupOffsets:
    """One consumer group as read from the broker: its state, members, committed offsets and partition owners
    (keyed by aiokafka ``TopicPartition``); the high watermarks are read once for all groups, then compared."""

    group: str
    state: str
    members: list[GroupMember]
    committed: dict[Any, int]
    owners: dict[Any, str]  # the partition -> the client id of the member it is assigned to

    def partitions(self) -> set[Any]:
        """Every partition the group has committed on or owns."""
        return {*self.committed, *self.owners}


def group_members(described: Any) -> tuple[str, list[GroupMember]]:
    """(state, members) from a DescribeGroups response: v0-v3 members are (member_id, client_id,
    client_host, metadata, assignment)."""
    group = described.groups[0]
    members = [GroupMember(str(m[0]), str(m[1]), str(m[2]), assigned_partitions(m[4])) for m in group[5]]
    return str(group[2]), sorted(members, key=lambda m: (m.client_id, m.member_id))


def assigned_partitions(assignment: bytes) -> tuple[tuple[str, int], ...]:
    """The partitions in a consumer-protocol assignment (what faust and aiokafka assignors write);
    empty for an empty or foreign assignment, which says nothing about partitions."""
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    if not assignment:
        return ()
    try:
        decoded = ConsumerProtocolMemberAssignment.decode(assignment)
    except Exception:  # another protocol's bytes (not a consumer group's): no partitions to show
        return ()
    return tuple(sorted((tp.topic, tp.partition) for tp in decoded.partitions()))


def platform_groups(settings: Settings) -> list[str]:
    """The consumer groups of the workers ``renkei up`` starts."""
    from infra.platform.stack import WORKERS

    return [w.group(settings) for w in WORKERS if w.group is not None]


async def describe_group(admin: Any, group: str) -> tuple[str, int]:
    return group_state((await admin.describe_consumer_groups([group]))[0])


async def consumer_lag(settings: Settings, group: str | None = None) -> dict[str, Any]:
    from aiokafka import TopicPartition

    from infra.platform.kafka import admin_client, topic_partitions

    prefix = settings.kafka.topic_prefix
    admin = admin_client(settings)
    consumer = scan_consumer(settings)
    await admin.start()
    await consumer.start()
    try:
        if group:
            groups = [group]
        else:
            listed = {g[0] for g in await admin.list_consumer_groups()}
            groups = sorted(listed | set(platform_groups(settings)))
        topics = sorted(t for t in await consumer.topics() if t.startswith(prefix) and not t.startswith("__"))
        candidates = [TopicPartition(t, p) for t in topics for p in sorted(await topic_partitions(consumer, t))]
        found: list[GroupOffsets] = []
        for g in groups:
            offsets = await admin.list_consumer_group_offsets(g, partitions=candidates) if candidates else {}
            committed = {tp: om.offset for tp, om in offsets.items() if om is not None and om.offset >= 0}
            state, members = group_members((await admin.describe_consumer_groups([g]))[0])
            owners = {TopicPartition(t, p): m.client_id for m in members for t, p in m.partitions}
            found.append(GroupOffsets(g, state, members, committed, owners))
        tps = sorted({tp for f in found for tp in f.partitions()})
        marks = await high_watermarks(consumer, tps, kafka=settings.kafka)
    finally:
        await consumer.stop()
        await admin.close()
    out = []
    for f in found:
        rows = []
        for tp in sorted(f.partitions()):
            off = f.committed.get(tp)
            rows.append({"topic": tp.topic, "partition": tp.partition, "committed": off,
                         "high_watermark": marks[tp], "lag": lag_of(off, marks[tp]), "owner": f.owners.get(tp)})
        out.append({"group": f.group, "state": f.state, "members": len(f.members), "partitions": rows,
                    "total_lag": sum(r["lag"] or 0 for r in rows),
                    "member_details": [m.to_json() for m in f.members]})
    return {"groups": out}


async def run(settings: Settings, args: argparse.Namespace) -> int:
    report = await consumer_lag(settings, args.group)
    rows = [[g["group"], g["state"], _members(g), p.get("topic"), p.get("partition"), p.get("owner"),
             p.get("committed"), p.get("high_watermark"), p.get("lag")]
            for g in report["groups"] for p in g["partitions"] or [{}]]
    emit(args, report, "Consumer lag", ["group", "state", "members", "topic", "p", "owner", "committed",
                                        "high watermark", "lag"], rows,
         footer="total lag: " + ", ".join(f"{g['group']} {g['total_lag']}" for g in report["groups"]))
    return 0


def _members(group: dict[str, Any]) -> str:
    """``2: hub-1@127.0.0.1, hub-2@127.0.0.1`` — the count, then who (Tansu names only the member id)."""
    who = ", ".join((m["client_id"] or m["member_id"]) + (f"@{m['host'].lstrip('/')}" if m["host"] else "")
                    for m in group["member_details"])
    return f"{group['members']}: {who}" if who else str(group["members"])
