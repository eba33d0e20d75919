"""Whose account it is, on the real stack: the attacks on registration, each refused with good traffic around it.

One platform for the module (hub, registry and simulated banks as real processes, the registry's check
deadline short so that TIMEOUT can be seen).  The simulated banks answer existence checks from their own
customer data (``bank_customers``: which of their accounts the person they know by their token holds).
A bank's counter files STEP3 through the simulated bank's identity (``register_at_counter``; its answer
lands in ``bank_registration_results``); a bank's checks are held back, where a test needs a check to stay
open, with a channel lease (the simulator then parks them, as it does for a channel connector).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from connectors.bank_sim import open_account, register_at_counter, registration_status
from infra.crypto.envelope import Message
from infra.domain.policy import (
    BASIS_ALONGSIDE_PROCEDURE,
    BASIS_CHANGE,
    BASIS_PROVISION,
    BASIS_REGISTRATION,
    DATA_PUBLIC_FUNDS_ACCOUNT,
)
from infra.domain.validation import generate_my_number
from infra.platform.pgdsn import observer_dsn
from infra.tools.harness import eventually
from schemas import types as msg
from streams.client import BusClient
from streams.participant import ParticipantRuntime
from tests.integration.platform_fixtures import ENTITLED_PROCEDURE, hub_pseudonyms, isolated_platform
from tests.integration.test_connectors_support import bank_token, hold_account

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEADLINE_S = 25
AGENCY = "agency-city-minato"
_rng = random.Random()


def person() -> str:
    return generate_my_number(_rng)


def account(bank: str = "9000", kana: str = "ヤマダ タロウ") -> dict:
    return {"bank_code": bank, "branch_code": "101", "account_type": "ORDINARY",
            "account_number": f"{_rng.randrange(10**7):07d}", "holder_kana": kana}


def consent() -> dict:
    return {"given_by": "PERSON", "method": "SIGNED_FORM_AT_COUNTER", "given_at": datetime.now(UTC),
            "evidence_ref": f"FORM-{uuid.uuid4().hex[:8]}"}


@pytest.fixture(scope="module")
async def platform(endpoints, database, tmp_path_factory):
    async with isolated_platform(endpoints, database, tmp_path_factory.mktemp("rules"), prefix_letter="r",
                                 registry_check_deadline_s=DEADLINE_S) as p:
        yield p


@pytest.fixture(scope="module")
async def bus(platform) -> AsyncIterator[BusClient]:
    """The portal and every agency, as one client of the bus."""
    ids = ["portal"] + [p.id for p in platform.participants if p.kind.value == "agency"]
    async with BusClient(platform.settings, ids, group=f"{platform.settings.kafka.topic_prefix}.clients") as client:
        yield client


@pytest.fixture(scope="module")
async def counter(platform) -> AsyncIterator[ParticipantRuntime]:
    """The banks' own counter systems: they send as the bank; the simulated banks read the inboxes."""
    banks = [p.id for p in platform.participants.banks()]
    runtime = ParticipantRuntime(platform.settings, banks, {}, group=f"{platform.settings.kafka.topic_prefix}.counter",
                                 database="banks")  # the simulated banks' own system
    await runtime.start(consume=False)
    yield runtime
    await runtime.stop()


@pytest.fixture
async def pg(platform) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(observer_dsn(platform.settings))  # every component's schema, as the operator
    yield conn
    await conn.close()


async def file(bus: BusClient, sender: str, mn: str, acct: dict | None, operation: str = "REGISTER",
               basis: str | None = None) -> Any:
    """A registration request from ``sender`` (portal or an agency); the first answer in its inbox."""
    basis = basis or (BASIS_ALONGSIDE_PROCEDURE if sender.startswith("agency-") else
                      BASIS_REGISTRATION if operation == "REGISTER" else BASIS_CHANGE)
    return await bus.request(
        sender, type=msg.REGISTRATION_REQUEST, to="registry", subject=await bus.token_for(sender, mn),
        body={"operation": operation, "account": acct, "channel": "PORTAL", "requested_at": datetime.now(UTC)},
        data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=basis, timeout=120)


async def register(bus: BusClient, mn: str, acct: dict | None, operation: str = "REGISTER") -> dict:
    answer = await file(bus, "portal", mn, acct, operation)
    assert answer.meta.type == msg.REGISTRATION_RESULT, answer.body
    return answer.body


