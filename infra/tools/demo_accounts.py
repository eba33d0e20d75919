"""``renkei demo`` flows for the public-funds accounts: ``step1-registration``, ``step2-provision``,
``step2-unentitled-procedure``, ``step1-others-account-refused``, ``step3-bank-registration``, and the
person's provision records
(情報提供等記録) with the chain verified.

They drive the demo platform (hub, registry and simulated banks as real
processes) as the portal, an agency and a bank counter would: every token
comes from the token-issuance exchange with the hub, every message is sealed
end to end and signed, every answer is awaited from the participant's inbox.
The demo person (and the someone else who tries their account) first get a
portal card from the card issuer (``renkei portal card issue``, My Number and
PIN on stdin); then the bank's customer data (the account, linked to the
person the bank knows), STEP1, STEP2, the refused registration of someone
else's account and the person's records go through the participant commands a
user would type (``renkei bank seed-account``, ``renkei portal register --card``,
``renkei agency inquire``, ``renkei portal records --card``), each a process of
its own with its secrets on its stdin; STEP3, the bank counter's own system,
runs in process (the simulated bank files the registration with the person's
consent and answers the registry's check from its own records).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from connectors.bank_sim import register_at_counter, registration_status, seed_customer
from infra.core.clock import elapsed_ms
from infra.core.settings import Settings
from infra.domain.policy import BASIS_PROVISION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.domain.validation import generate_my_number
from infra.platform.keystore import KeyStore
from infra.platform.pgdsn import component_dsn
from infra.platform.pglayout import BANKS
from schemas import types as msg
from streams.client import BusClient
from streams.participant import ParticipantRuntime

AGENCY = "agency-city-minato"
PROCEDURE = "child-allowance"  # infra/domain/procedures.toml: the municipality pays it
UNENTITLED_PROCEDURE = "income-tax-refund"  # the tax agency's: the municipality is refused
COUNTER_BANK = "bank-9002"
DEMO_CARD = "DEMO-0001"
OTHER_CARD = "DEMO-0002"


@dataclass(frozen=True)
class DemoCard:
    """The demo person's portal card: how to log in to the page (the PIN is shown once, by ``renkei demo``)."""

    card_id: str
    pin: str = field(repr=False)


def _now() -> datetime:
    return datetime.now(UTC)



