"""Kafka client factories: settings for Apache Kafka, and the workarounds the Tansu fallback needs.

Producers wait for every in-sync replica (acks=all) and, on Apache Kafka, are idempotent:
a retried batch is written once, in order. Tansu refuses InitProducerId, so there they are
not (effects are idempotent in PostgreSQL either way, keyed by message id). Consumers keep
10 s session timeouts and request timeouts above them: Tansu holds each JoinGroup for about
session_timeout/2 (docs/embedded.md), and on Apache Kafka 10 s notices a dead member soon.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from infra.core.settings import KafkaSettings, Settings
from infra.platform.topics import MAX_RECORD_BYTES


def librdkafka_config(kafka: KafkaSettings) -> dict[str, str]:
    """The same connection for a librdkafka client (confluent-kafka): the ACL and SCRAM admin calls
    aiokafka has no API for (``infra.acl_apply``, ``infra.platform.cluster``)."""
    conf = {"bootstrap.servers": kafka.bootstrap, "security.protocol": kafka.security_protocol.lower()}
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        for key, value in (("ssl.ca.location", kafka.ssl_cafile), ("ssl.certificate.location", kafka.ssl_certfile),
                           ("ssl.key.location", kafka.ssl_keyfile)):
            if value:
                conf[key] = value
    if kafka.security_protocol.startswith("SASL"):
        conf |= {"sasl.mechanism": kafka.sasl_mechanism or "PLAIN", "sasl.username": kafka.sasl_username,
                 "sasl.password": kafka.sasl_password}
    return conf


def admin_client(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**settings.kafka.client_options(), request_timeout_ms=30000)


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    opts: dict[str, Any] = dict(
        acks="all", enable_idempotence=not settings.kafka.tansu, linger_ms=5, max_batch_size=1_048_576,
        max_request_size=MAX_RECORD_BYTES, request_timeout_ms=30000,
    )
    opts.update(overrides)
    return AIOKafkaProducer(**settings.kafka.client_options(), **opts)


def consumer(settings: Settings, *topics: str, group_id: str | None, **overrides: Any) -> AIOKafkaConsumer:
    opts: dict[str, Any] = dict(
        group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest",
        session_timeout_ms=10000, heartbeat_interval_ms=1000, request_timeout_ms=40000,
        max_poll_interval_ms=300000, max_partition_fetch_bytes=MAX_RECORD_BYTES,
        fetch_max_bytes=52_428_800, rebalance_timeout_ms=10000,
    )
    opts.update(overrides)
    return AIOKafkaConsumer(*topics, **settings.kafka.client_options(), **opts)


def fetch_wait_ms(kafka: KafkaSettings, partitions: int = 1) -> int:
    """How long the broker may hold a fetch that found nothing, for a consumer of ``partitions``.

    Apache Kafka answers a held fetch as soon as records arrive, so the wait is a long poll
    (``kafka.fetch_wait_ms``, 500 ms) that costs no latency and keeps an idle consumer cheap.

    Tansu answers a held fetch only when the wait ends, even if records arrive meanwhile:
    measured ~600 ms per consumer hop at faust's fixed 1500 ms, ~120 ms at 500 ms, ~6 ms at
    20 ms. Every hop of a flow pays it, so there it is kept short (``kafka.tansu_fetch_wait_ms``).
    But every fetch costs the broker and the client per partition asked about, so a consumer of
    many inboxes (the simulated banks: one per bank) holds its fetches longer — 1 ms per 4
    partitions, capped at ``kafka.tansu_fetch_wait_max_ms`` — and an idle platform of 1,000 banks
    does not spend its cores asking 50 times a second whether anything arrived.
    """
    if not kafka.tansu:
        return kafka.fetch_wait_ms
    return max(kafka.tansu_fetch_wait_ms, min(kafka.tansu_fetch_wait_max_ms, partitions // 4))


WHOLE_ASSIGNMENT_BACKOFF_S = 3600.0
"""How long aiokafka's fetcher may leave a partition with records still buffered out of its fetches (see below)."""