async def inquire(bus: BusClient, mn: str, agency: str = AGENCY) -> dict:
    answer = await bus.request(
        agency, type=msg.PROVISION_INQUIRY, to="registry", subject=await bus.token_for(agency, mn),
        body={"procedure_code": ENTITLED_PROCEDURE[agency], "purpose": None, "requested_at": datetime.now(UTC)},
        data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION, timeout=120, procedure=ENTITLED_PROCEDURE[agency])
    assert answer.meta.type == msg.PROVISION_RESPONSE
    return answer.body


async def at_counter(counter: ParticipantRuntime, pg: asyncpg.Connection, bank: str, mn: str, operation: str,
                     acct: dict | None, given: dict | None) -> str:
    """STEP3 at ``bank``'s counter; the registry's answer (its status) as the bank recorded it."""
    cid = await register_at_counter(counter, bank, bank_token(counter.settings, mn, bank), operation, acct, given)
    return await eventually(lambda: registration_status(pg, bank, cid), timeout=120)


async def hold_checks(pg: asyncpg.Connection, bank: str) -> None:
    """The bank's existence checks stay unanswered: a live lease makes the simulator park them."""
    await pg.execute(
        "INSERT INTO bank_channel_leases (bank_id, channel, holder, types, expires_at) VALUES ($1, 'bank-http', "
        "'test:0:held', $2, now() + interval '1 hour') ON CONFLICT (bank_id) DO UPDATE SET holder = 'test:0:held', "
        "types = EXCLUDED.types, expires_at = EXCLUDED.expires_at", bank, [msg.EXISTENCE_CHECK])


async def release_checks(pg: asyncpg.Connection, bank: str) -> None:
    await pg.execute("UPDATE bank_channel_leases SET expires_at = now() WHERE bank_id = $1", bank)


async def open_check(pg: asyncpg.Connection, bank: str) -> Any:
    return await pg.fetchrow("SELECT correlation_id, created_at FROM registry_pending_checks WHERE bank = $1 "
                             "AND closed_at IS NULL ORDER BY created_at DESC LIMIT 1", bank)


# --------------------------------------------------------------------------- 16.1: the account must be the person's


async def test_someone_else_cannot_register_a_persons_account_by_typing_their_name(bus, pg, platform):
    """Person B types person A's account and A's kana exactly (the family-account mis-registration): the
    bank's records say the account is not B's. B is not registered and no agency gets A's account for B —
    not through the portal, not alongside a procedure — while A's own registration goes through."""
    a, b = person(), person()
    acct = account("9000", "ヤマダ ハナコ")
    await hold_account(platform.settings, pg, a, acct)
    registered = await pg.fetchval("SELECT count(*) FROM registry_accounts")

    attempt, own = await asyncio.gather(register(bus, b, acct), register(bus, a, acct))
    assert attempt["status"] == "NOT_HOLDER" and own["status"] == "DONE"
    alongside = await file(bus, "agency-nta", b, acct, "CHANGE")
    assert alongside.meta.type == msg.REGISTRATION_RESULT and alongside.body["status"] == "NOT_HOLDER"
    for agency in (AGENCY, "agency-nta"):
        theirs = await inquire(bus, b, agency)
        assert theirs["status"] == "NOT_REGISTERED" and theirs["account"] is None
    mine = await inquire(bus, a)
    assert mine["status"] == "REGISTERED" and mine["account"]["account_number"] == acct["account_number"]
    assert await pg.fetchval("SELECT count(*) FROM registry_accounts") == registered + 1  # A only
    assert await pg.fetchval("SELECT count(*) FROM registry_accounts WHERE status = 'BLOCKED'") == 0


async def test_a_failed_check_keeps_the_registered_account_and_only_confirmed_changes_it(bus, pg, platform):
    mn = person()
    first = account("9001")
    await hold_account(platform.settings, pg, mn, first)
    assert (await register(bus, mn, first))["status"] == "DONE"

    closed = account("9001")
    await hold_account(platform.settings, pg, mn, closed)
    await pg.execute("UPDATE bank_accounts SET closed = true WHERE account_number = $1", closed["account_number"])
    somebody_elses = account("9001")
    await hold_account(platform.settings, pg, person(), somebody_elses)
    wrong_name = account("9001")
    await hold_account(platform.settings, pg, mn, wrong_name)
    missing = account("9001")
    for target, typed, expected in ((closed, closed, "ACCOUNT_CLOSED"),
                                    (somebody_elses, somebody_elses, "NOT_HOLDER"),
                                    (wrong_name, dict(wrong_name, holder_kana="スズキ イチロウ"), "HOLDER_MISMATCH"),
                                    (missing, missing, "ACCOUNT_NOT_FOUND")):
        result = await register(bus, mn, typed, "CHANGE")
        assert result["status"] == expected and "stays registered" in result["detail"], (expected, result)
        kept = await inquire(bus, mn)  # the person keeps being paid into the account registered before
        assert kept["status"] == "REGISTERED" and kept["account"]["account_number"] == first["account_number"]

    second = account("9001")
    await hold_account(platform.settings, pg, mn, second)
    assert (await register(bus, mn, second, "CHANGE"))["status"] == "DONE"
    assert (await inquire(bus, mn))["account"]["account_number"] == second["account_number"]


