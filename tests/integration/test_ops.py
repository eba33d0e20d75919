"""Ops tools against the real broker: inspect, lag, dlq list/redrive, replay into a topic, group rewind.

Envelopes are sealed with the unit tests' World and produced with explicit
record timestamps; the tools themselves run with no keys at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.structs import OffsetAndMetadata

from infra.core.errors import ConfigError
from infra.core.settings import Settings
from infra.ops import Window, ops_audit_topic
from infra.platform.kafka import admin_client, consumer, producer
from infra.platform.topics import TopicNames
from tests.unit.envelope_world import World

REPO = Path(__file__).resolve().parents[2]
BASE_MS = (int(time.time()) - 3600) * 1000  # record timestamps an hour ago: store time differs from them


@pytest.fixture(scope="module")
def world() -> World:
    return World()


async def create_topics(settings: Settings, **partitions: int) -> None:
    admin = admin_client(settings)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, n, 1) for name, n in partitions.items()])
    finally:
        await admin.close()


async def produce(settings: Settings, topic: str, items: list[dict[str, Any]]) -> None:
    """Send every item (value, key, partition, timestamp_ms, headers) without waiting in between: real batches."""
    prod = producer(settings, linger_ms=20)
    await prod.start()
    try:
        futures = [await prod.send(topic, **item) for item in items]
        await asyncio.gather(*futures)
    finally:
        await prod.stop()


async def read_all(settings: Settings, topic: str, partitions: int = 1, idle_s: float = 1.5) -> list[Any]:
    c = consumer(settings, group_id=None)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        records: list[Any] = []
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            batch = await c.getmany(timeout_ms=300)
            for rs in batch.values():
                records.extend(rs)
                last = time.monotonic()
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        await c.stop()


def run_cli(settings: Settings, pg_dsn: str, state_dir: Path, *argv: str) -> tuple[int, Any, dict[str, Any]]:
    """Run ``renkei`` in a fresh process with an empty state folder and record every file it opens."""
    runner = (
        "import json, sys\n"
        "opened = []\n"
        "def hook(event, args):\n"
        "    if event == 'open' and isinstance(args[0], (str, bytes)):\n"
        "        opened.append(str(args[0]))\n"
        "sys.addaudithook(hook)\n"
        "from infra.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "keyish = [p for p in opened if p.endswith(('.keyset', '.key', '.secret', 'passphrase')) or '/keys/' in p]\n"
        "sys.stderr.write('\\nOPS-CHECK ' + json.dumps({'rc': rc, 'keystore': 'infra.platform.keystore' in sys.modules,\n"
        "                  'keyish': keyish}) + '\\n')\n"
        "sys.exit(rc)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_")}
    state_dir.mkdir(parents=True, exist_ok=True)
    common = ["--state-dir", str(state_dir), "--kafka-bootstrap", settings.kafka.bootstrap, "--pg-dsn", pg_dsn,
              "--topic-prefix", settings.kafka.topic_prefix, "--broker", settings.kafka.broker, "--json"]
    proc = subprocess.run([sys.executable, "-c", runner, *argv, *common], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    check = json.loads(proc.stderr.rsplit("OPS-CHECK ", 1)[1]) if "OPS-CHECK " in proc.stderr else {}
    assert check, proc.stderr
    out = json.loads(proc.stdout) if proc.returncode == 0 else proc.stderr
    return proc.returncode, out, check | {"stdout": proc.stdout}


def envelopes(world: World, n: int) -> list[bytes]:
    return [world.seal("agency-a", "registry", "provision.inquiry") for _ in range(n)]


# --------------------------------------------------------------------------- replay


async def test_replay_window_into_fresh_topic_has_exactly_the_window(settings: Settings, world: World,
                                                                    pg_dsn: str, tmp_path: Path) -> None:
    src, dst = f"{settings.kafka.topic_prefix}.src", f"{settings.kafka.topic_prefix}.replayed"
    await create_topics(settings, **{src: 2, dst: 1})
    values = envelopes(world, 12)
    # Produced out of timestamp order within each partition, as clock-skewed producers do.
    stamps = [BASE_MS + i * 1000 for i in range(12)]
    stamps[4], stamps[6] = stamps[6], stamps[4]
    await produce(settings, src, [{"value": v, "key": b"k%d" % i, "partition": i % 2, "timestamp_ms": stamps[i]}
                                  for i, v in enumerate(values)])
    start, end = BASE_MS + 3000, BASE_MS + 9000
    expected = {values[i] for i in range(12) if start <= stamps[i] < end}

    rc, dry, check = run_cli(settings, pg_dsn, tmp_path / "empty", "replay", "--topic", src, "--from", str(start),
                             "--to", str(end), "--into", dst, "--reason", "dry run first", "--dry-run")
    assert rc == 0, dry
    assert dry["dry_run"] is True and dry["totals"]["matched"] == len(expected) == 6
    assert dry["totals"]["produced"] == 0
    assert sorted(p["matched"] for p in dry["partitions"]) == [3, 3]
    assert check["keystore"] is False and check["keyish"] == []

    iso_from = "{}".format(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start / 1000))) + ".000+00:00"
    rc, report, check = run_cli(settings, pg_dsn, tmp_path / "empty", "replay", "--topic", src, "--from", iso_from,
                                "--to", str(end), "--into", dst, "--reason", "INC-42 registry missed a window")
    assert rc == 0, report
    assert check["keystore"] is False and check["keyish"] == []
    assert report["totals"]["produced"] == 6

    replayed = await read_all(settings, dst)
    assert {r.value for r in replayed} == expected and len(replayed) == 6
    source = {v: (i % 2, stamps[i]) for i, v in enumerate(values)}
    for r in replayed:
        headers = dict(r.headers)
        topic, partition, offset = headers["renkei.replay"].decode().rsplit(":", 2)
        assert topic == src and int(partition) == source[r.value][0]
        assert int(headers["renkei.replay.ts"]) == source[r.value][1]
        assert headers["renkei.ops.event"].decode() == report["audit"]["id"]

    audit = [json.loads(r.value) for r in await read_all(settings, ops_audit_topic(settings.kafka.topic_prefix))]
    assert [(a["what"], a["dry_run"]) for a in audit] == [("replay", True), ("replay", False)]
    assert audit[1]["reason"] == "INC-42 registry missed a window" and audit[1]["counts"]["produced"] == 6
    assert audit[1]["who"] and audit[1]["window"]["from_ms"] == start and audit[1]["window"]["to_ms"] == end


async def test_replay_requires_a_reason_and_an_existing_target(settings: Settings, pg_dsn: str,
                                                               tmp_path: Path) -> None:
    from infra.ops.replay import replay_into

    src = f"{settings.kafka.topic_prefix}.src"
    await create_topics(settings, **{src: 1})
    with pytest.raises(ConfigError, match="--reason"):
        await replay_into(settings, src, Window(start_ms=BASE_MS), src, reason="  ")
    with pytest.raises(ConfigError, match="does not exist"):
        await replay_into(settings, src, Window(start_ms=BASE_MS), f"{src}.nope", reason="why")


# --------------------------------------------------------------------------- inspect


async def test_inspect_shows_metadata_never_bodies_or_full_subjects(settings: Settings, world: World, pg_dsn: str,
                                                                    tmp_path: Path) -> None:
    names = TopicNames(settings.kafka.topic_prefix)
    await create_topics(settings, **{names.rejected: 1})
    sealed = world.seal("agency-a", "registry", "provision.inquiry")
    forwarded = world.forward(world.seal("agency-a", "registry", "provision.inquiry"))
    garbage = b"not an envelope at all"
    subject = world.token("agency-a")
    headers = [("renkei.reason", b"BAD_SIGNATURE"), ("renkei.detail", b"origin signature does not verify"),
               ("renkei.src.partition", b"2"), ("renkei.src.offset", b"17"), ("other", b"not shown")]
    await produce(settings, names.rejected, [
        {"value": sealed, "key": subject.encode(), "timestamp_ms": BASE_MS, "headers": headers},
        {"value": forwarded, "key": b"x", "timestamp_ms": BASE_MS + 1},
        {"value": garbage, "key": None, "timestamp_ms": BASE_MS + 2, "headers": [("renkei.reason", b"MALFORMED")]},
    ])

    rc, out, check = run_cli(settings, pg_dsn, tmp_path / "empty", "inspect", names.rejected, "--limit", "10")
    assert rc == 0, out
    assert check["keystore"] is False and check["keyish"] == []
    first, second, third = out["records"]
    env = first["envelope"]
    assert first["decodable"] is True and env["type"] == "provision.inquiry" and env["sender"] == "agency-a"
    assert env["recipient"] == "registry" and env["countersigned"] is False and env["body_bytes"] > 0
    assert env["subject"] == "present" and first["key_bytes"] == len(subject)
    assert subject[:4] not in json.dumps(out)  # no token material at all
    assert first["headers"] == {"renkei.reason": "BAD_SIGNATURE", "renkei.detail": "origin signature does not verify",
                                "renkei.src.partition": "2", "renkei.src.offset": "17"}
    assert second["envelope"]["countersigned"] is True and second["envelope"]["hub_key_id"]
    assert third["decodable"] is False and third["reason_code"] == "MALFORMED" and "envelope" not in third
    # Nothing secret in the whole output: no full subject, no ciphertext, no key bytes.
    from schemas import codec

    text = check["stdout"]
    assert subject not in text
    for value in (sealed, forwarded):
        body = codec.decode(value, "envelope")["body"]
        for rendering in (body.hex(), repr(body)[2:40], body[:24].decode("latin-1")):
            assert rendering not in text
    assert "not shown" not in text and "not an envelope" not in text


# --------------------------------------------------------------------------- lag


async def test_lag_is_high_watermark_minus_committed(settings: Settings) -> None:
    from infra.ops.lag import consumer_lag

    topic, group = f"{settings.kafka.topic_prefix}.work", f"{settings.kafka.topic_prefix}.workers"
    await create_topics(settings, **{topic: 2})
    await produce(settings, topic, [{"value": b"v", "partition": 0} for _ in range(7)]
                  + [{"value": b"v", "partition": 1} for _ in range(3)])
    committer = consumer(settings, group_id=group)
    await committer.start()
    committer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    await committer.commit({TopicPartition(topic, 0): OffsetAndMetadata(4, ""),
                            TopicPartition(topic, 1): OffsetAndMetadata(1, "")})
    await committer.stop()

    report = await consumer_lag(settings, group)
    (g,) = report["groups"]
    rows = {(p["topic"], p["partition"]): p for p in g["partitions"]}
    assert rows[(topic, 0)] == {"topic": topic, "partition": 0, "committed": 4, "high_watermark": 7, "lag": 3,
                                "owner": None}
    assert rows[(topic, 1)] == {"topic": topic, "partition": 1, "committed": 1, "high_watermark": 3, "lag": 2,
                                "owner": None}
    assert g["total_lag"] == 5 and g["members"] == 0


# --------------------------------------------------------------------------- rewind


async def _timed_topic(settings: Settings, name: str) -> str:
    topic = f"{settings.kafka.topic_prefix}.{name}"
    await create_topics(settings, **{topic: 2})
    await produce(settings, topic, [{"value": b"v%d" % i, "partition": i % 2, "timestamp_ms": BASE_MS + i * 1000}
                                    for i in range(10)])
    return topic


async def _committed(settings: Settings, group: str, topic: str) -> dict[int, int]:
    admin = admin_client(settings)
    await admin.start()
    try:
        got = await admin.list_consumer_group_offsets(group, partitions=[TopicPartition(topic, p) for p in (0, 1)])
    finally:
        await admin.close()
    return {tp.partition: om.offset for tp, om in got.items()}


async def test_rewind_moves_an_idle_groups_offsets_to_the_window_start(settings: Settings, pg_dsn: str,
                                                                       tmp_path: Path) -> None:
    topic = await _timed_topic(settings, "rewind")
    group = f"{settings.kafka.topic_prefix}.idle"
    committer = consumer(settings, group_id=group)
    await committer.start()
    committer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    await committer.commit({TopicPartition(topic, 0): OffsetAndMetadata(5, ""),
                            TopicPartition(topic, 1): OffsetAndMetadata(5, "")})
    await committer.stop()

    # Records i at BASE+i s on partition i % 2: from BASE+5 s the first is i=5 (p1 offset 2), then i=6 (p0 offset 3).
    args = ("replay", "--topic", topic, "--from", str(BASE_MS + 5000), "--rewind-group", group, "--reason", "INC-7")
    rc, dry, _ = run_cli(settings, pg_dsn, tmp_path / "s", *args, "--dry-run")
    assert rc == 0, dry
    assert [(p["partition"], p["committed_before"], p["target"]) for p in dry["partitions"]] == [(0, 5, 3), (1, 5, 2)]
    assert await _committed(settings, group, topic) == {0: 5, 1: 5}

    rc, report, _ = run_cli(settings, pg_dsn, tmp_path / "s", *args)
    assert rc == 0, report
    assert [p["committed_after"] for p in report["partitions"]] == [3, 2]
    assert await _committed(settings, group, topic) == {0: 3, 1: 2}


async def test_rewind_refused_while_a_member_is_active(settings: Settings, pg_dsn: str, tmp_path: Path) -> None:
    from infra.ops.replay import GroupActive, rewind_group

    topic = await _timed_topic(settings, "busy")
    group = f"{settings.kafka.topic_prefix}.busy"
    member = consumer(settings, topic, group_id=group)
    await member.start()
    try:
        while not member.assignment():
            await asyncio.sleep(0.1)
        await member.getmany(timeout_ms=1000)
        await member.commit({TopicPartition(topic, 0): 5, TopicPartition(topic, 1): 5})
        with pytest.raises(GroupActive, match="active member"):
            await rewind_group(settings, topic, Window(start_ms=BASE_MS), group, reason="INC-8")
        rc, err, _ = run_cli(settings, pg_dsn, tmp_path / "s", "replay", "--topic", topic, "--from", str(BASE_MS),
                             "--rewind-group", group, "--reason", "INC-8")
        assert rc == 1 and "active member" in err
        # Even with --evict-stale-members a live member survives the rebalance and the rewind is refused.
        with pytest.raises(GroupActive, match="live member"):
            await rewind_group(settings, topic, Window(start_ms=BASE_MS), group, reason="INC-8", evict_stale=True)
    finally:
        await member.stop()
    assert await _committed(settings, group, topic) == {0: 5, 1: 5}


async def test_rewind_evicts_a_stale_member_the_embedded_broker_keeps(settings: Settings) -> None:
    """A lone member that left stays listed on Tansu (Apache Kafka drops it: skipped there); --evict-stale-members
    rejoins, then commits."""
    from infra.ops.lag import describe_group
    from infra.ops.replay import rewind_group

    topic = await _timed_topic(settings, "stale")
    group = f"{settings.kafka.topic_prefix}.stale"
    member = consumer(settings, topic, group_id=group)
    await member.start()
    while not member.assignment():
        await asyncio.sleep(0.1)
    await member.commit({TopicPartition(topic, 0): 5, TopicPartition(topic, 1): 5})
    await member.stop()

    admin = admin_client(settings)
    await admin.start()
    try:
        _, members = await describe_group(admin, group)
    finally:
        await admin.close()
    if members == 0:
        pytest.skip("this broker drops members that leave (Apache Kafka); the plain path covers it")
    report = await rewind_group(settings, topic, Window(start_ms=BASE_MS + 5000), group, reason="INC-9",
                                evict_stale=True)
    assert [p["committed_after"] for p in report["partitions"]] == [3, 2]
    assert await _committed(settings, group, topic) == {0: 3, 1: 2}


# --------------------------------------------------------------------------- dead letters


def _dead_letter_items(world: World) -> tuple[list[dict[str, Any]], list[bytes]]:
    def headers(reason: str, offset: int, meta: bool = True) -> list[tuple[str, bytes]]:
        h = [("renkei.reason", reason.encode()), ("renkei.detail", b"a safe detail"),
             ("renkei.src.partition", b"1"), ("renkei.src.offset", str(offset).encode()),
             ("renkei.rejected_at", str(BASE_MS).encode())]
        if meta:
            h += [("renkei.message_id", b"m-%d" % offset), ("renkei.type", b"provision.inquiry"),
                  ("renkei.sender", b"agency-a")]
        return h

    values = envelopes(world, 3) + [b"garbage bytes"]
    reasons = ["BAD_SIGNATURE", "EXPIRED", "BAD_SIGNATURE", "MALFORMED"]
    items = [{"value": v, "key": b"key-%d" % i, "timestamp_ms": BASE_MS + i * 1000,
              "headers": headers(reasons[i], 100 + i, meta=reasons[i] != "MALFORMED")}
             for i, v in enumerate(values)]
    return items, values


async def test_dlq_list_filters_by_reason_and_never_prints_values(settings: Settings, world: World, pg_dsn: str,
                                                                 tmp_path: Path) -> None:
    names = TopicNames(settings.kafka.topic_prefix)
    await create_topics(settings, **{names.rejected: 1, names.ingress: 2})
    items, values = _dead_letter_items(world)
    await produce(settings, names.rejected, items)

    rc, out, check = run_cli(settings, pg_dsn, tmp_path / "s", "dlq", "list", "--reason-code", "BAD_SIGNATURE")
    assert rc == 0, out
    assert check["keystore"] is False and check["keyish"] == []
    assert [(d["offset"], d["reason_code"], d["message_id"], d["source_offset"]) for d in out["dead_letters"]] == [
        (0, "BAD_SIGNATURE", "m-100", 100), (2, "BAD_SIGNATURE", "m-102", 102)]
    assert out["dead_letters"][0]["sender"] == "agency-a" and out["dead_letters"][0]["type"] == "provision.inquiry"
    for v in values[:3]:
        assert v.hex()[:40] not in check["stdout"] and v[8:40].decode("latin-1") not in check["stdout"]
    assert "garbage" not in check["stdout"]

    rc, out, _ = run_cli(settings, pg_dsn, tmp_path / "s", "dlq", "list", "--since", str(BASE_MS + 1500))
    assert [d["offset"] for d in out["dead_letters"]] == [2, 3] and out["by_reason"] == {"BAD_SIGNATURE": 1,
                                                                                          "MALFORMED": 1}


async def test_dlq_redrive_reproduces_originals_to_ingress(settings: Settings, world: World, pg_dsn: str,
                                                           tmp_path: Path) -> None:
    names = TopicNames(settings.kafka.topic_prefix)
    await create_topics(settings, **{names.rejected: 1, names.ingress: 2})
    items, values = _dead_letter_items(world)
    await produce(settings, names.rejected, items)

    base = ("dlq", "redrive", "--reason-code", "BAD_SIGNATURE")
    rc, err, _ = run_cli(settings, pg_dsn, tmp_path / "s", *base)
    assert rc == 2 and "--reason is required" in err
    rc, dry, _ = run_cli(settings, pg_dsn, tmp_path / "s", *base, "--reason", "key directory fixed", "--dry-run")
    assert rc == 0 and dry["matched"] == 2 and dry["redriven"] == 0
    rc, out, _ = run_cli(settings, pg_dsn, tmp_path / "s", *base, "--reason", "key directory fixed")
    assert rc == 0 and out["redriven"] == 2, out

    ingress = await read_all(settings, names.ingress, partitions=2)
    assert sorted(r.value for r in ingress) == sorted([values[0], values[2]])
    by_value = {r.value: r for r in ingress}
    for dlq_offset in (0, 2):
        r = by_value[values[dlq_offset]]
        h = dict(r.headers)
        assert r.key == b"key-%d" % dlq_offset
        assert h["renkei.redrive"] == str(dlq_offset).encode() and h["renkei.redrive.count"] == b"1"
        assert h["renkei.redrive.history"] == str(dlq_offset).encode()
        assert h["renkei.ops.event"].decode() == out["audit"]["id"]
    audit = [json.loads(r.value) for r in await read_all(settings, ops_audit_topic(settings.kafka.topic_prefix))]
    assert [(a["what"], a["dry_run"], a["counts"]["redriven"]) for a in audit] == [("redrive", True, 0),
                                                                                   ("redrive", False, 2)]
    assert audit[1]["reason"] == "key directory fixed" and audit[1]["window"]["reason_code"] == "BAD_SIGNATURE"
