"""``renkei dlq list|redrive``: the dead letters on ``<prefix>.hub.rejected``, by their headers.

The hub dead-letters the original bytes with ``renkei.*`` headers (reason,
detail, source partition/offset, time, and when it could read them message
id, type, sender; ``streams.hub.dead_letter_headers``). ``list`` shows
those headers only, never the value. ``redrive`` produces the original bytes
and key again to the ingress topic with ``renkei.redrive`` = the dead
letter's offset, ``renkei.redrive.count`` (1 + the count the dead letter
carried) and ``renkei.redrive.history`` (every dead-letter offset so far),
plus ``renkei.ops.event``. A message that fails again is dead-lettered again
by the hub.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any

from infra.core.errors import ConfigError
from infra.core.settings import Settings
from infra.ops import (
    OpsEvent,
    Window,
    emit,
    high_watermarks,
    iso,
    parse_time,
    partitions_of,
    progress,
    read_range,
    renkei_headers,
    scan_consumer,
    start_offset,
    write_ops_event,
)
from infra.platform.topics import TopicNames


@dataclass(frozen=True)
class DeadLetter:
    """The metadata of one dead letter, from its ``renkei.*`` headers (never its value)."""

    partition: int
    offset: int
    timestamp: int  # the record's, epoch ms
    time: str | None  # the same, ISO 8601
    reason_code: str | None
    detail: str | None
    message_id: str | None
    type: str | None
    sender: str | None
    source_partition: int | None  # where the hub read it on ingress
    source_offset: int | None
    rejected_at: str | None
    redrive_count: int
    value_bytes: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeadLetterList:
    """What ``renkei dlq list`` found: the matching dead letters in topic order, and how many were scanned."""

    topic: str
    scanned: int
    dead_letters: list[DeadLetter] = field(default_factory=list)

    @property
    def by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.dead_letters:
            out[d.reason_code or "?"] = out.get(d.reason_code or "?", 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "scanned": self.scanned,
                "dead_letters": [d.to_json() for d in self.dead_letters], "by_reason": self.by_reason}


def dead_letter(record: Any) -> DeadLetter:
    """The metadata of one dead letter (never its value)."""
    h = renkei_headers(record.headers)
    return DeadLetter(
        partition=record.partition,
        offset=record.offset,
        timestamp=record.timestamp,
        time=iso(record.timestamp),
        reason_code=h.get("renkei.reason"),
        detail=h.get("renkei.detail"),
        message_id=h.get("renkei.message_id"),
        type=h.get("renkei.type"),
        sender=h.get("renkei.sender"),
        source_partition=_int(h.get("renkei.src.partition")),
        source_offset=_int(h.get("renkei.src.offset")),
        rejected_at=iso(_int(h.get("renkei.rejected_at"))),
        redrive_count=_int(h.get("renkei.redrive.count")) or 0,
        value_bytes=len(record.value or b""),
    )


def redrive_headers(record: Any, event_id: str) -> list[tuple[str, bytes]]:
    h = renkei_headers(record.headers)
    count = (_int(h.get("renkei.redrive.count")) or 0) + 1
    history = [x for x in (h.get("renkei.redrive.history") or "").split(",") if x] + [str(record.offset)]
    return [("renkei.redrive", str(record.offset).encode()), ("renkei.redrive.count", str(count).encode()),
            ("renkei.redrive.history", ",".join(history).encode()), ("renkei.ops.event", event_id.encode())]


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


async def _scan(settings: Settings, since: str | None, reason_code: str | None, limit: int | None,
                on_match: Any = None) -> tuple[list[DeadLetter], int]:
    """Dead letters matching the filters, in topic order; calls ``on_match(record)`` for each."""
    from aiokafka import TopicPartition

    topic = TopicNames(settings.kafka.topic_prefix).rejected
    window = Window(start_ms=parse_time(since) if since else None)
    consumer = scan_consumer(settings)
    await consumer.start()
    found: list[DeadLetter] = []
    scanned = 0
    try:
        tps = [TopicPartition(topic, p) for p in await partitions_of(consumer, topic)]
        marks = await high_watermarks(consumer, tps, kafka=settings.kafka)
        starts = {tp: await start_offset(consumer, tp, window, kafka=settings.kafka) for tp in tps}
        with progress(f"scanning {topic}", sum(marks[tp] - starts[tp] for tp in tps)) as advance:
            for tp in tps:
                async for r in read_range(consumer, tp, starts[tp], marks[tp]):
                    scanned += 1
                    advance()
                    if window.start_ms is not None and r.timestamp < window.start_ms:
                        continue
                    meta = dead_letter(r)
                    if reason_code and meta.reason_code != reason_code:
                        continue
                    found.append(meta)
                    if on_match is not None:
                        await on_match(r)
                    if limit is not None and len(found) >= limit:
                        return found, scanned
    finally:
        await consumer.stop()
    return found, scanned


async def list_dead_letters(settings: Settings, *, reason_code: str | None = None, since: str | None = None,
                            limit: int | None = None) -> DeadLetterList:
    found, scanned = await _scan(settings, since, reason_code, limit)
    return DeadLetterList(TopicNames(settings.kafka.topic_prefix).rejected, scanned, found)


async def redrive(settings: Settings, *, reason_code: str, reason: str, since: str | None = None,
                  dry_run: bool = False) -> dict[str, Any]:
    from infra.ops import ops_audit_topic
    from infra.platform.kafka import producer as make_producer

    if not reason_code:
        raise ConfigError("--reason-code is required for redrive: re-drive one kind of failure at a time")
    names = TopicNames(settings.kafka.topic_prefix)
    event = OpsEvent.new("redrive", reason, {"since": since, "reason_code": reason_code}, dry_run=dry_run,
                         detail={"topic": names.rejected, "into": names.ingress})
    producer = make_producer(settings)
    await producer.start()
    pending: list[Any] = []

    async def resend(record: Any) -> None:
        if not dry_run:
            pending.append(await producer.send(names.ingress, record.value, key=record.key,
                                               headers=redrive_headers(record, event.id)))

    found: list[DeadLetter] = []
    scanned = 0
    status = "failed"
    try:
        found, scanned = await _scan(settings, since, reason_code, None, resend)
        await asyncio.gather(*pending)
        status = "done"
    finally:
        counts = {"scanned": scanned, "matched": len(found), "redriven": len(pending),
                  "status": status}
        try:
            audit = await write_ops_event(settings, producer, event, counts)
        finally:
            await producer.stop()
    return {"topic": names.rejected, "into": names.ingress, "reason_code": reason_code, "dry_run": dry_run,
            "scanned": scanned, "matched": len(found), "redriven": counts["redriven"],
            "dead_letters": [d.to_json() for d in found], "audit": {"id": audit["id"], "topic": ops_audit_topic(settings.kafka.topic_prefix)}}


async def run(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "list":
        report = (await list_dead_letters(settings, reason_code=args.reason_code, since=args.since,
                                          limit=args.limit)).to_json()
        footer = f"{len(report['dead_letters'])} dead letter(s) of {report['scanned']} scanned"
        title = f"Dead letters on {report['topic']}"
    else:
        if not args.reason:
            raise ConfigError("--reason is required for redrive: say why, it goes into the ops audit trail")
        report = await redrive(settings, reason_code=args.reason_code, reason=args.reason, since=args.since,
                               dry_run=args.dry_run)
        footer = (f"{report['matched']} matched, {report['redriven']} re-driven to {report['into']}"
                  f"{' (dry run)' if args.dry_run else ''}; audit event {report['audit']['id']}")
        title = f"Re-drive {args.reason_code} from {report['topic']}"
    rows = [[d["offset"], d["time"], d["reason_code"], d["sender"], d["type"], d["message_id"],
             d["source_partition"], d["source_offset"], d["redrive_count"]] for d in report["dead_letters"]]
    emit(args, report, title, ["offset", "time", "reason", "sender", "type", "message id", "src p", "src offset",
                               "redrives"], rows, footer=footer)
    return 0