# --------------------------------------------------------------------------- STEP3 and deletion


async def test_step3_needs_the_persons_consent_and_the_banks_own_records(bus, pg, platform, counter):
    mn = person()
    acct = account("9002")
    await hold_account(platform.settings, pg, mn, acct)
    given = consent()

    assert await at_counter(counter, pg, "bank-9002", mn, "REGISTER", acct, None) == "CONSENT_REQUIRED"
    assert (await inquire(bus, mn))["status"] == "NOT_REGISTERED"
    assert await at_counter(counter, pg, "bank-9002", mn, "REGISTER", account("9001"), consent()) == "REFUSED"
    not_theirs = account("9002")
    await open_account(pg, not_theirs)  # the bank's account, but not this customer's
    assert await at_counter(counter, pg, "bank-9002", mn, "REGISTER", not_theirs, consent()) == "NOT_HOLDER"
    assert (await inquire(bus, mn))["status"] == "NOT_REGISTERED"

    assert await at_counter(counter, pg, "bank-9002", mn, "REGISTER", acct, given) == "DONE"
    provided = await inquire(bus, mn)
    assert provided["status"] == "REGISTERED" and provided["account"]["account_number"] == acct["account_number"]
    row = await pg.fetchrow(
        "SELECT c.bank, c.operation, c.given_by, c.method, c.given_at, c.evidence_ref, a.channel FROM registry_consents c "
        "JOIN registry_accounts a ON a.consent_correlation = c.correlation_id WHERE c.evidence_ref = $1",
        given["evidence_ref"])
    assert row is not None, "the registration names the consent it was made with"
    assert (row["bank"], row["operation"], row["given_by"], row["method"], row["channel"]) == (
        "bank-9002", "REGISTER", "PERSON", "SIGNED_FORM_AT_COUNTER", "BANK_COUNTER")
    assert abs((row["given_at"] - given["given_at"]).total_seconds()) < 0.002


async def test_delete_only_by_the_person_or_the_bank_that_holds_the_account(bus, pg, platform, counter):
    mn = person()
    acct = account("9003")
    await hold_account(platform.settings, pg, mn, acct)
    assert (await register(bus, mn, acct))["status"] == "DONE"

    assert await at_counter(counter, pg, "bank-9004", mn, "DELETE", None, consent()) == "REFUSED"
    by_agency = await file(bus, "agency-nta", mn, None, "DELETE")
    assert by_agency.meta.type == msg.REGISTRATION_RESULT and by_agency.body["status"] == "REFUSED"
    assert "deleted only by the person" in by_agency.body["detail"]
    assert (await inquire(bus, mn))["status"] == "REGISTERED"  # still there after both attempts

    assert await at_counter(counter, pg, "bank-9003", mn, "DELETE", None, None) == "CONSENT_REQUIRED"
    assert await at_counter(counter, pg, "bank-9003", mn, "DELETE", None, consent()) == "DONE"
    assert (await inquire(bus, mn))["status"] == "NOT_REGISTERED"
    assert (await register(bus, mn, None, "DELETE"))["status"] == "NOT_REGISTERED"


# --------------------------------------------------------------------------- 16.3: alongside another procedure


async def test_an_entitled_agency_registers_alongside_a_procedure_and_others_are_refused(bus, pg, platform):
    mn = person()
    acct = account("9000", "タナカ ジロウ")
    await hold_account(platform.settings, pg, mn, acct)
    unentitled = await file(bus, AGENCY, mn, acct, basis=BASIS_ALONGSIDE_PROCEDURE)
    assert unentitled.meta.type == msg.REJECTION_NOTICE and unentitled.body["reason_code"] == "UNAUTHORISED"
    assert (await inquire(bus, mn))["status"] == "NOT_REGISTERED"  # nothing reached the registry

    answer = await file(bus, "agency-mhlw", mn, acct)  # with a pension claim
    assert answer.meta.type == msg.REGISTRATION_RESULT and answer.body["status"] == "DONE"
    assert (await inquire(bus, mn))["account"]["account_number"] == acct["account_number"]
    assert await pg.fetchval("SELECT count(*) FROM registry_accounts WHERE channel = 'ALONGSIDE_PROCEDURE'") >= 1