async def renkei(settings: Settings, *argv: str, my_number: str | None = None, card: DemoCard | None = None,
                 stdin: list[str] | None = None, timeout_s: float = 120.0) -> dict[str, Any]:
    """``renkei <argv> --json`` against this platform, as a participant's user would run it.

    Secrets go on stdin, never on the command line: the My Number (``--my-number -``), the person's
    card PIN (``card``: ``--card ID --pin -``), or the given ``stdin`` lines.  Returns the command's JSON
    report with its exit code under ``exit_code`` (``status`` ``ERROR`` when it printed no report);
    stderr is not kept (it names no person, but the demo has no use for it).
    """
    from infra.platform.stack import settings_args, settings_env

    lines = list(stdin or [])
    flags: list[str] = []
    if my_number:
        flags += ["--my-number", "-"]
        lines.append(my_number)
    if card is not None:
        flags += ["--card", card.card_id, "--pin", "-"]
        lines.append(card.pin)
    cmd = [sys.executable, "-P", "-m", "infra.cli", *argv, *flags, "--timeout", f"{timeout_s / 2:g}", "--json",
           *settings_args(settings)]
    proc = await asyncio.create_subprocess_exec(*cmd, env={**os.environ, **settings_env(settings)},
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(proc.communicate("".join(f"{x}\n" for x in lines).encode()), timeout_s)
    except TimeoutError:
        return {"status": "TIMEOUT", "exit_code": None, "detail": f"no report within {timeout_s:g} s"}
    finally:
        if proc.returncode is None:  # timed out, or the demo was interrupted: the command goes with it
            proc.kill()
            await proc.wait()
    try:
        report = json.loads(out)
    except ValueError:
        report = {"status": "ERROR", "detail": "no JSON report"}
    return {**report, "exit_code": proc.returncode}


def _account_flags(account: dict[str, str]) -> list[str]:
    return ["--bank", account["bank_code"], "--branch", account["branch_code"], "--type",
            account["account_type"].lower(), "--number", account["account_number"], "--holder", account["holder_kana"]]


async def issue_card(settings: Settings, card_id: str, my_number: str) -> tuple[DemoCard | None, dict[str, Any]]:
    """The card issuer gives the person a portal card (``renkei portal card issue``) with a random PIN."""
    card = DemoCard(card_id, f"{secrets.randbelow(10_000):04d}")
    issued = await renkei(settings, "portal", "card", "issue", "--card", card_id, "--my-number", "-", "--pin", "-",
                          stdin=[my_number, card.pin])
    return (card if issued["exit_code"] == 0 else None), issued


async def account_flows(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]], DemoCard | None]:
    """Run STEP1 → STEP2 (entitled, then an unentitled procedure) → someone else's account → STEP3; return the
    flows, the demo person's records and card."""
    rng = random.Random()
    person, other = generate_my_number(rng), generate_my_number(rng)
    account = {"bank_code": "9001", "branch_code": "101", "account_type": "ORDINARY",
               "account_number": f"{rng.randrange(10**7):07d}", "holder_kana": "ヤマダ タロウ"}
    counter_account = {"bank_code": "9002", "branch_code": "202", "account_type": "SAVINGS",
                       "account_number": f"{rng.randrange(10**7):07d}", "holder_kana": "ヤマダ タロウ"}
    flows: list[dict[str, Any]] = []

    # The card issuer gives both people a portal card: the person acts with it, never with a My Number alone.
    start = time.perf_counter()
    card, issued = await issue_card(settings, DEMO_CARD, person)
    other_card, _ = await issue_card(settings, OTHER_CARD, other)
    flows.append({"name": "portal-card", "ok": card is not None and other_card is not None,
                  "status": issued["status"], "card": DEMO_CARD, "via": "renkei portal card issue",
                  "elapsed_ms": elapsed_ms(start)})
    if card is None or other_card is None:
        return flows, [], None

    # STEP1: the person registers an account through the portal; the registry checks it with the bank,
    # which holds it for this person (the bank's own customer data, seeded as the bank would).
    start = time.perf_counter()
    seeded = await renkei(settings, "bank", "seed-account", *_account_flags(account), my_number=person)
    result = await renkei(settings, "portal", "register", *_account_flags(account), card=card)
    flows.append({"name": "step1-registration", "ok": seeded["exit_code"] == 0 and result["exit_code"] == 0
                  and result["status"] == "DONE", "status": result["status"], "bank": account["bank_code"],
                  "via": "renkei bank seed-account, renkei portal register --card", "elapsed_ms": elapsed_ms(start)})

    # STEP2: an agency asks which account to pay a benefit into.
    start = time.perf_counter()
    answer = await renkei(settings, "agency", "inquire", "--agency", AGENCY, "--procedure", PROCEDURE,
                          my_number=person)
    got = answer.get("account") or {}
    flows.append({"name": "step2-provision", "ok": answer["exit_code"] == 0 and answer["status"] == "REGISTERED"
                  and got.get("account_number") == account["account_number"],
                  "status": answer["status"], "agency": AGENCY, "via": "renkei agency inquire",
                  "elapsed_ms": elapsed_ms(start)})

    # STEP2 refused: the same agency asks under a procedure it is not entitled to; the hub refuses it and
    # nothing is provided (the person's records show no such provision).
    start = time.perf_counter()
    refused = await renkei(settings, "agency", "inquire", "--agency", AGENCY, "--procedure", UNENTITLED_PROCEDURE,
                           my_number=person)
    flows.append({"name": "step2-unentitled-procedure", "ok": refused["exit_code"] == 2
                  and refused.get("reason") == "PROCEDURE_NOT_ALLOWED" and not refused.get("account"),
                  "status": refused["status"], "reason": refused.get("reason"), "agency": AGENCY,
                  "procedure": UNENTITLED_PROCEDURE, "via": "renkei agency inquire", "elapsed_ms": elapsed_ms(start)})

    # Someone else types the person's account and name: the bank's records say the account is not
    # theirs (NOT_HOLDER), nothing is registered for them, and an agency gets no account for them.
    start = time.perf_counter()
    attempt = await renkei(settings, "portal", "register", *_account_flags(account), card=other_card)
    theirs = await renkei(settings, "agency", "inquire", "--agency", AGENCY, "--procedure", PROCEDURE,
                          my_number=other)
    flows.append({"name": "step1-others-account-refused",
                  "ok": attempt["exit_code"] == 2 and attempt["status"] == "NOT_HOLDER"
                  and theirs["exit_code"] == 0 and theirs["status"] == "NOT_REGISTERED",
                  "status": attempt["status"], "inquiry": theirs["status"],
                  "via": "renkei portal register --card, renkei agency inquire", "elapsed_ms": elapsed_ms(start)})

    # STEP3: at a bank counter, the bank's own system registers the person's account there instead, with
    # the person's consent; the registry checks the account with that bank's own records first.
    async with BusClient(settings, [AGENCY], group=f"{settings.kafka.topic_prefix}.demo") as bus:
        counter = ParticipantRuntime(settings, [COUNTER_BANK], {}, group=f"{settings.kafka.topic_prefix}.demo-counter",
                                     database=BANKS)  # the simulated bank's own counter system
        await counter.start(consume=False)  # the simulated bank answers its inbox; this only files the request
        conn = await asyncpg.connect(component_dsn(settings, BANKS))  # the bank's own system (the simulator)
        try:
            start = time.perf_counter()
            token = await bus.token_for(AGENCY, person)
            # The simulated bank's own customer knowledge (as infra.tools.demo_lookups): its token for the person.
            bank_token = KeyStore.for_settings(settings).token_authority().token_for(person, COUNTER_BANK)
            await seed_customer(conn, bank_token, counter_account)
            correlation = await register_at_counter(
                counter, COUNTER_BANK, bank_token, "CHANGE", counter_account,
                {"given_by": "PERSON", "method": "SIGNED_FORM_AT_COUNTER", "given_at": _now(),
                 "evidence_ref": f"FORM-{rng.randrange(10**6):06d}"})
            status = None
            for _ in range(1200):
                status = await registration_status(conn, COUNTER_BANK, correlation)
                if status is not None:
                    break
                await asyncio.sleep(0.1)
        finally:
            await conn.close()
            await counter.stop()
        after = await bus.request(
            AGENCY, type=msg.PROVISION_INQUIRY, to="registry", subject=token,
            body={"procedure_code": PROCEDURE, "purpose": None, "requested_at": _now()},
            data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION, procedure=PROCEDURE)
        flows.append({"name": "step3-bank-registration",
                      "ok": status == "DONE"
                      and (after.body.get("account") or {}).get("bank_code") == counter_account["bank_code"],
                      "status": status, "bank": COUNTER_BANK, "consent": "SIGNED_FORM_AT_COUNTER",
                      "elapsed_ms": elapsed_ms(start)})
    return flows, await person_records(settings, card), card


async def person_records(settings: Settings, card: DemoCard) -> list[dict[str, Any]]:
    """What the person sees on the portal (``renkei portal records --card``): their provision records, each
    marked by chain verification; [] when the command failed."""
    shown = await renkei(settings, "portal", "records", card=card)
    return [
        {"seq": n, "requester": r["requester"], "provider": r["provider"], "data_item": r["data_item"],
         "legal_basis": r["legal_basis"], "procedure": (r.get("procedure") or {}).get("code"),
         "status": r["status"], "requested_at": r["requested_at"],
         "provided_at": r["provided_at"], "chain_ok": r["verified"]}
        for n, r in enumerate(shown.get("records") or [], start=1)
    ]
