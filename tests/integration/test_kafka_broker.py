"""The embedded Apache Kafka: durable across `renkei down`/`up` and a SIGKILL, usable by librdkafka
clients, and the Tansu fallback chosen (with one warning) only where Java is missing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic

from infra.core.errors import StackError
from infra.core.settings import KafkaSettings, Settings
from infra.platform.embedded import KAFKA_DIR, EmbeddedStack, read_state
from infra.platform.kafka import admin_client, consumer, producer
from infra.platform.processes import free_port, process_alive

pytestmark = pytest.mark.integration


def renkei(*args: str, broker: str = "kafka", timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_")} | {"RENKEI_BROKER": broker}
    return subprocess.run([sys.executable, "-m", "infra.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def client_settings(bootstrap: str, broker: str = "kafka") -> Settings:
    return Settings(kafka=KafkaSettings(bootstrap=bootstrap, broker=broker))


async def read_all(settings: Settings, topic: str, partitions: int, expect: int, timeout: float = 60) -> list:
    cons = consumer(settings, group_id=None)
    await cons.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        cons.assign(tps)
        await cons.seek_to_beginning(*tps)
        records: list = []
        deadline = asyncio.get_running_loop().time() + timeout
        while len(records) < expect and asyncio.get_running_loop().time() < deadline:
            for batch in (await cons.getmany(timeout_ms=1000)).values():
                records.extend(batch)
        # Nothing beyond what was expected either (a duplicate would show up here).
        for batch in (await cons.getmany(timeout_ms=1500)).values():
            records.extend(batch)
        return records
    finally:
        await cons.stop()


async def test_down_then_up_keeps_every_topic_record_and_committed_offset(tmp_path):
    state = str(tmp_path / "durable")
    up = renkei("up", "--detach", "--json", "--state-dir", state)
    assert up.returncode == 0, up.stderr
    try:
        await _fill_then_down_then_up(tmp_path, state, json.loads(up.stdout)["components"])
    finally:
        assert renkei("down", "--purge", "--json", "--state-dir", state).returncode == 0
    assert not (tmp_path / "durable" / KAFKA_DIR).exists()  # --purge deletes the broker's log too


async def _fill_then_down_then_up(tmp_path: Path, state: str, components: list[dict]) -> None:
    first = {c["name"]: c for c in components}
    settings = client_settings(first["broker"]["endpoint"])
    admin = admin_client(settings)
    await admin.start()
    try:
        cluster_id = (await admin.describe_cluster())["cluster_id"]
        await admin.create_topics([NewTopic("durable.events", 2, 1)])
        topics_before = set(await admin.list_topics())
    finally:
        await admin.close()
    prod = producer(settings)
    await prod.start()
    try:
        for i in range(20):
            await prod.send_and_wait("durable.events", f"event-{i}".encode(), partition=i % 2)
    finally:
        await prod.stop()
    member = consumer(settings, group_id="durable.group")
    await member.start()
    try:
        member.assign([TopicPartition("durable.events", p) for p in (0, 1)])
        await member.commit({TopicPartition("durable.events", 0): 7, TopicPartition("durable.events", 1): 3})
    finally:
        await member.stop()
    assert {"renkei.hub.ingress", "renkei.keys", "durable.events"} <= topics_before

    down = renkei("down", "--json", "--state-dir", state)
    assert down.returncode == 0, down.stderr
    assert not any(process_alive(c["pid"]) for c in first.values())
    assert (tmp_path / "durable" / KAFKA_DIR / "data" / "meta.properties").exists()

    again = renkei("up", "--detach", "--json", "--state-dir", state)
    assert again.returncode == 0, again.stderr
    broker = next(c for c in json.loads(again.stdout)["components"] if c["name"] == "broker")
    settings = client_settings(broker["endpoint"])
    admin = admin_client(settings)
    await admin.start()
    try:
        assert (await admin.describe_cluster())["cluster_id"] == cluster_id  # storage reused, not reformatted
        assert topics_before <= set(await admin.list_topics())
        committed = await admin.list_consumer_group_offsets(
            "durable.group", partitions=[TopicPartition("durable.events", p) for p in (0, 1)])
    finally:
        await admin.close()
    assert {tp.partition: om.offset for tp, om in committed.items()} == {0: 7, 1: 3}
    records = await read_all(settings, "durable.events", 2, 20)
    assert sorted(r.value.decode() for r in records) == sorted(f"event-{i}" for i in range(20))
    status = renkei("status", "--json", "--state-dir", state)
    assert status.returncode == 0, status.stdout + status.stderr


async def test_a_sigkilled_broker_restarted_loses_no_acknowledged_record(tmp_path):
    """acks=all + idempotent producer, the broker SIGKILLed mid-traffic and restarted on the same
    storage: every acknowledged record is there, and none twice."""
    stack = EmbeddedStack(tmp_path / "s", kafka_port=free_port(), with_postgres=False, broker="kafka",
                          die_with_parent=True)
    async with stack:
        settings = client_settings(stack.bootstrap)
        admin = admin_client(settings)
        await admin.start()
        await admin.create_topics([NewTopic("crash.events", 3, 1)])
        await admin.close()
        prod = producer(settings)
        await prod.start()
        acked: list[str] = []
        failed = 0

        async def send(i: int) -> None:
            nonlocal failed
            value = f"r{i}"
            try:
                fut = await prod.send("crash.events", value.encode(), key=str(i % 17).encode())
                await fut
                acked.append(value)
            except Exception:  # not acknowledged: may or may not be stored, never counted as acked
                failed += 1

        async def traffic() -> None:
            pending = []
            for i in range(3000):
                pending.append(asyncio.create_task(send(i)))
                if i % 20 == 0:
                    await asyncio.sleep(0.02)  # ~1,000 records/s: the crash lands mid-traffic
            await asyncio.gather(*pending)

        flow = asyncio.create_task(traffic())
        while len(acked) < 300:
            await asyncio.sleep(0.01)
        os.kill(stack.components["broker"].pid, signal.SIGKILL)
        acked_at_kill = len(acked)
        await stack.restart_broker()
        await asyncio.wait_for(flow, 300)
        # The broker gave the producer an id (InitProducerId): its retried batches are deduplicated.
        assert prod._txn_manager is not None and prod._txn_manager.producer_id >= 0
        await prod.stop()
        assert len(acked) > acked_at_kill  # traffic acknowledged before and after the crash
        records = await read_all(settings, "crash.events", 3, len(acked))
        values = [r.value.decode() for r in records]
        assert len(values) == len(set(values)), "a record was written twice"
        missing = set(acked) - set(values)
        assert not missing, f"{len(missing)} acknowledged records lost, e.g. {sorted(missing)[:5]}"
        assert len(acked) + failed == 3000


async def test_a_librdkafka_client_lists_produces_and_consumes(endpoints):
    """Banks and agencies use librdkafka-based clients (confluent-kafka, kcat): they work on the broker."""
    if endpoints.broker == "tansu":
        pytest.skip("librdkafka cannot talk to Tansu (ApiVersionRequest fails: docs/embedded.md)")
    from confluent_kafka import Consumer, Producer
    from confluent_kafka import TopicPartition as RdTopicPartition
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.admin import NewTopic as RdNewTopic

    topic = f"rdkafka.{uuid.uuid4().hex[:8]}"
    conf = {"bootstrap.servers": endpoints.bootstrap}

    def create_and_list() -> set[str]:
        admin = AdminClient(conf)
        for fut in admin.create_topics([RdNewTopic(topic, num_partitions=2, replication_factor=1)]).values():
            fut.result(30)
        return set(admin.list_topics(timeout=30).topics)

    assert topic in await asyncio.to_thread(create_and_list)

    def produce() -> int:
        prod = Producer(conf | {"acks": "all", "enable.idempotence": True})
        delivered = []
        for i in range(10):
            prod.produce(topic, value=f"rd-{i}".encode(), key=str(i).encode(),
                         on_delivery=lambda err, msg: delivered.append(err is None))
        prod.flush(30)
        return sum(delivered)

    assert await asyncio.to_thread(produce) == 10
    # The platform's own client (aiokafka) writes to the same topic; librdkafka reads both.
    aio = producer(client_settings(endpoints.bootstrap))
    await aio.start()
    await aio.send_and_wait(topic, b"from-aiokafka", key=b"a")
    await aio.stop()

    group = f"rdkafka.{uuid.uuid4().hex[:8]}"

    def consume() -> tuple[list[str], int]:
        cons = Consumer(conf | {"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
        cons.subscribe([topic])
        got: list[str] = []
        deadline = 60
        while len(got) < 11 and deadline > 0:
            msg = cons.poll(1.0)
            deadline -= 1
            if msg is None or msg.error():
                continue
            got.append(msg.value().decode())
        cons.commit(asynchronous=False)
        committed = cons.committed([RdTopicPartition(topic, 0), RdTopicPartition(topic, 1)], timeout=30)
        cons.close()
        return got, sum(max(tp.offset, 0) for tp in committed)

    got, committed = await asyncio.to_thread(consume)
    assert sorted(got) == sorted([f"rd-{i}" for i in range(10)] + ["from-aiokafka"])
    assert committed == 11


async def test_without_java_auto_falls_back_to_tansu_with_one_warning(tmp_path):
    warnings: list[str] = []
    stack = EmbeddedStack(tmp_path / "t", with_postgres=False, java=str(tmp_path / "no-java"),
                          die_with_parent=True, notify=warnings.append)
    async with stack:
        assert stack.broker_kind == "tansu"
        assert [c.kind for c in read_state(tmp_path / "t")] == ["tansu"]
        settings = client_settings(stack.bootstrap, "tansu")
        prod = producer(settings)
        assert prod._txn_manager is None  # not idempotent: Tansu refuses InitProducerId
        await prod.start()
        await prod.send_and_wait("fallback", b"still works")
        await prod.stop()
    assert len(warnings) == 1 and "no Java found" in warnings[0] and "do NOT survive a restart" in warnings[0]


async def test_kafka_asked_for_without_java_fails_and_says_what_to_install(tmp_path):
    stack = EmbeddedStack(tmp_path / "k", with_postgres=False, broker="kafka", java=str(tmp_path / "no-java"))
    with pytest.raises(StackError, match="openjdk-17-jre-headless"):
        await stack.start()
    assert read_state(tmp_path / "k") == []
    assert not Path(tmp_path / "k" / KAFKA_DIR).exists()
