"""``renkei inspect``: what is on a topic, as envelope metadata only.

Each record shows its position, sizes, ``renkei.*`` headers and, through
``infra.crypto.envelope.peek`` (no keys, no verification), the routing fields. No
token material at all: the subject shows only whether there is one, the Kafka
key (the subject token again, or a pseudonym) only its length; body bytes are
never shown, only their size, and neither is an answer's outcome. A leg the hub
forwarded under ids of its own says ``forwarded_leg: true``. Records that are
not envelopes say ``decodable: false`` and why.
"""

from __future__ import annotations

import argparse
from typing import Any

from infra.core.errors import ConfigError, Rejection
from infra.core.settings import Settings
from infra.ops import (
    emit,
    high_watermarks,
    iso,
    partitions_of,
    read_range,
    renkei_headers,
    scan_consumer,
    subject_shown,
)


def describe_record(record: Any) -> dict[str, Any]:
    """The safe view of one consumer record (``aiokafka.ConsumerRecord`` or alike)."""
    from infra.crypto.envelope import peek
    from schemas import codec

    value = record.value or b""
    out: dict[str, Any] = {
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "time": iso(record.timestamp),
        "key_bytes": None if record.key is None else len(record.key),
        "value_bytes": len(value),
        "headers": renkei_headers(record.headers),
    }
    try:
        meta = peek(value)
        raw = codec.decode(bytes(value), "envelope")
    except Rejection as exc:
        return out | {"decodable": False, "reason_code": exc.code}
    out["decodable"] = True
    out["envelope"] = {
        "message_id": meta.message_id,
        "correlation_id": meta.correlation_id,
        "type": meta.type,
        "sender": meta.sender,
        "recipient": meta.recipient,
        "recipients": list(meta.recipients),
        "subject": subject_shown(meta.subject),
        "data_item": meta.data_item,
        "legal_basis": meta.legal_basis,
        "procedure": meta.procedure,
        "created_at": meta.created_at.isoformat(),
        "expires_at": meta.expires_at.isoformat(),
        "sender_key_id": meta.sender_key_id,
        "recipient_key_id": meta.recipient_key_id,
        "wrap_key_ids": [w["recipient_key_id"] for w in raw.get("wraps") or ()],
        "hub_key_id": meta.hub_key_id,
        "countersigned": meta.hub_key_id is not None,
        "forwarded_leg": raw.get("leg") is not None,
        "body_bytes": len(raw["body"]),
    }
    return out


async def inspect_topic(settings: Settings, topic: str, *, partition: int | None = None,
                        from_offset: int = 0, limit: int = 50) -> dict[str, Any]:
    from aiokafka import TopicPartition

    consumer = scan_consumer(settings)
    await consumer.start()
    try:
        parts = await partitions_of(consumer, topic)
        if partition is not None:
            if partition not in parts:
                raise ConfigError(f"topic {topic} has no partition {partition} (it has {len(parts)})")
            parts = [partition]
        tps = [TopicPartition(topic, p) for p in parts]
        marks = await high_watermarks(consumer, tps, kafka=settings.kafka)
        records: list[dict[str, Any]] = []
        for tp in tps:
            async for r in read_range(consumer, tp, max(0, from_offset), marks[tp]):
                if len(records) >= limit:
                    break
                records.append(describe_record(r))
            if len(records) >= limit:
                break
    finally:
        await consumer.stop()
    return {"topic": topic, "partitions": [{"partition": tp.partition, "high_watermark": marks[tp]} for tp in tps],
            "records": records}


async def run(settings: Settings, args: argparse.Namespace) -> int:
    report = await inspect_topic(settings, args.topic, partition=args.partition,
                                 from_offset=args.from_offset, limit=args.limit)
    rows = []
    for r in report["records"]:
        env = r.get("envelope") or {}
        hdr = r["headers"]
        rows.append([r["partition"], r["offset"], r["time"], r["key_bytes"], r["value_bytes"],
                     env.get("type", f"[red]undecodable {r.get('reason_code')}[/red]"), env.get("sender"),
                     env.get("recipient"), env.get("message_id"), env.get("subject"), env.get("body_bytes"),
                     "yes" if env.get("countersigned") else ("no" if env else ""),
                     hdr.get("renkei.reason", "")])
    emit(args, report, f"{args.topic}", ["p", "offset", "time", "key B", "value B", "type", "sender", "recipient",
                                          "message id", "subject", "body B", "hub signed", "reason"], rows,
         footer=f"{len(rows)} record(s); watermarks "
                + ", ".join(f"{p['partition']}:{p['high_watermark']}" for p in report["partitions"]))
    return 0
