"""Bank HTTP channel on the real broker and PostgreSQL; the bank's own system is a small TLS app here.

Every test gets its own connector (its own database) and its own bank system: nothing is shared between
tests but the platform (hub and registry processes, no bank simulator: the connector is the bank), so they
pass in any order.  The bank's system answers existence checks from its own customer data: which of its
customer references holds which account.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from connectors.bankhttp import BankHttpConnector
from connectors.bankhttp_bank import BankChannelClient
from connectors.httpsig import TO_RENKEI, ChannelKey, sign
from connectors.runtime import RetryPolicy, delivery_row_id
from infra.crypto.envelope import Message
from infra.domain.policy import BASIS_REGISTRATION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.platform.metrics_server import parse_text
from infra.tools.harness import eventually
from schemas import types as msg
from streams.client import BusClient
from tests.integration.test_connectors_support import (
    BankEndpoint,
    my_number,
    own_database,
    platform,  # noqa: F401 - the module's fixture
)

pytestmark = pytest.mark.integration

BANK, CODE = "bank-9002", "9002"
CONSENT = {"given_by": "PERSON", "method": "ONLINE_BANKING", "given_at": "2025-04-01T10:15:00+09:00",
           "evidence_ref": "OB-000123"}


@dataclass
class CustomerData:
    """The bank's own records: customer reference → the account numbers it holds; how to answer otherwise."""

    holdings: dict[str, set[str]] = field(default_factory=dict)
    busy_first: bool = False  # the first call of each Idempotency-Key answers 503
    raw: tuple[int, bytes, str] | None = None  # answer this (status, body, content type) instead
    seen_keys: set[str] = field(default_factory=set)


@dataclass
class Channel:
    """One test's bank: its system (endpoint + customer data), its connector and a signed client."""

    endpoint: BankEndpoint
    data: CustomerData
    connector: BankHttpConnector
    client: BankChannelClient

    @property
    def pool(self) -> Any:
        return self.connector.runtime.pool

    async def published(self) -> int:
        return await self.pool.fetchval("SELECT count(*) FROM participant_outbox WHERE type = $1",
                                        msg.REGISTRATION_REQUEST)

    async def done(self, key: str, timeout: float = 90) -> dict:
        async def answered() -> dict | None:
            status, state = await self.client.state(key)
            assert status == 200, state
            return state if state["status"] != "SENT" else None
        return await eventually(answered, timeout=timeout)


def registration(mn: str, number: str, ref: str = "cust-1", **over: Any) -> dict:
    body = {"operation": "REGISTER", "customer_ref": ref, "my_number": mn, "consent": CONSENT,
            "account": {"branch_code": "301", "account_type": "1", "account_number": number, "holder_kana": "ｲﾄｳ ﾕｷ"}}
    body.update(over)
    return body


def account(number: str, bank_code: str = CODE) -> dict:
    return {"bank_code": bank_code, "branch_code": "302", "account_type": "ORDINARY", "account_number": number,
            "holder_kana": "イトウ ユキ"}


@pytest.fixture
async def channel(platform) -> AsyncIterator[Channel]:
    data = CustomerData()

    async def answer(body: dict) -> web.Response:
        if data.raw is not None:
            status, raw, ctype = data.raw
            return web.Response(status=status, body=raw, content_type=ctype)
        key = endpoint.calls[-1][0]
        if data.busy_first and key not in data.seen_keys:
            data.seen_keys.add(key)
            return web.json_response({"error": "busy"}, status=503)
        ref = body["person"]["customer_ref"]
        holder = body["account"]["account_number"] in data.holdings.get(ref or "", set())
        exists = any(body["account"]["account_number"] in held for held in data.holdings.values())
        return web.json_response({"result": "CONFIRMED" if exists else "ACCOUNT_NOT_FOUND", "holder": holder})

    settings = await own_database(platform.settings, "bankhttp")
    endpoint = BankEndpoint(settings, BANK, answer)
    async with endpoint:
        connector = BankHttpConnector(settings, BANK, CODE, endpoint.url, timeout_s=3.0, bank_ca=endpoint.ca_file,
                                      token_timeout_s=5.0)
        connector.adapter.retry = RetryPolicy(max_attempts=4, base_s=0.2, cap_s=1.0)
        async with connector:
            async with BankChannelClient(connector.url, endpoint.keys, ca_file=endpoint.ca_file) as client:
                yield Channel(endpoint, data, connector, client)