# --------------------------------------------------------------------------- 13.7: only the bank that was asked


async def test_another_bank_cannot_answer_a_check_it_was_not_asked(bus, pg, platform, counter):
    """Bank 9004 answers CONFIRMED (its body even claims bank code 9003) for a check the registry asked bank
    9003: refused as UNSOLICITED, nothing registered. Bank 9003's own answer then decides (NOT_HOLDER)."""
    a, b = person(), person()
    acct = account("9003", "サトウ ハナコ")
    await hold_account(platform.settings, pg, a, acct)
    await hold_checks(pg, "bank-9003")
    try:
        pending = asyncio.create_task(register(bus, b, acct))  # B tries A's account
        check = await eventually(lambda: open_check(pg, "bank-9003"), timeout=60)
        # Each participant sees a conversation under a correlation id of its own (infra.crypto.pseudonyms), so a bank
        # that was not shown this check cannot even address it; the test hands bank 9004 the correlation id
        # that reaches the registry's check, to prove the registry's own attribution of the answer.
        names = hub_pseudonyms(platform.settings)
        reaching = names.correlation_for(names.conversation(str(check["correlation_id"]), "registry"), "bank-9004")
        forged = Message(body={"bank_code": "9003", "result": "CONFIRMED", "answered_at": datetime.now(UTC)},
                         type=msg.EXISTENCE_ANSWER, to="registry", subject=bank_token(platform.settings, b, "bank-9004"),
                         data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION, correlation_id=reaching)
        await counter.send("bank-9004", [forged])

        async def refused() -> Any:
            return await pg.fetchrow("SELECT reason, detail FROM participant_dead_letters WHERE participant = "
                                     "'registry' AND detail LIKE '%from bank-9004, but bank-9003 was asked%'")
        letter = await eventually(refused, timeout=60)
        assert letter["reason"] == "UNSOLICITED"
        other = account("9000")  # good traffic meanwhile
        await hold_account(platform.settings, pg, a, other)
        assert (await register(bus, a, other))["status"] == "DONE"
        assert not pending.done() and (await inquire(bus, b))["status"] == "NOT_REGISTERED"
        assert await pg.fetchval("SELECT closed_at FROM registry_pending_checks WHERE correlation_id = $1",
                                 check["correlation_id"]) is None  # the check is still bank 9003's to answer
    finally:
        await release_checks(pg, "bank-9003")
    assert (await pending)["status"] == "NOT_HOLDER"
    assert (await inquire(bus, b))["status"] == "NOT_REGISTERED"


# --------------------------------------------------------------------------- 16.2: no request hangs forever


async def test_an_unanswered_check_expires_with_timeout_and_a_late_answer_is_refused(bus, pg, platform, counter):
    mn = person()
    acct = account("9004")
    counter_acct = account("9004")
    await hold_account(platform.settings, pg, mn, acct)
    await hold_account(platform.settings, pg, mn, counter_acct)
    await hold_checks(pg, "bank-9004")
    at_bank = asyncio.create_task(at_counter(counter, pg, "bank-9004", mn, "REGISTER", counter_acct, consent()))
    try:
        started = time.monotonic()
        portal = await register(bus, mn, acct)
        took = time.monotonic() - started
        assert portal["status"] == "TIMEOUT"  # to whoever asked: the portal here, the bank below
        assert "bank-9004 did not answer" in portal["detail"] and "nothing changed" in portal["detail"]
        assert DEADLINE_S <= took < DEADLINE_S + 60, took
        assert (await inquire(bus, mn))["status"] == "NOT_REGISTERED"
    except BaseException:
        at_bank.cancel()
        raise
    finally:
        await release_checks(pg, "bank-9004")
    # While the bank's channel is leased the simulator (standing in for the bank) parks everything addressed
    # to that bank, the registry's answer too (16.9); released, it records the TIMEOUT it was sent.
    assert await at_bank == "TIMEOUT"

    async def late_refused() -> int:  # the simulator answers the parked checks once the lease is gone
        return await pg.fetchval("SELECT count(*) FROM participant_dead_letters WHERE participant = 'registry' "
                                 "AND reason = 'EXPIRED' AND detail LIKE 'the existence check had expired%'") >= 2
    assert await eventually(late_refused, timeout=90)
    assert (await inquire(bus, mn))["status"] == "NOT_REGISTERED"  # a late CONFIRMED registers nothing
    assert await pg.fetchval("SELECT count(*) FROM registry_pending_checks WHERE outcome = 'TIMEOUT' "
                             "AND octet_length(account_ct) > 0") == 0  # closed checks keep no account data
