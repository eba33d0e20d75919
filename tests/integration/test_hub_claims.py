"""The hub's replay guard under concurrency, and its per-sender rate limit (issue 13.9, 13.8), on real PostgreSQL and Kafka.

- Two connections claim the same message id while the first has not committed: the second must
  wait and then see the first's claim (REPLAYED at another offset, a redelivery at the same one),
  never "new"; if the first rolls back, the second claims it.
- Two hub cores (``HubService``, each with its own pool, the real producer) process the two copies
  of each duplicate at the same time: each message is forwarded exactly once, on the wire too.
- A sender over its rate is refused RATE_LIMITED (dead-lettered, with a notice) while another
  sender's messages in the same batches are all forwarded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from aiokafka import TopicPartition

from infra.core.settings import Settings
from infra.crypto.envelope import Message, Sealer, peek
from infra.domain.participants import participants_of
from infra.domain.policy import BASIS_PROVISION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.domain.validation import generate_my_number
from infra.platform.kafka import admin_client, consumer
from infra.platform.kafka import producer as make_producer
from infra.platform.keystore import KeyStore
from infra.platform.stack import bootstrap_keys
from infra.platform.storage import create_pool, migrate
from infra.platform.topics import TopicNames, apply_layout, layout
from infra.tools.harness import eventually
from schemas import types as msg
from streams.gateway import Inbound
from streams.hub import HUB_MIGRATIONS, HubService, MessageClaim, claim_messages
from tests.integration.platform_fixtures import hub_pseudonyms

pytestmark = [pytest.mark.integration]

AGENCY, OTHER_AGENCY = "agency-city-minato", "agency-nta"
PROCEDURES = {AGENCY: "child-allowance", OTHER_AGENCY: "income-tax-refund"}  # each entitled to its own
PERSON = generate_my_number(random.Random(1309))  # synthetic, valid check digit


def claim(message_id: str, partition: int, offset: int) -> MessageClaim:
    return MessageClaim(message_id, partition, offset, True, None, msg.PROVISION_INQUIRY, AGENCY)


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(pg_dsn, min_size=3, max_size=3)
    await migrate(pool, "hub", HUB_MIGRATIONS)
    yield pool
    await pool.close()


async def blocked_on_a_lock(observer: asyncpg.Connection, conn: asyncpg.Connection, timeout: float = 30) -> None:
    """Wait until ``conn``'s statement is waiting for a row lock (not a fixed sleep)."""
    pid = conn.get_server_pid()
    await eventually(lambda: observer.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
                                               pid),
                     timeout=timeout, interval=0.02, what="the second claim to wait for the first")


@pytest.mark.parametrize("second_at, outcome", [((1, 20), (0, 10)), ((0, 10), (0, 10))],
                         ids=["replay at another offset", "redelivery at the same offset"])
async def test_a_claim_racing_an_uncommitted_claim_sees_it_once_committed(pool, second_at, outcome):
    mid = str(uuid.uuid4())
    async with pool.acquire() as first, pool.acquire() as second, pool.acquire() as observer:
        t1 = first.transaction()
        await t1.start()
        assert await claim_messages(first, [claim(mid, 0, 10)]) == {}  # new for the first worker
        t2 = second.transaction()
        await t2.start()
        racing = asyncio.create_task(claim_messages(second, [claim(mid, *second_at)]))
        await blocked_on_a_lock(observer, second)
        assert not racing.done()
        await t1.commit()
        # The first claim, with where it was seen: the hub's offset rule makes it REPLAYED or a redelivery.
        assert await asyncio.wait_for(racing, 30) == {mid: outcome}
        await t2.commit()
    assert await pool.fetchval("SELECT count(*) FROM hub_messages WHERE message_id = $1", uuid.UUID(mid)) == 1


async def test_a_claim_racing_a_claim_that_rolls_back_is_new(pool):
    mid, other = str(uuid.uuid4()), str(uuid.uuid4())
    async with pool.acquire() as first, pool.acquire() as second, pool.acquire() as observer:
        t1 = first.transaction()
        await t1.start()
        await claim_messages(first, [claim(mid, 0, 10)])
        t2 = second.transaction()
        await t2.start()
        racing = asyncio.create_task(claim_messages(second, [claim(other, 1, 5), claim(mid, 1, 20)]))
        await blocked_on_a_lock(observer, second)
        await t1.rollback()  # the first worker's batch failed: nothing of it stands
        assert await asyncio.wait_for(racing, 30) == {}  # both are ours
        await t2.commit()
    rows = await pool.fetch("SELECT message_id, src_partition, src_offset FROM hub_messages ORDER BY src_offset")
    assert {(str(r["message_id"]), r["src_partition"], r["src_offset"]) for r in rows} == {(other, 1, 5), (mid, 1, 20)}


# --- two hub cores on the real stack -------------------------------------------------------------------


@dataclasses.dataclass
class Hubs:
    settings: Settings
    first: HubService
    second: HubService
    producer: object


