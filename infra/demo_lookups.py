"""``renkei demo`` flows for 付番申出 and 相続時・災害時照会: ``numbering``, ``inheritance-lookup``, ``disaster-lookup``.

They run against the demo's platform (hub and simulated banks as real
processes) with DICJ (``connectors.dicj.DicjDesk``) and the portal as
in-process participants.  A bank's token for the demo person comes from the
token authority, standing for the 符号取得 the bank did at account opening;
DICJ's and the portal's go through the token-issuance exchange.  The
inheritance lookup makes one bank really slow (its answer leaves the bank
after the deadline) so it shows up as missing, then as a supplement.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from connectors.bank_sim import file_numbering_at_counter, seed_customer, set_behaviour
from connectors.client import BusClient
from connectors.dicj import DicjDesk
from infra.keystore import KeyStore
from infra.pgdsn import component_dsn
from infra.pglayout import BANKS
from infra.policy import BASIS_NUMBERING, DATA_DEPOSIT_ACCOUNT_NUMBERING
from infra.settings import Settings
from infra.validation import generate_my_number
from schemas import types as T
from streams.participant import ParticipantRuntime

SLOW_BANK_DELAY_MS = 5000
LOOKUP_DEADLINE_S = 3


class _World:
    def __init__(self, settings: Settings, conn: asyncpg.Connection, dicj: DicjDesk, portal: BusClient) -> None:
        self.settings, self.conn, self.dicj, self.portal = settings, conn, dicj, portal
        self.tokens = KeyStore.for_settings(settings).token_authority()
        self.rng = random.Random()

    def bank_token(self, my_number: str, code: str) -> str:
        return self.tokens.token_for(my_number, f"bank-{code}")

    async def person(self, holdings: dict[str, int]) -> tuple[str, dict[str, list[dict]]]:
        mn = generate_my_number(self.rng)
        accounts: dict[str, list[dict]] = {}
        for code, n in holdings.items():
            for _ in range(n):
                a = {"bank_code": code, "branch_code": f"{self.rng.randrange(1, 999):03d}", "account_type": "ORDINARY",
                     "account_number": f"{self.rng.randrange(10**7):07d}", "holder_kana": "スズキ イチロウ"}
                await seed_customer(self.conn, self.bank_token(mn, code), a)
                accounts.setdefault(code, []).append(a)
        return mn, accounts

    async def number_via_portal(self, my_number: str, code: str) -> dict:
        answer = await self.portal.request(
            "portal", type=T.NUMBERING_REQUEST, to=f"bank-{code}", subject=await self.portal.token_for("portal", my_number),
            body={"bank_codes": [code], "channel": "PORTAL", "receiving_bank_code": None,
                  "requested_at": datetime.now(UTC)},
            data_item=DATA_DEPOSIT_ACCOUNT_NUMBERING, basis=BASIS_NUMBERING, timeout=60)
        return answer.body


async def _numbering(w: _World) -> dict[str, Any]:
    started = time.perf_counter()
    mn, _ = await w.person({"9000": 2, "9001": 1, "9002": 1})
    ack = await w.number_via_portal(mn, "9000")
    counter = ParticipantRuntime(w.settings, ["bank-9001"], {}, group=f"{uuid.uuid4().hex}.demo-counter",
                                 database=BANKS)  # the simulated bank's own counter system
    await counter.start(consume=False)
    try:
        cid, own, _ = await file_numbering_at_counter(counter, "bank-9001", w.bank_token(mn, "9001"),
                                                      ["9001", "9002", "9003"])
    finally:
        await counter.stop()
    row = None
    for _ in range(600):
        row = await w.conn.fetchrow("SELECT outcomes, banks_not_answered FROM bank_numbering_results "
                                    "WHERE correlation_id = $1", uuid.UUID(cid))
        if row is not None:
            break
        await asyncio.sleep(0.1)
    outcomes = {o["bank_code"]: o["status"] for o in json.loads(row["outcomes"])} if row else {}
    return {"name": "numbering",
            "ok": ack["status"] == "LINKED" and ack["accounts_linked"] == 2 and own == "LINKED"
            and outcomes == {"9002": "LINKED", "9003": "NO_ACCOUNT"},
            "portal_to_9000": f"{ack['status']} {ack['accounts_linked']}",
            "counter_9001": own, "via_dicj": outcomes,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 1)}


async def _inheritance(w: _World) -> dict[str, Any]:
    mn, accounts = await w.person({"9000": 2, "9001": 1, "9003": 1})
    for code in accounts:
        await w.number_via_portal(mn, code)
    await set_behaviour(w.conn, "bank-9003", answer_delay_ms=SLOW_BANK_DELAY_MS)
    try:
        started = time.perf_counter()
        cid = await w.dicj.start_lookup("INHERITANCE", await w.dicj.token_for("dicj", mn), deadline_s=LOOKUP_DEADLINE_S)
        view = await w.dicj.wait_result(cid, timeout=60)
        result_ms = round((time.perf_counter() - started) * 1000, 1)
        for _ in range(600):
            late = await w.dicj.view(cid)
            if late["late_banks"]:
                break
            await asyncio.sleep(0.1)
    finally:
        await set_behaviour(w.conn, "bank-9003")
    expected = sorted(b.bank_code for b in w.dicj.lookup_banks() if b.bank_code != "9003")
    return {"name": "inheritance-lookup",
            "ok": view["answering_banks"] == expected and view["missing_banks"] == ["9003"]
            and len(view["accounts"]) == 3 and late["late_banks"] == ["9003"] and len(late["supplement_accounts"]) == 1,
            "banks_asked": len(expected) + 1, "answering": view["answering_banks"],
            "with_accounts": view["banks_with_accounts"], "accounts": len(view["accounts"]),
            "missing_at_deadline": view["missing_banks"], "late_supplement": late["late_banks"],
            "result_ms": result_ms}


async def _disaster(w: _World) -> dict[str, Any]:
    mn, accounts = await w.person({"9000": 1, "9004": 1})
    for code in accounts:
        await w.number_via_portal(mn, code)
    started = time.perf_counter()
    cid = await w.dicj.start_lookup("DISASTER", await w.dicj.token_for("dicj", mn), deadline_s=20,
                                    designated_bank_codes=["9000", "9002"], disaster_id="demo-disaster")
    view = await w.dicj.wait_result(cid, timeout=60)
    return {"name": "disaster-lookup",
            "ok": view["answering_banks"] == ["9000", "9002"] and view["missing_banks"] == []
            and len(view["accounts"]) == 1,
            "designated": ["9000", "9002"], "answering": view["answering_banks"],
            "accounts": len(view["accounts"]), "result_ms": round((time.perf_counter() - started) * 1000, 1)}


async def lookup_flows(settings: Settings) -> list[dict[str, Any]]:
    """The three flows, sharing one DICJ desk and one portal client."""
    prefix = settings.kafka.topic_prefix
    conn = await asyncpg.connect(component_dsn(settings, BANKS))  # the simulated banks' own data
    try:
        async with DicjDesk(settings, group=f"{prefix}.demo-dicj") as dicj, \
                BusClient(settings, ["portal"], group=f"{prefix}.demo-portal") as portal:
            w = _World(settings, conn, dicj, portal)
            flows = []
            for name, flow in (("numbering", _numbering), ("inheritance-lookup", _inheritance),
                               ("disaster-lookup", _disaster)):
                try:
                    flows.append(await flow(w))
                except Exception as exc:  # one failing flow is reported, the others still run
                    flows.append({"name": name, "ok": False, "error": type(exc).__name__})
            return flows
    finally:
        await conn.close()
