"""``renkei replay``: re-produce a time window into a topic, or rewind a consumer group to it.

Into a topic: every record of the source whose *record* timestamp lies in
``[--from, --to)`` (and offset in ``[--from-offset, --to-offset)``) is
produced again, same key, value and headers, plus ``renkei.replay`` =
``topic:partition:offset``, ``renkei.replay.ts`` (the original timestamp) and
``renkei.ops.event`` (the audit event id). The scan stops at the high
watermark seen when it began, so replaying into the source topic ends.

Rewind: the group's committed offset on each partition moves to the first
offset whose record timestamp is at/after ``--from``. Refused while the group
has members; the commit comes from a consumer that carries the group id but
never joins the group (on Apache Kafka and on the embedded broker alike).
A member that died without leaving stays listed until its session times out
(10 s on Apache Kafka; the Tansu fallback keeps a lone member that left listed
for good), so ``--evict-stale-members`` joins the group instead (a rebalance
evicts the dead), commits only if no other member survived it, and leaves.

Replay is idempotent downstream: every effect is keyed by message id.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from infra.core.errors import ConfigError, RenkeiError
from infra.core.settings import Settings
from infra.ops import (
    STOP,
    TAKE,
    OpsEvent,
    Window,
    classify,
    emit,
    high_watermarks,
    partitions_of,
    progress,
    read_range,
    scan_consumer,
    start_offset,
    write_ops_event,
)

JOIN_TIMEOUT_S = 60.0


class GroupActive(RenkeiError):
    """The consumer group still has members: rewinding under them would be overwritten or race."""


async def replay_into(settings: Settings, topic: str, window: Window, into: str, *, reason: str,
                      dry_run: bool = False, skew_ms: int | None = None) -> dict[str, Any]:
    from aiokafka import TopicPartition

    from infra.ops import DEFAULT_SKEW_MS
    from infra.platform.kafka import producer as make_producer

    skew = DEFAULT_SKEW_MS if skew_ms is None else skew_ms
    _require_start(window)
    event = OpsEvent.new("replay", reason, window.to_json(), dry_run=dry_run,
                         detail={"topic": topic, "into": into})
    consumer = scan_consumer(settings)
    producer = make_producer(settings)
    await consumer.start()
    await producer.start()
    parts: list[dict[str, Any]] = []
    status = "failed"
    try:
        if into not in await consumer.topics():
            raise ConfigError(f"target topic {into} does not exist: create it first")
        tps = [TopicPartition(topic, p) for p in await partitions_of(consumer, topic)]
        marks = await high_watermarks(consumer, tps, kafka=settings.kafka)
        starts = {tp: await start_offset(consumer, tp, window, skew, kafka=settings.kafka) for tp in tps}
        total = sum(max(0, marks[tp] - starts[tp]) for tp in tps)
        with progress(f"replay {topic} → {into}" + (" (dry run)" if dry_run else ""), total) as advance:
            for tp in tps:
                row = {"partition": tp.partition, "start_offset": starts[tp], "high_watermark": marks[tp],
                       "scanned": 0, "matched": 0, "produced": 0}
                parts.append(row)
                pending = []
                async for r in read_range(consumer, tp, starts[tp], marks[tp]):
                    row["scanned"] += 1
                    advance()
                    verdict = classify(window, r.timestamp, r.offset, skew)
                    if verdict == STOP:
                        break
                    if verdict != TAKE:
                        continue
                    row["matched"] += 1
                    if not dry_run:
                        pending.append(await producer.send(into, r.value, key=r.key, headers=_replay_headers(
                            r.headers, f"{topic}:{tp.partition}:{r.offset}", r.timestamp, event.id)))
                if pending:
                    await asyncio.gather(*pending)
                    row["produced"] = len(pending)
        status = "done"
    finally:
        counts = _totals(parts) | {"status": status}
        try:
            audit = await write_ops_event(settings, producer, event, counts)
        finally:
            await producer.stop()
            await consumer.stop()
    return {"mode": "into", "topic": topic, "into": into, "dry_run": dry_run, "window": window.to_json(),
            "partitions": parts, "totals": _totals(parts),
            "audit": {"id": audit["id"], "topic": _audit_topic(settings)}}


async def rewind_group(settings: Settings, topic: str, window: Window, group: str, *, reason: str,
                       dry_run: bool = False, skew_ms: int | None = None,
                       evict_stale: bool = False) -> dict[str, Any]:
    from aiokafka import TopicPartition

    from infra.ops import DEFAULT_SKEW_MS
    from infra.ops.lag import describe_group
    from infra.platform.kafka import admin_client
    from infra.platform.kafka import producer as make_producer

    skew = DEFAULT_SKEW_MS if skew_ms is None else skew_ms
    _require_start(window)
    event = OpsEvent.new("rewind", reason, window.to_json(), dry_run=dry_run, detail={"topic": topic, "group": group})
    admin = admin_client(settings)
    consumer = scan_consumer(settings)
    producer = make_producer(settings)
    await admin.start()
    await consumer.start()
    await producer.start()
    parts: list[dict[str, Any]] = []
    status = "failed"
    try:
        state, members = await describe_group(admin, group)
        if members and not evict_stale:
            status = "refused"
            raise GroupActive(
                f"consumer group {group} has {members} active member(s) (state {state}): stop its consumers "
                "first (a member that died stays listed until its session times out, on Tansu for good: add "
                "--evict-stale-members)")
        tps = [TopicPartition(topic, p) for p in await partitions_of(consumer, topic)]
        before = await admin.list_consumer_group_offsets(group, partitions=tps)
        marks = await high_watermarks(consumer, tps, kafka=settings.kafka)
        targets: dict[Any, int] = {}
        with progress(f"finding offsets at {window.to_json()['from'] or window.from_offset} in {topic}",
                      None) as advance:
            for tp in tps:
                targets[tp] = await _first_offset_at(consumer, tp, window, marks[tp], skew, advance,
                                                     kafka=settings.kafka)
        for tp in tps:
            old = before.get(tp)
            parts.append({"partition": tp.partition,
                          "committed_before": old.offset if old and old.offset >= 0 else None,
                          "target": targets[tp], "high_watermark": marks[tp], "committed_after": None})
        if not dry_run:
            try:
                await _commit(settings, group, topic, targets, evict_stale=evict_stale and bool(members))
            except GroupActive:
                status = "refused"
                raise
            after = await admin.list_consumer_group_offsets(group, partitions=tps)
            for row, tp in zip(parts, tps):
                row["committed_after"] = after[tp].offset if tp in after else None
        status = "done"
    finally:
        counts = {"partitions": len(parts), "status": status,
                  "moved": sum(1 for p in parts if p["committed_after"] is not None
                               and p["committed_after"] != p["committed_before"])}
        try:
            audit = await write_ops_event(settings, producer, event, counts)
        finally:
            await producer.stop()
            await consumer.stop()
            await admin.close()
    return {"mode": "rewind", "topic": topic, "group": group, "dry_run": dry_run, "window": window.to_json(),
            "partitions": parts, "audit": {"id": audit["id"], "topic": _audit_topic(settings)}}


async def _first_offset_at(consumer: Any, tp: Any, window: Window, high_watermark: int, skew: int,
                           advance: Any, *, kafka: Any = None) -> int:
    """The first offset at/after the window start (record time), or the high watermark if none."""
    if window.start_ms is None:
        return min(window.from_offset or 0, high_watermark)
    at_start = Window(start_ms=window.start_ms, from_offset=window.from_offset)
    start = await start_offset(consumer, tp, window, skew, kafka=kafka)
    async for r in read_range(consumer, tp, start, high_watermark):
        advance()
        if classify(at_start, r.timestamp, r.offset, skew) == TAKE:
            return r.offset
    return high_watermark


async def _commit(settings: Settings, group: str, topic: str, targets: dict[Any, int], *, evict_stale: bool) -> None:
    from aiokafka.structs import OffsetAndMetadata

    from infra.platform.kafka import consumer as make_consumer

    offsets = {tp: OffsetAndMetadata(off, "") for tp, off in targets.items()}
    if not evict_stale:
        committer = make_consumer(settings, group_id=group)
        await committer.start()
        try:
            committer.assign(list(targets))
            await committer.commit(offsets)
        finally:
            await committer.stop()
        return
    from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

    from infra.ops.lag import describe_group
    from infra.platform.kafka import admin_client

    class FaustProtocol(RoundRobinPartitionAssignor):
        """Round robin under faust's protocol name: a join must share a protocol with the stale member
        (the hub and registry are faust workers), or the broker answers INCONSISTENT_GROUP_PROTOCOL."""

        name = "faust"

    joiner = make_consumer(settings, topic, group_id=group,
                           partition_assignment_strategy=(RoundRobinPartitionAssignor, FaustProtocol))
    admin = admin_client(settings)
    await admin.start()
    await joiner.start()
    try:
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while not joiner.assignment():
            if time.monotonic() > deadline:
                raise GroupActive(f"could not join consumer group {group} within {JOIN_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.2)
        _, members = await describe_group(admin, group)
        if members > 1 or set(joiner.assignment()) != set(targets):
            raise GroupActive(f"consumer group {group} still has {members - 1} live member(s) after a rebalance: "
                              "stop its consumers first")
        await joiner.commit(offsets)
    finally:
        await joiner.stop()
        await admin.close()


def _require_start(window: Window) -> None:
    if window.start_ms is None and window.from_offset is None:
        raise ConfigError("say where the window starts: --from TIME or --from-offset N")


def _totals(parts: list[dict[str, Any]]) -> dict[str, int]:
    return {k: sum(p[k] for p in parts) for k in ("scanned", "matched", "produced")}


def _audit_topic(settings: Settings) -> str:
    from infra.ops import ops_audit_topic

    return ops_audit_topic(settings.kafka.topic_prefix)


def _replay_headers(headers: Any, source: str, timestamp: int, event_id: str) -> list[tuple[str, bytes]]:
    kept = [(k, v) for k, v in headers or () if k not in ("renkei.replay", "renkei.replay.ts", "renkei.ops.event")]
    return kept + [("renkei.replay", source.encode()), ("renkei.replay.ts", str(timestamp).encode()),
                   ("renkei.ops.event", event_id.encode())]


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from infra.ops import window_from_args

    window = window_from_args(args)
    if args.into:
        report = await replay_into(settings, args.topic, window, args.into, reason=args.reason,
                                   dry_run=args.dry_run, skew_ms=args.skew_ms)
        rows = [[p["partition"], p["start_offset"], p["high_watermark"], p["scanned"], p["matched"], p["produced"]]
                for p in report["partitions"]]
        t = report["totals"]
        emit(args, report, f"Replay {args.topic} → {args.into}" + (" (dry run)" if args.dry_run else ""),
             ["p", "from offset", "high watermark", "scanned", "in window", "produced"], rows,
             footer=f"{t['matched']} in window, {t['produced']} produced; audit event {report['audit']['id']}")
        return 0
    report = await rewind_group(settings, args.topic, window, args.rewind_group, reason=args.reason,
                                dry_run=args.dry_run, skew_ms=args.skew_ms, evict_stale=args.evict_stale)
    rows = [[p["partition"], p["committed_before"], p["target"], p["committed_after"], p["high_watermark"]]
            for p in report["partitions"]]
    emit(args, report, f"Rewind {args.rewind_group} on {args.topic}" + (" (dry run)" if args.dry_run else ""),
         ["p", "committed before", "target", "committed after", "high watermark"], rows,
         footer=f"audit event {report['audit']['id']}")
    return 0