def portal(platform: Any) -> BusClient:
    return BusClient(platform.settings, ["portal"],
                     group=f"{platform.settings.kafka.topic_prefix}.portal-{uuid.uuid4().hex[:6]}")


async def portal_registration(platform: Any, acct: dict, mn: str | None = None) -> Any:
    """STEP1 at the portal; the registry's answer."""
    async with portal(platform) as client:
        return await client.request(
            "portal", type=msg.REGISTRATION_REQUEST, to="registry", subject=await client.token_for("portal", mn or
                                                                                                  my_number()),
            body={"operation": "REGISTER", "account": acct, "channel": "PORTAL", "requested_at": datetime.now(UTC)},
            data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION, timeout=120)


async def send_registration(client: BusClient, acct: dict) -> None:
    """STEP1 at the portal without waiting for the answer (keep ``client`` open until the test has seen enough)."""
    await client.runtime.send("portal", [Message(
        body={"operation": "REGISTER", "account": acct, "channel": "PORTAL", "requested_at": datetime.now(UTC)},
        type=msg.REGISTRATION_REQUEST, to="registry", subject=await client.token_for("portal", my_number()),
        data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION)])


# --------------------------------------------------------------------------- authentication


async def test_unauthenticated_forged_stale_and_replayed_calls_are_401_and_publish_nothing(channel):
    """The attack: anyone who reaches the channel files a registration for a person. Each forged call is
    refused with its reason before it is read, nothing is published, and the bank's own signed traffic
    (interleaved) goes through and is answered."""
    c = channel
    path = "/v1/registrations"
    mn = my_number()
    c.data.holdings["cust-ok"] = {"0000701"}
    body = registration(mn, "701", ref="cust-ok")

    assert await c.client.link_customer("cust-ok", mn) == (200, {"customer_ref": "cust-ok", "status": "LINKED"})
    status, answer = await c.client.call("POST", path, body, headers={"Idempotency-Key": "k-anon"}, signed=False)
    assert (status, answer["reason"]) == (401, "AUTH_REQUIRED")
    thief = ChannelKey(c.endpoint.keys.current.key_id, b"guessed-secret-guessed-secret-32")
    for reason, header in (
            ("BAD_SIGNATURE", sign(thief, TO_RENKEI, "POST", path, b"{}")),
            ("UNKNOWN_KEY", sign(ChannelKey("bank-9003.1", c.endpoint.keys.current.secret), TO_RENKEI, "POST", path,
                                 b"{}")),
            ("EXPIRED", sign(c.endpoint.keys.current, TO_RENKEI, "POST", path, b"{}", now=time.time() - 600))):
        status, answer = await c.client.call("POST", path, raw=b"{}", signed=False,
                                             headers={"Idempotency-Key": f"k-{reason}", "Authorization": header})
        assert (status, answer["reason"]) == (401, reason), answer

    # a genuine call captured on the wire and sent again: the nonce was used, REPLAYED
    raw = json.dumps(body).encode()
    captured = {"Idempotency-Key": "k-good", "Authorization": sign(c.endpoint.keys.current, TO_RENKEI, "POST", path,
                                                                   raw)}
    status, answer = await c.client.call("POST", path, raw=raw, signed=False, headers=captured)
    assert status == 202 and answer["status"] == "SENT"
    status, answer = await c.client.call("POST", path, raw=raw, signed=False, headers=captured)
    assert (status, answer["reason"]) == (401, "REPLAYED")
    # signed for another body (a person's account swapped in): the signature no longer matches
    swapped = json.dumps(registration(mn, "999", ref="cust-ok")).encode()
    status, answer = await c.client.call("POST", path, raw=swapped, signed=False,
                                         headers={**captured, "Idempotency-Key": "k-swap"})
    assert (status, answer["reason"]) == (401, "BAD_SIGNATURE")
    # reading a request's state is authenticated too
    status, answer = await c.client.call("GET", f"{path}/k-good", signed=False)
    assert (status, answer["reason"]) == (401, "AUTH_REQUIRED")

    assert (await c.done("k-good"))["status"] == "DONE"
    assert await c.published() == 1  # the good call only
    assert await c.pool.fetchval("SELECT count(*) FROM connector_source_log") == 1
    assert await c.pool.fetchval("SELECT array_agg(idempotency_key) FROM bankhttp_requests") == ["k-good"]
    assert c.endpoint.refused == []  # the connector's own calls to the bank were signed
    metrics = await c.connector.runtime.metrics_text()
    samples = parse_text(metrics)  # label order is the exposition's business, not the test's
    for reason in ("AUTH_REQUIRED", "BAD_SIGNATURE", "UNKNOWN_KEY", "EXPIRED", "REPLAYED"):
        assert samples.get(f'renkei_connector_auth_failures_total{{worker="connector-bank-http",reason="{reason}"}}', 0) >= 1
    assert mn not in metrics