async def start_hubs(settings: Settings) -> Hubs:
    participants = participants_of(settings)
    admin = admin_client(settings)
    await admin.start()
    try:
        await apply_layout(admin, layout(TopicNames(settings.kafka.topic_prefix), participants), replication=1)
    finally:
        await admin.close()
    await bootstrap_keys(settings, participants)
    prod = make_producer(settings, linger_ms=2)
    await prod.start()
    return Hubs(settings, await HubService.create(settings, prod), await HubService.create(settings, prod), prod)


@pytest.fixture
async def hubs(settings: Settings) -> AsyncIterator[Hubs]:
    h = await start_hubs(settings)
    yield h
    await h.first.close()
    await h.second.close()
    await h.producer.stop()


def inquiries(settings: Settings, sender: str, n: int) -> list[bytes]:
    store = KeyStore.for_settings(settings)
    directory = store.local_directory(participants_of(settings))
    tokens = store.token_authority()
    now = datetime.now(UTC)
    return Sealer(store.keyset(sender), directory).seal_batch([
        Message(body={"procedure_code": PROCEDURES[sender], "purpose": None, "requested_at": now},
                type=msg.PROVISION_INQUIRY, to="registry", subject=tokens.token_for(PERSON, sender),
                data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION, procedure=PROCEDURES[sender])
        for _ in range(n)])


async def inbox_message_ids(settings: Settings, participant: str) -> list[str]:
    """Every envelope in a participant's inbox, read to the end (message ids, in order)."""
    tp = TopicPartition(TopicNames(settings.kafka.topic_prefix).inbox(participant), 0)
    cons = consumer(settings, group_id=None)
    await cons.start()
    try:
        cons.assign([tp])
        await cons.seek_to_beginning(tp)
        ids: list[str] = []
        high = None  # the fetch high watermark: end_offsets() is wrong on the embedded Tansu broker
        while high is None or await cons.position(tp) < high:
            for rec in (await cons.getmany(tp, timeout_ms=1000)).get(tp, []):
                ids.append(peek(rec.value).message_id)
            high = cons.highwater(tp)
        return ids
    finally:
        await cons.stop()


async def test_two_hub_cores_racing_on_duplicates_forward_each_message_once(hubs):
    envelopes = inquiries(hubs.settings, AGENCY, 12)
    forwarded = replayed = redelivered = 0
    for i, envelope in enumerate(envelopes):
        # The same message read by two workers: another partition and offset each (a replay racing itself).
        a, b = await asyncio.gather(hubs.first.process([Inbound(envelope, 0, 100 + i)]),
                                    hubs.second.process([Inbound(envelope, 1, 200 + i)]))
        forwarded += a.forwarded + b.forwarded
        replayed += a.by_reason.get("REPLAYED", 0) + b.by_reason.get("REPLAYED", 0)
        redelivered += a.redelivered + b.redelivered
    assert (forwarded, replayed, redelivered) == (len(envelopes), len(envelopes), 0)
    ids = [peek(e).message_id for e in envelopes]
    names = hub_pseudonyms(hubs.settings)  # each leg and record under the hub's own ids
    delivered = await inbox_message_ids(hubs.settings, "registry")
    assert sorted(delivered) == sorted(names.leg_message_id(m, "registry") for m in ids)  # each exactly once
    async with hubs.first.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM hub_messages") == len(ids)
        # one provision record per inquiry (REQUESTED, agency → registry), not two
        assert await conn.fetchval("SELECT count(*) FROM provision_records WHERE message_id = ANY($1::uuid[])",
                                   [names.record_message_id(m) for m in ids]) == len(ids)


async def test_a_sender_over_its_rate_is_refused_and_others_are_served(settings):
    limited = dataclasses.replace(settings, hub_sender_rate=1, hub_sender_burst=5)
    hubs = await start_hubs(limited)
    try:
        flood, other = inquiries(limited, AGENCY, 30), inquiries(limited, OTHER_AGENCY, 5)
        batch = [Inbound(e, 0, i) for i, e in enumerate(flood)]
        batch[3:3] = [Inbound(e, 1, i) for i, e in enumerate(other)]  # the other agency's, amid the flood
        stats = await hubs.first.process(batch)
        assert stats.by_reason == {"RATE_LIMITED": 25}
        assert stats.forwarded == 5 + 5
        delivered = set(await inbox_message_ids(limited, "registry"))
        legs = hub_pseudonyms(limited)  # each forwarded under its leg's own id
        assert {legs.leg_message_id(peek(e).message_id, "registry") for e in other} <= delivered
        assert len({legs.leg_message_id(peek(e).message_id, "registry") for e in flood} & delivered) == 5
        async with hubs.first.pool.acquire() as conn:
            refused = await conn.fetchval("SELECT count(*) FROM hub_messages WHERE reason = 'RATE_LIMITED'")
        assert refused == 25  # kept with their reason, never dropped
    finally:
        await hubs.first.close()
        await hubs.second.close()
        await hubs.producer.stop()
