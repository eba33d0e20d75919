"""STEP1/STEP2/STEP3 end to end through the running hub, registry and banks (real broker, real PostgreSQL)."""

from __future__ import annotations

import asyncio
import random
import os
import signal
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from connectors.bank_sim import open_account
from connectors.client import BusClient
from infra.policy import BASIS_BANK_INTAKE, BASIS_CHANGE, BASIS_PROVISION, BASIS_REGISTRATION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.provisions import ProvisionStore
from infra.validation import generate_my_number
from schemas import types as T
from tests.integration.platform_fixtures import bus, hub_pseudonyms, pg, running_platform  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AGENCY = "agency-city-minato"
PROCEDURE = "child-allowance"  # AGENCY is entitled to it (infra/procedures.toml)
_rng = random.Random(20261126)


def person() -> str:
    return generate_my_number(_rng)


def account(bank: str = "9001", number: str | None = None, kana: str = "ヤマダ タロウ") -> dict:
    return {"bank_code": bank, "branch_code": "101", "account_type": "ORDINARY",
            "account_number": number or f"{_rng.randrange(10**7):07d}", "holder_kana": kana}


def now() -> datetime:
    return datetime.now(UTC)


async def register(bus: BusClient, my_number: str, acct: dict, operation: str = "REGISTER") -> dict:
    token = await bus.token_for("portal", my_number)
    answer = await bus.request(
        "portal", type=T.REGISTRATION_REQUEST, to="registry", subject=token,
        body={"operation": operation, "account": acct if operation != "DELETE" else None,
              "channel": "PORTAL", "requested_at": now()},
        data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION if operation == "REGISTER" else BASIS_CHANGE)
    assert answer.meta.type == T.REGISTRATION_RESULT
    return answer.body


async def inquire(bus: BusClient, my_number: str, agency: str = AGENCY, timeout: float = 60) -> dict:
    token = await bus.token_for(agency, my_number)
    answer = await bus.request(
        agency, type=T.PROVISION_INQUIRY, to="registry", subject=token,
        body={"procedure_code": PROCEDURE, "purpose": None, "requested_at": now()},
        data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION, timeout=timeout, procedure=PROCEDURE)
    assert answer.meta.type == T.PROVISION_RESPONSE
    return answer.body


async def test_step1_registration_then_step2_provision(bus, pg, running_platform):
    mn, acct = person(), account()
    await open_account(pg, acct)
    result = await register(bus, mn, acct)
    assert result["status"] == "DONE"
    answer = await inquire(bus, mn)
    assert answer["status"] == "REGISTERED"
    assert answer["account"]["account_number"] == acct["account_number"]
    # The registry keeps the account encrypted: no plaintext account number in its table.
    rows = await pg.fetch("SELECT account_ct FROM registry_accounts")
    assert rows and all(acct["account_number"].encode() not in bytes(r["account_ct"]) for r in rows)
    # Provision records: the inquiry and the provision, keyed by the person's portal token, chain verifies.
    portal_token = await bus.token_for("portal", mn)
    store = ProvisionStore(running_platform_pool := await asyncpg.create_pool(running_platform.settings.pg_dsn))
    try:
        records = await store.for_person(portal_token)
        kinds = {(r.requester, r.provider, r.status.value) for r in records}
        assert (AGENCY, "registry", "REQUESTED") in kinds and (AGENCY, "registry", "PROVIDED") in kinds
        assert ("portal", "registry", "REQUESTED") in kinds  # the STEP1 registration request
        assert ("registry", "bank-9001", "REQUESTED") in kinds  # 口座実在性確認
        verdict = await store.verify_chain(portal_token)
        assert verdict.ok, verdict.problems
    finally:
        await running_platform_pool.close()


async def test_step1_unknown_account_and_holder_mismatch_block_provision(bus, pg):
    mn = person()
    assert (await register(bus, mn, account(bank="9002")))["status"] == "ACCOUNT_NOT_FOUND"
    assert (await inquire(bus, mn))["status"] == "NOT_REGISTERED"
    acct = account(bank="9002", kana="ヤマダ ハナコ")
    await open_account(pg, acct)
    wrong_name = dict(acct, holder_kana="スズキ イチロウ")  # a family member's account, say
    assert (await register(bus, mn, wrong_name))["status"] == "HOLDER_MISMATCH"
    answer = await inquire(bus, mn)
    assert answer["status"] == "BLOCKED" and answer["account"] is None


async def test_step1_unknown_bank_code_is_refused_without_a_check(bus):
    assert (await register(bus, person(), account(bank="1234")))["status"] == "ACCOUNT_NOT_FOUND"


async def test_delete_shreds_the_data_key_and_keeps_the_chain(bus, pg, running_platform):
    mn, acct = person(), account(bank="9003")
    await open_account(pg, acct)
    assert (await register(bus, mn, acct))["status"] == "DONE"
    keys_before = await pg.fetchval("SELECT count(*) FROM registry_data_keys")
    assert (await register(bus, mn, acct, operation="DELETE"))["status"] == "DONE"
    assert await pg.fetchval("SELECT count(*) FROM registry_data_keys") == keys_before - 1  # crypto-shredded
    assert (await inquire(bus, mn))["status"] == "NOT_REGISTERED"
    portal_token = await bus.token_for("portal", mn)
    pool = await asyncpg.create_pool(running_platform.settings.pg_dsn)
    try:
        verdict = await ProvisionStore(pool).verify_chain(portal_token)
        assert verdict.ok and verdict.checked >= 4
    finally:
        await pool.close()
    # A second delete finds nothing; the shredded key does not come back.
    assert (await register(bus, mn, acct, operation="DELETE"))["status"] == "NOT_REGISTERED"
    assert await pg.fetchval("SELECT count(*) FROM registry_data_keys") == keys_before - 1