async def test_step3_registers_only_what_the_banks_records_say_the_person_holds(channel):
    """STEP3 goes through the same existence check: the registry asks this bank, which answers from its own
    customer data. An account of another customer is NOT_HOLDER and nothing is registered."""
    c = channel
    holder, other = my_number(), my_number()
    c.data.holdings["cust-h"] = {"0000711"}
    assert (await c.client.link_customer("cust-h", holder))[0] == 200
    assert (await c.client.link_customer("cust-o", other))[0] == 200
    assert (await c.client.register("k-own", registration(holder, "711", ref="cust-h")))[0] == 202
    assert (await c.client.register("k-other", registration(other, "711", ref="cust-o")))[0] == 202
    assert (await c.done("k-own"))["status"] == "DONE"
    assert (await c.done("k-other"))["status"] == "NOT_HOLDER"
    people = [b["person"]["customer_ref"] for _, b in c.endpoint.calls if b["account"]["account_number"] == "0000711"]
    assert sorted(people) == ["cust-h", "cust-o"]  # each check named the person as the bank knows them
    assert all(b["person"]["token"] for _, b in c.endpoint.calls)


async def test_bad_requests_are_400_with_a_reason_and_nothing_is_published(channel):
    c = channel
    mn = my_number()
    status, answer = await c.client.call("POST", "/v1/registrations", registration(mn, "721"))
    assert (status, answer["reason"]) == (400, "MISSING_IDEMPOTENCY_KEY")
    status, answer = await c.client.call("POST", "/v1/registrations", raw=b"operation=REGISTER",
                                         headers={"Idempotency-Key": "k-form"})
    assert (status, answer["reason"]) == (400, "MALFORMED")
    status, answer = await c.client.register("k-list", [registration(mn, "721")])  # JSON, not an object
    assert (status, answer["reason"]) == (400, "INVALID_FIELD")
    status, answer = await c.client.register("k-bad", registration("123456789012", "721"))
    assert (status, answer["reason"], answer["field"]) == (400, "INVALID_FIELD", "my_number")
    assert "123456789012" not in str(answer)
    no_consent = registration(mn, "721")
    del no_consent["consent"]
    status, answer = await c.client.register("k-consent", no_consent)
    assert (status, answer["reason"], answer["field"]) == (400, "INVALID_FIELD", "consent")
    status, answer = await c.client.call("POST", "/v1/customers", raw=b"\xff\xfe", headers={})
    assert (status, answer["reason"]) == (400, "MALFORMED")
    assert await c.published() == 0 and await c.pool.fetchval("SELECT count(*) FROM bankhttp_requests") == 0