def fetch_whole_assignment(consumer: AIOKafkaConsumer) -> None:
    """Make a started ``consumer``'s fetches always name every assigned partition.

    For a loop that takes every buffered record at each poll (``getmany()`` over the whole
    assignment: the hub's, the participant runtime's). aiokafka's fetcher leaves a partition whose
    records are still buffered out of the next fetch once they have waited ``prefetch_backoff``
    (0.1 s, not a consumer option): a batch that takes longer than that to process sends a fetch
    for the other partitions, which Apache Kafka holds up to ``fetch_max_wait_ms`` when nothing
    arrives; when the loop then takes the buffered records, the partition cannot be fetched again
    until that held fetch returns (one fetch in flight per broker). A record produced to it
    meanwhile waited up to the whole wait: at low rate, for a consumer of several partitions,
    most of a hop. With the backoff this long the fetcher waits for the loop instead, and the
    moment the loop has taken everything it sends one fetch for every partition.

    The fetcher's attribute has no public setter in aiokafka 0.14 (``tests/unit/platform/
    test_kafka.py`` fails if it goes); only the FetchResults made after this call take it.
    """
    consumer._fetcher._prefetch_backoff = WHOLE_ASSIGNMENT_BACKOFF_S  # no public option: see above


FOLLOWER_FETCH_WAIT_MS = 5000
"""The held fetch of a follower of a topic that is quiet nearly always (the key directory), on Apache Kafka."""


def follower_fetch_wait_ms(kafka: KafkaSettings) -> int:
    """How long the broker may hold a fetch of a follower of one quiet partition (the key directory's).

    Every worker follows the keys topic, which changes a few times a day: at aiokafka's default wait
    (500 ms) each of them asked the broker twice a second whether anything arrived, for nothing. On
    Apache Kafka a held fetch returns as soon as a record arrives, and with one partition nothing can
    wait behind it, so a rotation or a revocation is seen as soon as before. Tansu answers only when the
    wait ends: there it stays aiokafka's default.
    """
    return 500 if kafka.tansu else max(kafka.fetch_wait_ms, FOLLOWER_FETCH_WAIT_MS)


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partitions of ``topic`` (empty if it does not exist), refreshing the consumer's metadata once.

    A consumer caches only the metadata it asked for. aiokafka's first request names no topic,
    which Tansu answers with every topic but Apache Kafka with none, and the next refresh is
    minutes away: so on a miss, ask again for every topic.
    """
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        await consumer._client.force_metadata_update()  # aiokafka has no public call for this
        parts = consumer.partitions_for_topic(topic)
    return set(parts or ())


async def end_offsets(kafka: KafkaSettings, consumer: AIOKafkaConsumer, tps: list[Any],
                      timeout_s: float = 15.0) -> dict[Any, int]:
    """The offset after the last record of each partition (the high watermark).

    Apache Kafka answers ``end_offsets`` (ListOffsets) exactly. Tansu's is wrong when the last
    batch holds several records, so there it is read from a fetch response instead.
    """
    if not tps:
        return {}
    if kafka.tansu:
        return await high_watermarks_by_fetch(consumer, tps, timeout_s)
    return dict(await consumer.end_offsets(tps))


async def high_watermarks_by_fetch(consumer: AIOKafkaConsumer, tps: list[Any],
                                   timeout_s: float = 15.0) -> dict[Any, int]:
    """The high watermark of each partition as a fetch response reports it (right on any broker).

    The consumer is assigned ``tps`` and left at their ends.
    """
    import time

    from infra.core.errors import StackError

    if not tps:
        return {}
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    deadline = time.monotonic() + timeout_s
    while True:
        await consumer.getmany(*tps, timeout_ms=200, max_records=1)
        marks = {tp: consumer.highwater(tp) for tp in tps}
        if all(v is not None for v in marks.values()):
            return marks
        if time.monotonic() > deadline:
            missing = ", ".join(f"{tp.topic}:{tp.partition}" for tp, v in marks.items() if v is None)
            raise StackError(f"no fetch response from the broker for {missing} within {timeout_s:.0f} s")
