"""Every rejection reason, reached through the running hub, with good traffic interleaved and delivered."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer

from infra.crypto.envelope import Sealer, peek
from infra.domain.policy import BASIS_PROVISION, BASIS_REGISTRATION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.platform.keystore import KeyStore
from infra.platform.topics import TopicNames
from schemas import codec
from schemas import types as msg
from tests.integration.test_flows import AGENCY, PROCEDURE, person

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def inquiry_body() -> dict:
    return {"procedure_code": PROCEDURE, "purpose": None, "requested_at": datetime.now(UTC)}


async def dead_letters(settings, want: set[str], *, timeout: float = 60) -> dict[str, dict[str, str]]:
    """Dead letters keyed by message id (or by detail for undecodable bytes), with their headers."""
    consumer = AIOKafkaConsumer(TopicNames(settings.kafka.topic_prefix).rejected,
                                bootstrap_servers=settings.kafka.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    found: dict[str, dict[str, str]] = {}
    deadline = time.monotonic() + timeout
    try:
        while not want <= set(found) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    headers = {k: v.decode() for k, v in r.headers}
                    found[headers.get("renkei.message_id") or r.value.hex()[:32]] = headers
    finally:
        await consumer.stop()
    return found


async def test_every_reason_is_dead_lettered_and_good_traffic_flows(bus, running_platform):
    settings = running_platform.settings
    store = KeyStore.for_settings(settings)
    directory = bus.runtime.directory
    agency = Sealer(store.keyset(AGENCY), directory)
    people = [person() for _ in range(6)]
    tokens = [await bus.token_for(AGENCY, mn) for mn in people]

    def sealed(sealer: Sealer, **kw) -> bytes:
        args = dict(type=msg.PROVISION_INQUIRY, to="registry", subject=tokens[0], data_item=DATA_PUBLIC_FUNDS_ACCOUNT,
                    basis=BASIS_PROVISION, procedure=PROCEDURE)
        args.update(kw)
        return sealer.seal(inquiry_body(), **args)

    bad: dict[str, bytes] = {}
    # UNAUTHORISED: an agency may not send a registration request for the portal's flow.
    bad["UNAUTHORISED"] = agency.seal(
        {"operation": "DELETE", "account": None, "channel": "PORTAL", "requested_at": datetime.now(UTC)},
        type=msg.REGISTRATION_REQUEST, to="registry", subject=tokens[0], data_item=DATA_PUBLIC_FUNDS_ACCOUNT,
        basis=BASIS_REGISTRATION)
    # SUSPENDED: a suspended agency is refused at once.
    bad["SUSPENDED"] = sealed(Sealer(store.keyset("agency-suspended"), directory),
                              subject=await bus.token_for("agency-city-minato", people[1]))
    # BAD_SIGNATURE: the body changed after signing.
    envelope = codec.decode(sealed(agency), "envelope")
    envelope["body"] = bytes([envelope["body"][0] ^ 1]) + envelope["body"][1:]
    bad["BAD_SIGNATURE"] = codec.encode("envelope", envelope)
    # EXPIRED: sealed an hour ago with a five-minute lifetime.
    bad["EXPIRED"] = sealed(Sealer(store.keyset(AGENCY), directory, clock=lambda: time.time() - 3600))
    # UNKNOWN_SCHEMA: a writer fingerprint no catalogue knows.
    good_bytes = sealed(agency)
    bad["UNKNOWN_SCHEMA"] = good_bytes[:2] + bytes(8) + good_bytes[10:]
    # MALFORMED: garbage.
    bad["MALFORMED"] = os.urandom(200)
    # REPLAYED: the very same envelope twice (the first copy is good and answered).
    replayed = sealed(agency, subject=tokens[2])

    ingress = TopicNames(settings.kafka.topic_prefix).ingress
    producer = bus.runtime.producer
    loop = asyncio.get_running_loop()
    # The sender of a verified but refused message gets a signed rejection notice in its inbox.
    notice = loop.create_future()
    bus.runtime.waiters[(AGENCY, peek(bad["UNAUTHORISED"]).correlation_id)] = notice
    good = []
    for i, value in enumerate(bad.values()):
        await producer.send_and_wait(ingress, value, key=b"k")
        # Good traffic interleaved: a real inquiry after each bad one.
        good.append(asyncio.create_task(bus.request(
            AGENCY, type=msg.PROVISION_INQUIRY, to="registry", subject=tokens[i % len(tokens)], body=inquiry_body(),
            data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION, timeout=90, procedure=PROCEDURE)))
    await producer.send_and_wait(ingress, replayed, key=b"k")
    await asyncio.sleep(0.5)
    await producer.send_and_wait(ingress, replayed, key=b"k")

    answers = await asyncio.gather(*good)
    assert len(answers) == len(bad) and all(a.meta.type == msg.PROVISION_RESPONSE for a in answers)

    expected = {reason: peek(value).message_id for reason, value in bad.items()
                if reason not in ("UNKNOWN_SCHEMA", "MALFORMED")}
    expected["REPLAYED"] = peek(replayed).message_id
    letters = await dead_letters(settings, set(expected.values()))
    for reason, message_id in expected.items():
        assert letters[message_id]["renkei.reason"] == reason, (reason, letters.get(message_id))
    assert {"UNKNOWN_SCHEMA", "MALFORMED"} <= {h["renkei.reason"] for h in letters.values()}

    opened = await asyncio.wait_for(notice, 60)
    assert opened.meta.type == msg.REJECTION_NOTICE and opened.meta.sender == "hub"
    assert opened.body["reason_code"] == "UNAUTHORISED"
    assert str(opened.body["original_message_id"]) == expected["UNAUTHORISED"]