async def test_503_while_the_token_authority_does_not_answer_then_the_same_key_goes_through(platform, channel):
    """A real outage: the hub process is stopped (SIGSTOP), so token issuance gets no answer."""
    c = channel
    mn = my_number()
    c.data.holdings["cust-u"] = {"0000731"}
    hub = platform.stack.components["hub"].pid
    os.kill(hub, signal.SIGSTOP)
    try:
        status, answer = await c.client.register("k-down", registration(mn, "731", ref="cust-u"))
        assert (status, answer["reason"]) == (503, "UNAVAILABLE")
        assert "retry with the same key" in answer["message"]
        assert await c.published() == 0
        assert (await c.client.state("k-down"))[0] == 404  # nothing was recorded for the key
    finally:
        os.kill(hub, signal.SIGCONT)
    status, answer = await c.client.register("k-down", registration(mn, "731", ref="cust-u"))
    assert status == 202, answer
    assert (await c.done("k-down"))["status"] == "DONE"
    assert await c.published() == 1


# --------------------------------------------------------------------------- existence checks to the bank


async def test_existence_check_is_signed_retried_and_carries_the_person(platform, channel):
    """STEP1 at the portal with an account at this bank: the check is posted (signed) with an Idempotency-Key,
    a 503 is retried with the same key, and the bank's holder check decides."""
    c = channel
    c.data.busy_first = True
    mn = my_number()
    assert (await c.client.link_customer("cust-p", mn))[0] == 200
    c.data.holdings["cust-p"] = {"0000042"}
    answer = await portal_registration(platform, account("0000042"), mn)
    assert answer.body["status"] == "DONE"
    calls = [(k, b) for k, b in c.endpoint.calls if b["account"]["account_number"] == "0000042"]
    assert len(calls) == 2 and calls[0] == calls[1]  # the 503, then the answer: the same key and body
    assert calls[0][1]["person"]["customer_ref"] == "cust-p"
    row = await c.pool.fetchrow("SELECT status, attempts, message_id FROM connector_deliveries ORDER BY id LIMIT 1")
    assert (row["status"], row["attempts"]) == ("ANSWERED", 2) and calls[0][0] == str(row["message_id"])

    # someone else registering this customer's account: the bank's record does not link them to it
    answer = await portal_registration(platform, account("0000042"), my_number())
    assert answer.body["status"] == "NOT_HOLDER"
    assert c.endpoint.calls[-1][1]["person"]["customer_ref"] is None  # not a customer the connector knows
    assert c.endpoint.refused == []


@pytest.mark.parametrize("status, raw, ctype", [
    (200, b"CONFIRMED", "text/plain"),  # not JSON
    (200, b'{"result": "MAYBE", "holder": true}', "application/json"),  # out of range
    (200, b'{"result": "CONFIRMED"}', "application/json"),  # no holder check: cannot confirm
    (200, b'["CONFIRMED", true]', "application/json"),  # JSON, not an object
], ids=["not-json", "out-of-range", "no-holder-flag", "not-an-object"])
async def test_a_bank_answer_that_cannot_be_read_is_dead_lettered_and_registers_nothing(platform, channel, status,
                                                                                        raw, ctype):
    c = channel
    c.data.raw = (status, raw, ctype)
    number = f"{uuid.uuid4().int % 10**7:07d}"

    async def dead() -> Any:
        return await c.pool.fetchrow("SELECT reason, detail, ref FROM connector_dead_letters "
                                     "WHERE connector = 'bank-http'")
    async with portal(platform) as client:
        await send_registration(client, account(number))
        letter = await eventually(dead, timeout=90)
    assert letter["reason"] == "MALFORMED" and letter["ref"].startswith("existence.check/")
    assert raw.decode() not in letter["detail"]
    assert await c.pool.fetchval("SELECT status FROM connector_deliveries") == "DEAD"
    assert await c.pool.fetchval("SELECT count(*) FROM participant_outbox WHERE type = $1", msg.EXISTENCE_ANSWER) == 0


