"""Bank HTTP channel on the real broker and PostgreSQL; the bank's own system is a small aiohttp app here."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import web

from connectors.bankhttp import BankHttpConnector
from connectors.client import BusClient
from connectors.runtime import RetryPolicy, start_site
from infra.envelope import Message
from infra.policy import BASIS_REGISTRATION, DATA_PUBLIC_FUNDS_ACCOUNT
from schemas import types as T
from tests.integration.test_connectors_support import eventually, my_number, own_database
from tests.integration.test_connectors_support import platform  # noqa: F401 - the module's fixture

pytestmark = pytest.mark.integration

BANK, CODE = "bank-9002", "9002"


class BankSystem:
    """The bank's side: answers existence checks; the first call of each key fails with 503."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []  # (Idempotency-Key, reference)

    async def check(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = request.headers["Idempotency-Key"]
        first = all(k != key for k, _ in self.calls)
        self.calls.append((key, body["reference"]))
        if first:
            return web.json_response({"error": "busy"}, status=503)
        return web.json_response({"result": "CONFIRMED"})


@pytest.fixture(scope="module")
async def bank(platform):
    system = BankSystem()
    app = web.Application()
    app.add_routes([web.post("/v1/existence-checks", system.check)])
    runner, bank_url = await start_site(app, "127.0.0.1", 0)
    settings = await own_database(platform.settings, "bankhttp")
    connector = BankHttpConnector(settings, BANK, CODE, bank_url, timeout_s=3.0)
    connector.adapter.retry = RetryPolicy(max_attempts=4, base_s=0.2, cap_s=1.0)
    try:
        async with connector:
            yield connector, system
    finally:
        await runner.cleanup()


def registration(mn: str, **over) -> dict:
    body = {"operation": "REGISTER", "customer_ref": "cust-1", "my_number": mn,
            "account": {"branch_code": "301", "account_type": "1", "account_number": "765", "holder_kana": "ｲﾄｳ ﾕｷ"}}
    body.update(over)
    return body


async def test_registration_request_is_validated_published_once_and_answered(bank):
    connector, _ = bank
    async with aiohttp.ClientSession() as http:
        url = f"{connector.url}/v1/registrations"
        async with http.post(url, json=registration(my_number())) as resp:
            assert resp.status == 400 and (await resp.json())["reason"] == "MISSING_IDEMPOTENCY_KEY"
        async with http.post(url, json=registration("123456789012"), headers={"Idempotency-Key": "k-bad"}) as resp:
            body = await resp.json()
            assert resp.status == 400 and body["reason"] == "INVALID_FIELD" and body["field"] == "my_number"
            assert "123456789012" not in str(body)
        mn = my_number()
        async with http.post(url, json=registration(mn), headers={"Idempotency-Key": "k-1"}) as resp:
            assert resp.status == 202 and (await resp.json())["status"] == "SENT"
        async with http.post(url, json=registration(mn), headers={"Idempotency-Key": "k-1"}) as resp:
            assert resp.status == 200  # the same key: the same request, not a second one

        async def done():
            async with http.get(f"{url}/k-1") as resp:
                state = await resp.json()
                return state if state["status"] != "SENT" else None
        assert (await eventually(done, timeout=60))["status"] == "DONE"
    assert await connector.runtime.pool.fetchval(
        "SELECT count(*) FROM connector_source_log WHERE source_key = 'http/bank-9002/k-1'") == 1
    assert await connector.runtime.pool.fetchval("SELECT count(*) FROM participant_outbox WHERE type = 'registration.request'") == 1


async def test_existence_check_is_posted_with_idempotency_key_retried_and_answered(platform, bank):
    connector, system = bank
    account = {"bank_code": CODE, "branch_code": "302", "account_type": "ORDINARY", "account_number": "0000042",
               "holder_kana": "イトウ ユキ"}
    async with BusClient(platform.settings, ["portal"], group=f"{platform.settings.kafka.topic_prefix}.portal-h") as portal:
        token = await portal.token_for("portal", my_number())
        answer = await portal.request(
            "portal", type=T.REGISTRATION_REQUEST, to="registry", subject=token,
            body={"operation": "REGISTER", "account": account, "channel": "PORTAL", "requested_at": datetime.now(UTC)},
            data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION, timeout=90)
    assert answer.body["status"] == "DONE"
    # first attempt 503, second answered; both carried the same Idempotency-Key (the message id)
    assert len(system.calls) == 2 and system.calls[0] == system.calls[1]
    row = await connector.runtime.pool.fetchrow(
        "SELECT status, attempts, message_id FROM connector_deliveries WHERE connector = 'bank-http'")
    assert (row["status"], row["attempts"]) == ("ANSWERED", 2)
    assert system.calls[0][0] == str(row["message_id"])


async def test_two_banks_keep_their_keys_and_deliveries_apart(platform, bank):
    """A second bank's HTTP connector on the same server, in its own schema under its own role: the same
    Idempotency-Key is that bank's own request, an existence check for that bank goes to its endpoint
    only, and neither connector sees the other's requests."""
    connector, system = bank
    other_system = BankSystem()
    app = web.Application()
    app.add_routes([web.post("/v1/existence-checks", other_system.check)])
    runner, other_url = await start_site(app, "127.0.0.1", 0)
    other = BankHttpConnector(connector.runtime.settings, "bank-9003", "9003", other_url, timeout_s=3.0)
    other.adapter.retry = RetryPolicy(max_attempts=4, base_s=0.2, cap_s=1.0)
    calls_before = len(system.calls)
    try:
        async with other, aiohttp.ClientSession() as http:
            url = f"{other.url}/v1/registrations"
            async with http.post(url, json=registration(my_number()), headers={"Idempotency-Key": "k-1"}) as resp:
                assert resp.status == 202 and (await resp.json())["status"] == "SENT"  # not bank-9002's k-1
            account = {"bank_code": "9003", "branch_code": "304", "account_type": "ORDINARY",
                       "account_number": "0000044", "holder_kana": "イトウ ユキ"}
            group = f"{platform.settings.kafka.topic_prefix}.portal-2b"
            async with BusClient(platform.settings, ["portal"], group=group) as portal:
                token = await portal.token_for("portal", my_number())
                answer = await portal.request(
                    "portal", type=T.REGISTRATION_REQUEST, to="registry", subject=token,
                    body={"operation": "REGISTER", "account": account, "channel": "PORTAL",
                          "requested_at": datetime.now(UTC)},
                    data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION, timeout=90)
            assert answer.body["status"] == "DONE"

            async def done():
                async with http.get(f"{url}/k-1") as resp:
                    state = await resp.json()
                    return state if state["status"] != "SENT" else None
            assert (await eventually(done, timeout=60))["status"] == "DONE"
            assert [r["bank_id"] for r in await other.runtime.pool.fetch(
                "SELECT bank_id FROM bankhttp_requests WHERE idempotency_key = 'k-1'")] == ["bank-9003"]
    finally:
        await runner.cleanup()
    assert len(other_system.calls) >= 2 and len(system.calls) == calls_before  # each bank's checks at its own
    assert [r["bank_id"] for r in await connector.runtime.pool.fetch(
        "SELECT bank_id FROM bankhttp_requests WHERE idempotency_key = 'k-1'")] == ["bank-9002"]


async def test_bank_down_dead_letters_after_bounded_retries(platform, bank):
    connector, system = bank
    await connector.adapter.http.close()  # the channel is gone for good: every attempt fails
    connector.adapter.http = aiohttp.ClientSession(base_url=None, timeout=aiohttp.ClientTimeout(total=1))
    connector.adapter.bank_url = "http://127.0.0.1:9"  # discard port: connection refused
    account = {"bank_code": CODE, "branch_code": "303", "account_type": "ORDINARY", "account_number": "0000043",
               "holder_kana": "イトウ ユキ"}
    async with BusClient(platform.settings, ["portal"], group=f"{platform.settings.kafka.topic_prefix}.portal-d") as portal:
        token = await portal.token_for("portal", my_number())
        await portal.runtime.send("portal", [Message(
            body={"operation": "REGISTER", "account": account, "channel": "PORTAL", "requested_at": datetime.now(UTC)},
            type=T.REGISTRATION_REQUEST, to="registry", subject=token, data_item=DATA_PUBLIC_FUNDS_ACCOUNT,
            basis=BASIS_REGISTRATION)])

        async def dead():
            return await connector.runtime.pool.fetchrow(
                "SELECT reason, detail FROM connector_dead_letters WHERE connector = 'bank-http'")
        letter = await eventually(dead, timeout=60)
    assert letter["reason"] == "CHANNEL_UNAVAILABLE" and "gave up after 4 attempts" in letter["detail"]
    await asyncio.sleep(0)
