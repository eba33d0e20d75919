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

from infra.settings import Settings

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