async def test_two_banks_keep_their_keys_and_deliveries_apart(platform, channel):
    """A second bank's HTTP connector on the same server, in its own schema under its own role: the same
    Idempotency-Key is that bank's own request, its own channel key signs, an existence check for that bank
    goes to its endpoint only, and neither connector sees the other's requests."""
    c = channel
    settings = c.connector.runtime.settings
    other_data: dict[str, set[str]] = {"cust-9003": {"0000044"}}

    async def other_answer(body: dict) -> web.Response:
        held = body["account"]["account_number"] in other_data.get(body["person"]["customer_ref"] or "", set())
        return web.json_response({"result": "CONFIRMED", "holder": held})

    calls_before = len(c.endpoint.calls)
    async with BankEndpoint(settings, "bank-9003", other_answer) as other_bank:
        assert other_bank.keys.current.secret != c.endpoint.keys.current.secret
        other = BankHttpConnector(settings, "bank-9003", "9003", other_bank.url, timeout_s=3.0,
                                  bank_ca=other_bank.ca_file)
        other.adapter.retry = RetryPolicy(max_attempts=4, base_s=0.2, cap_s=1.0)
        async with other, BankChannelClient(other.url, other_bank.keys, ca_file=other_bank.ca_file) as client:
            mn = my_number()
            assert (await client.link_customer("cust-9003", mn))[0] == 200
            # bank-9002's key is no good at bank-9003's channel
            wrong = BankChannelClient(other.url, c.endpoint.keys, ca_file=other_bank.ca_file)
            async with wrong:
                status, answer = await wrong.register("k-1", registration(mn, "44", ref="cust-9003"))
            assert (status, answer["reason"]) == (401, "UNKNOWN_KEY")
            c.data.holdings["cust-1"] = {"0000045"}
            assert (await c.client.register("k-1", registration(my_number(), "45")))[0] == 202
            status, answer = await client.register("k-1", registration(mn, "44", ref="cust-9003"))
            assert status == 202 and answer["status"] == "SENT"  # not bank-9002's k-1

            async def done() -> dict | None:
                _, state = await client.state("k-1")
                return state if state["status"] != "SENT" else None
            assert (await eventually(done, timeout=90))["status"] == "DONE"
            assert (await c.done("k-1"))["status"] == "DONE"
            assert [r["bank_id"] for r in await other.runtime.pool.fetch(
                "SELECT bank_id FROM bankhttp_requests WHERE idempotency_key = 'k-1'")] == ["bank-9003"]
    assert len(other_bank.calls) == 1
    assert all(b["account"]["bank_code"] == CODE for _, b in c.endpoint.calls[calls_before:])
    assert [r["bank_id"] for r in await c.pool.fetch(
        "SELECT bank_id FROM bankhttp_requests WHERE idempotency_key = 'k-1'")] == ["bank-9002"]


async def test_bank_down_dead_letters_after_bounded_retries(platform, channel):
    c = channel
    adapter = c.connector.adapter
    adapter.bank_url = "https://127.0.0.1:9"  # discard port: connection refused, every attempt fails

    async def dead() -> Any:
        return await c.pool.fetchrow("SELECT reason, detail FROM connector_dead_letters WHERE connector = 'bank-http'")
    async with portal(platform) as client:
        await send_registration(client, account("0000043"))
        letter = await eventually(dead, timeout=90)
    assert letter["reason"] == "CHANNEL_UNAVAILABLE" and "gave up after 4 attempts" in letter["detail"]