async def test_step3_bank_channel_registration(bus, pg, running_platform):
    from connectors.client import BusClient as Client

    mn = person()
    acct = account(bank="9004")
    async with Client(running_platform.settings, ["bank-9004"], group=f"{uuid.uuid4().hex}.bank-test") as bank:
        token = await bus.token_for("portal", mn)  # the person exists in the portal's space too
        bank_token = await bank.token_for("bank-9004", mn)
        answer = await bank.request(
            "bank-9004", type=T.REGISTRATION_REQUEST, to="registry", subject=bank_token,
            body={"operation": "REGISTER", "account": acct, "channel": "BANK_COUNTER", "requested_at": now()},
            data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_BANK_INTAKE)
        assert answer.meta.type == T.REGISTRATION_RESULT and answer.body["status"] == "DONE"
        # Another bank's account cannot be registered by this bank.
        refused = await bank.request(
            "bank-9004", type=T.REGISTRATION_REQUEST, to="registry", subject=bank_token,
            body={"operation": "REGISTER", "account": account(bank="9001"), "channel": "BANK_COUNTER",
                  "requested_at": now()},
            data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_BANK_INTAKE)
        assert refused.body["status"] == "REFUSED"
    assert token
    provided = await inquire(bus, mn)
    assert provided["status"] == "REGISTERED" and provided["account"]["bank_code"] == "9004"


async def test_hub_worker_killed_mid_stream_loses_nothing_and_duplicates_nothing(bus, pg, running_platform):
    from infra.stack import WORKERS

    people = [person() for _ in range(12)]
    tokens = [await bus.token_for(AGENCY, mn) for mn in people]

    async def ask(token: str) -> str:
        answer = await bus.request(
            AGENCY, type=T.PROVISION_INQUIRY, to="registry", subject=token,
            body={"procedure_code": PROCEDURE, "purpose": None, "requested_at": now()},
            data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION, timeout=120, procedure=PROCEDURE)
        return answer.meta.correlation_id

    tasks = [asyncio.create_task(ask(t)) for t in tokens]
    await asyncio.sleep(0.3)
    hub = running_platform.stack.components["hub"]
    os.kill(hub.pid, signal.SIGKILL)
    running_platform.check_children()
    running_platform.start_worker(next(w for w in WORKERS if w.name == "hub"))
    correlations = await asyncio.gather(*tasks)
    assert len(set(correlations)) == len(people)
    # Exactly one answer per inquiry reached the agency, and one record per leg exists.
    answers = await pg.fetchval(
        "SELECT count(*) FROM client_inbox WHERE correlation_id = ANY($1::uuid[]) AND type = $2",
        correlations, T.PROVISION_RESPONSE)
    assert answers == len(people)
    names = hub_pseudonyms(running_platform.settings)  # records and legs carry the hub's ids, not the agency's
    records = await pg.fetch(
        "SELECT message_id, count(*) AS n FROM provision_records WHERE correlation_id = ANY($1::uuid[]) "
        "GROUP BY message_id", [names.conversation(c, AGENCY) for c in correlations])
    assert len(records) == 2 * len(people) and all(r["n"] == 1 for r in records)
    inquiries = [str(r["message_id"]) for r in await pg.fetch("SELECT message_id FROM hub_messages WHERE type = $1",
                                                              T.PROVISION_INQUIRY)]
    effects = await pg.fetchval(
        "SELECT count(*) FROM processed_messages WHERE consumer = 'registry' AND message_id = ANY($1::uuid[])",
        [names.leg_message_id(m, "registry") for m in inquiries])
    assert effects >= len(people)
    replays = await pg.fetchval("SELECT count(*) FROM hub_messages WHERE reason = 'REPLAYED'")
    assert replays == 0, "a redelivery after the crash was mistaken for a replay"


async def test_provision_chain_detects_deleted_and_altered_records(bus, pg, running_platform):
    mn, acct = person(), account(bank="9000")
    await open_account(pg, acct)
    await register(bus, mn, acct)
    await inquire(bus, mn)
    portal_token = await bus.token_for("portal", mn)
    pool = await asyncpg.create_pool(running_platform.settings.pg_dsn)
    try:
        store = ProvisionStore(pool)
        assert (await store.verify_chain(portal_token)).ok
        await pg.execute("UPDATE provision_records SET requester = 'agency-nta' WHERE person_token = $1 AND seq = 2",
                         portal_token)
        altered = await store.verify_chain(portal_token)
        assert not altered.ok and any("seq 2" in p for p in altered.problems)
        await pg.execute("DELETE FROM provision_records WHERE person_token = $1 AND seq = 3", portal_token)
        deleted = await store.verify_chain(portal_token)
        assert not deleted.ok and any("3" in p for p in deleted.problems)
    finally:
        await pool.close()

