"""``renkei demo`` flows for the public-funds accounts: ``step1-registration``, ``step2-provision``,
``step3-bank-registration``, and the person's provision records (情報提供等記録) with the chain verified.

They drive the demo platform (hub, registry and simulated banks as real
processes) as the portal, an agency and a bank counter would: every token
comes from the token-issuance exchange with the hub, every message is sealed
end to end and signed, every answer is awaited from the participant's inbox.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg

from connectors.bank_sim import open_account
from connectors.client import BusClient
from infra.policy import BASIS_BANK_INTAKE, BASIS_PROVISION, BASIS_REGISTRATION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.provisions import ProvisionStore
from infra.settings import Settings
from infra.validation import generate_my_number
from schemas import types as T

AGENCY = "agency-city-minato"
COUNTER_BANK = "bank-9002"


def _now() -> datetime:
    return datetime.now(UTC)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


async def account_flows(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run STEP1 → STEP2 → STEP3; return the flows and the demo person's provision records."""
    rng = random.Random()
    person = generate_my_number(rng)
    account = {"bank_code": "9001", "branch_code": "101", "account_type": "ORDINARY",
               "account_number": f"{rng.randrange(10**7):07d}", "holder_kana": "ヤマダ タロウ"}
    counter_account = {"bank_code": "9002", "branch_code": "202", "account_type": "SAVINGS",
                       "account_number": f"{rng.randrange(10**7):07d}", "holder_kana": "ヤマダ タロウ"}
    conn = await asyncpg.connect(settings.pg_dsn)
    flows: list[dict[str, Any]] = []
    try:
        await open_account(conn, account)
        await open_account(conn, counter_account)
        async with BusClient(settings, ["portal", AGENCY, COUNTER_BANK], group=f"{settings.kafka.topic_prefix}.demo") as bus:
            # STEP1: the person registers an account through the portal; the registry checks it with the bank.
            start = time.perf_counter()
            portal_token = await bus.token_for("portal", person)
            result = await bus.request(
                "portal", type=T.REGISTRATION_REQUEST, to="registry", subject=portal_token,
                body={"operation": "REGISTER", "account": account, "channel": "PORTAL", "requested_at": _now()},
                data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION)
            flows.append({"name": "step1-registration", "ok": result.body["status"] == "DONE",
                          "status": result.body["status"], "bank": account["bank_code"], "elapsed_ms": _ms(start)})

            # STEP2: an agency asks which account to pay a benefit into.
            start = time.perf_counter()
            answer = await bus.request(
                AGENCY, type=T.PROVISION_INQUIRY, to="registry", subject=await bus.token_for(AGENCY, person),
                body={"procedure_code": "BENEFIT-001", "purpose": "benefit payment", "requested_at": _now()},
                data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION)
            got = answer.body.get("account") or {}
            flows.append({"name": "step2-provision", "ok": answer.body["status"] == "REGISTERED"
                          and got.get("account_number") == account["account_number"],
                          "status": answer.body["status"], "agency": AGENCY, "elapsed_ms": _ms(start)})

            # STEP3: at a bank counter, the bank registers the person's account there instead.
            start = time.perf_counter()
            result = await bus.request(
                COUNTER_BANK, type=T.REGISTRATION_REQUEST, to="registry",
                subject=await bus.token_for(COUNTER_BANK, person),
                body={"operation": "CHANGE", "account": counter_account, "channel": "BANK_COUNTER",
                      "requested_at": _now()},
                data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_BANK_INTAKE)
            after = await bus.request(
                AGENCY, type=T.PROVISION_INQUIRY, to="registry", subject=await bus.token_for(AGENCY, person),
                body={"procedure_code": "BENEFIT-001", "purpose": None, "requested_at": _now()},
                data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION)
            flows.append({"name": "step3-bank-registration",
                          "ok": result.body["status"] == "DONE"
                          and (after.body.get("account") or {}).get("bank_code") == counter_account["bank_code"],
                          "status": result.body["status"], "bank": COUNTER_BANK, "elapsed_ms": _ms(start)})
        records = await person_records(settings, portal_token)
    finally:
        await conn.close()
    return flows, records


async def person_records(settings: Settings, portal_token: str) -> list[dict[str, Any]]:
    """What the person would see on the portal: their provision records, each marked by chain verification."""
    pool = await asyncpg.create_pool(settings.pg_dsn, min_size=1, max_size=2)
    try:
        store = ProvisionStore(pool)
        verdict = await store.verify_chain(portal_token)
        return [
            {"seq": r.seq, "requester": r.requester, "provider": r.provider, "data_item": r.data_item,
             "legal_basis": r.legal_basis, "status": r.status.value, "requested_at": r.requested_at.isoformat(),
             "provided_at": r.provided_at.isoformat() if r.provided_at else None, "chain_ok": verdict.ok}
            for r in await store.for_person(portal_token)
        ]
    finally:
        await pool.close()