async def test_a_deliverys_payload_is_sealed_at_rest_and_a_row_moved_to_another_person_does_not_open(
        platform, channel):
    """Issue 13 item 12: an existence check waiting for the bank (an account, a holder name, the customer's
    reference) is stored sealed under the bank's data key, bound to its row; the database operator who swaps two
    people's payloads gets both dead-lettered UNDECRYPTABLE — never sent to the bank as the other person's —, and
    a good registration goes through afterwards."""
    c = channel
    adapter = c.connector.adapter
    bank_url, adapter.bank_url = adapter.bank_url, "https://127.0.0.1:9"  # the bank is away: the checks wait
    people = {"cust-a": (my_number(), "0000061"), "cust-b": (my_number(), "0000062")}
    for ref, (mn, number) in people.items():
        assert (await c.client.link_customer(ref, mn))[0] == 200
        c.data.holdings[ref] = {number}

    async def both_dead() -> list | None:
        rows = await c.pool.fetch("SELECT id, payload, payload_ct, row_to_json(d)::text AS whole "
                                  "FROM connector_deliveries d WHERE status = 'DEAD' ORDER BY id")
        return rows if len(rows) == 2 else None
    async with portal(platform) as client:
        for mn, number in people.values():
            await client.runtime.send("portal", [Message(
                body={"operation": "REGISTER", "account": account(number), "channel": "PORTAL",
                      "requested_at": datetime.now(UTC)},
                type=msg.REGISTRATION_REQUEST, to="registry", subject=await client.token_for("portal", mn),
                data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION)])
        rows = await eventually(both_dead, timeout=90)
    for r in rows:  # the stored bytes name nobody
        assert r["payload"] is None and r["payload_ct"] is not None
        for ref, (mn, number) in people.items():
            for secret in (ref, mn, number, "イトウ"):
                assert secret not in r["whole"] and secret.encode() not in r["payload_ct"]

    # The insider swaps the two payloads, and the operator re-drives both with the bank back.
    a, b = rows
    await c.pool.execute("UPDATE connector_deliveries SET payload_ct = CASE id WHEN $1 THEN $4::bytea "
                         "ELSE $3::bytea END WHERE id IN ($1, $2)", a["id"], b["id"], a["payload_ct"], b["payload_ct"])
    calls_before = len(c.endpoint.calls)
    adapter.bank_url = bank_url
    await c.pool.execute("UPDATE connector_deliveries SET status = 'PENDING', attempts = 0, next_attempt_at = now() "
                         "WHERE id IN ($1, $2)", a["id"], b["id"])
    c.connector.runtime.wake(adapter.name)

    async def refused() -> list | None:
        rows = await c.pool.fetch("SELECT last_error FROM connector_deliveries WHERE id IN ($1, $2) "
                                  "AND status = 'DEAD' AND last_error LIKE 'UNDECRYPTABLE:%'", a["id"], b["id"])
        return rows if len(rows) == 2 else None
    await eventually(refused, timeout=60)
    assert len(c.endpoint.calls) == calls_before  # neither went to the bank

    mn = my_number()  # good traffic afterwards: delivered from its sealed payload, then the payload is dropped
    assert (await c.client.link_customer("cust-c", mn))[0] == 200
    c.data.holdings["cust-c"] = {"0000063"}
    assert (await portal_registration(platform, account("0000063"), mn)).body["status"] == "DONE"
    assert await c.pool.fetchval("SELECT payload_ct IS NULL AND payload IS NULL FROM connector_deliveries "
                                 "WHERE status = 'ANSWERED'")


async def test_delivery_payloads_stored_in_plain_before_are_sealed_at_start(channel):
    c = channel
    runtime = c.connector.runtime
    message_id, plain = uuid.uuid4(), {"customer_ref": "cust-old", "account": account("0000064")}
    await c.pool.execute(  # a row as the table held it before sealing (the migration kept it)
        "INSERT INTO connector_deliveries (connector, participant, message_id, correlation_id, type, reply_to, "
        "subject, data_item, basis, payload, status) VALUES ('bank-http', $1, $2, $3, $4, 'registry', 'tok', "
        "$5, $6, $7::jsonb, 'DEAD')", BANK, message_id, uuid.uuid4(), msg.EXISTENCE_CHECK, DATA_PUBLIC_FUNDS_ACCOUNT,
        BASIS_REGISTRATION, json.dumps(plain))
    assert await runtime.seal_legacy_deliveries() == 1
    row = await c.pool.fetchrow("SELECT payload, payload_ct FROM connector_deliveries WHERE message_id = $1",
                                message_id)
    assert row["payload"] is None and b"0000064" not in row["payload_ct"]
    assert runtime.sealer.open(BANK, delivery_row_id("bank-http", str(message_id)), "tok", row["payload_ct"]) == plain
