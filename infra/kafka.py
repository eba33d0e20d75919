"""Kafka client factories with settings that work on Apache Kafka and on the embedded Tansu broker.

Tansu holds each JoinGroup for about session_timeout/2, so session timeouts
stay at 6-10 s and request timeouts above them (docs/embedded.md).  The
producer is never idempotent or transactional: Tansu refuses InitProducerId,
and effects are made idempotent in PostgreSQL instead.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from infra.settings import KafkaSettings, Settings

MAX_MESSAGE_BYTES = 1_048_576


def admin_client(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**settings.kafka.client_options(), request_timeout_ms=30000)


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    opts: dict[str, Any] = dict(
        acks="all", enable_idempotence=False, linger_ms=5, max_batch_size=1_048_576,
        max_request_size=MAX_MESSAGE_BYTES + 65536, request_timeout_ms=30000,
    )
    opts.update(overrides)
    return AIOKafkaProducer(**settings.kafka.client_options(), **opts)


def consumer(settings: Settings, *topics: str, group_id: str | None, **overrides: Any) -> AIOKafkaConsumer:
    opts: dict[str, Any] = dict(
        group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest",
        session_timeout_ms=10000, heartbeat_interval_ms=1000, request_timeout_ms=40000,
        max_poll_interval_ms=300000, max_partition_fetch_bytes=MAX_MESSAGE_BYTES + 65536,
        fetch_max_bytes=52_428_800, rebalance_timeout_ms=10000,
    )
    opts.update(overrides)
    return AIOKafkaConsumer(*topics, **settings.kafka.client_options(), **opts)


def fetch_wait_ms(kafka: KafkaSettings, partitions: int = 1) -> int:
    """How long the broker may hold a fetch that found nothing, for a consumer of ``partitions``.

    The embedded broker (Tansu) answers a held fetch only when this wait ends, even
    if records arrive meanwhile: measured ~600 ms per consumer hop at faust's fixed
    1500 ms, ~120 ms at aiokafka's default 500 ms, ~6 ms at 20 ms.  Every hop of a
    flow pays it, so it is kept short (``kafka.fetch_wait_ms``; Apache Kafka answers
    as soon as data arrives and is not affected).  But every fetch costs the broker
    and the client per partition asked about, so a consumer of many inboxes (the
    simulated banks: one per bank) holds its fetches longer — 1 ms per 4 partitions,
    capped at ``kafka.fetch_wait_max_ms`` — and an idle platform of 1,000 banks does
    not spend its cores asking 50 times a second whether anything arrived.
    """
    return max(kafka.fetch_wait_ms, min(kafka.fetch_wait_max_ms, partitions // 4))
