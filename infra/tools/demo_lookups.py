"""``renkei demo`` flows for 付番申出 and 相続時・災害時照会: ``numbering``, ``inheritance-lookup``,
``inheritance-application``, ``disaster-lookup``.

They run against the demo's platform (hub, simulated banks and DICJ's desk as
real processes) with the portal and a bank counter as in-process participants,
and the participant and ops commands a user would type (``renkei bank
apply-lookup``, ``renkei dicj record-death``, ``renkei disaster declare``,
``renkei portal disaster-lookup``).  A bank's token for the demo person comes
from the token authority, standing for the 符号取得 the bank did at account
opening; DICJ's and the portal's go through the token-issuance exchange.

- ``numbering``: the portal numbers at one bank directly, and at several banks
  through DICJ (one consolidated result); a bank's counter numbers its own
  accounts and passes the request on through DICJ (one result back to it, its
  own outcome in it).
- ``inheritance-lookup``: DICJ's lookup across every bank as the hub gathers
  it: one deliberately slow bank shows up as missing at the deadline (the
  demo's short inheritance deadline), then as a late supplement.
- ``inheritance-application``: an heir applies at a bank's counter; DICJ
  refuses while the (simulated) resident record shows no death, then, once it
  does, asks every bank and answers the applying bank with the banks that hold
  numbered accounts — never the accounts.
- ``disaster-lookup``: an operator declares a disaster; a depositor applies on
  the portal; only the designated banks are asked.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from connectors.bank_sim import file_numbering_at_counter, set_behaviour
from infra.core.clock import elapsed_ms
from infra.core.settings import Settings
from infra.domain.policy import BASIS_NUMBERING, DATA_DEPOSIT_ACCOUNT_NUMBERING
from infra.platform.pglayout import BANKS
from infra.tools.harness import LookupWorld, lookup_world
from schemas import types as msg
from streams.participant import ParticipantRuntime

SLOW_BANK_DELAY_MS = 14000
INHERITANCE_DEADLINE_S = 8
"""The demo platform's inheritance deadline (``lookup_deadline_inheritance_s``): short, so the slow bank shows."""
DEMO_DISASTER = "2026-DEMO-01"
DIED_ON = "2025-12-01"


async def _numbering(w: LookupWorld) -> dict[str, Any]:
    started = time.perf_counter()
    mn, _ = await w.person({"9000": 2, "9001": 1, "9002": 1})
    ack = await w.number_via_portal(mn, "9000")
    several, _ = await w.person({"9003": 1, "9004": 2})
    result = await w.portal.request(  # several banks at once: DICJ gathers, ONE result to the portal
        "portal", type=msg.NUMBERING_REQUEST, to="dicj", subject=await w.portal.token_for("portal", several),
        body={"bank_codes": ["9002", "9003", "9004"], "channel": "PORTAL", "receiving_bank_code": None,
              "requested_at": datetime.now(UTC)},
        data_item=DATA_DEPOSIT_ACCOUNT_NUMBERING, basis=BASIS_NUMBERING, timeout=60)
    via_portal = {o["bank_code"]: f"{o['status']} {o['accounts_linked']}" for o in result.body["outcomes"]}
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
            and outcomes == {"9001": "LINKED", "9002": "LINKED", "9003": "NO_ACCOUNT"}
            and via_portal == {"9002": "NO_ACCOUNT 0", "9003": "LINKED 1", "9004": "LINKED 2"},
            "portal_to_9000": f"{ack['status']} {ack['accounts_linked']}",
            "portal_via_dicj_one_result": via_portal,
            "counter_9001": own, "via_dicj": outcomes,
            "elapsed_ms": elapsed_ms(started)}


async def _inheritance(w: LookupWorld) -> dict[str, Any]:
    mn, accounts = await w.person({"9000": 2, "9001": 1, "9003": 1})
    for code in accounts:
        await w.number_via_portal(mn, code)
    await set_behaviour(w.conn, "bank-9003", answer_delay_ms=SLOW_BANK_DELAY_MS)
    try:
        started = time.perf_counter()
        cid = await w.dicj.start_lookup("INHERITANCE", await w.dicj.token_for("dicj", mn))
        view = await w.dicj.wait_result(cid, timeout=60)
        result_ms = elapsed_ms(started)
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


async def _application(w: LookupWorld) -> dict[str, Any]:
    """The heir applies at bank 9001's counter (renkei bank apply-lookup); DICJ answers it with banks."""
    from infra.tools.demo_accounts import renkei

    mn, _ = await w.person({"9000": 2, "9002": 1})
    for code in ("9000", "9002"):
        await w.number_via_portal(mn, code)
    apply = ["bank", "apply-lookup", "--bank", "9001", "--kind", "inheritance", "--relationship", "child",
             "--evidence", "death-certificate:DC-DEMO-1", "--evidence", "family-register:FR-DEMO-1",
             "--died-on", DIED_ON]
    started = time.perf_counter()
    early = await renkei(w.settings, *apply, "--ref", "DEMO-HEIR-0", my_number=mn)  # no death on record yet
    death = await renkei(w.settings, "dicj", "record-death", "--died-on", DIED_ON, my_number=mn)
    answer = await renkei(w.settings, *apply, "--ref", "DEMO-HEIR-1", my_number=mn)
    return {"name": "inheritance-application",
            "ok": early["exit_code"] == 2 and early.get("reason") == "DEATH_NOT_CONFIRMED"
            and death["exit_code"] == 0 and answer["exit_code"] == 0 and answer["status"] == "ANSWERED"
            and answer["banks_with_accounts"] == ["9000", "9002"] and answer["banks_not_answered"] == [],
            "applied_at": "bank-9001", "before_the_death_was_recorded": early.get("reason"),
            "death_confirmed_by": "J-LIS (simulated, outside the platform's trust)",
            "status": answer.get("status"), "banks_with_accounts": answer.get("banks_with_accounts"),
            "banks_not_answered": answer.get("banks_not_answered"),
            "via": "renkei bank apply-lookup, renkei dicj record-death",
            "elapsed_ms": elapsed_ms(started)}


async def _disaster(w: LookupWorld) -> dict[str, Any]:
    """An operator declares a disaster; the depositor applies on the portal, with their card, for the banks they
    designate."""
    from infra.tools.demo_accounts import issue_card, renkei

    mn, accounts = await w.person({"9000": 1, "9004": 1})
    for code in accounts:
        await w.number_via_portal(mn, code)
    card, _ = await issue_card(w.settings, f"DEMO-D{uuid.uuid4().hex[:6].upper()}", mn)  # the card issuer's work
    started = time.perf_counter()
    declared = await renkei(w.settings, "disaster", "declare", "--id", DEMO_DISASTER, "--name", "デモ地震",
                            "--areas", "17", "--from", "2026-01-01", "--until", "2099-12-31",
                            "--reason", "the demo declares it")
    answer = await renkei(w.settings, "portal", "disaster-lookup", "--disaster-id", DEMO_DISASTER,
                          "--area", "17204", "--designated-banks", "9000,9002", card=card) if card else \
        {"status": "ERROR", "exit_code": None, "reason": "no portal card was issued"}
    return {"name": "disaster-lookup",
            "ok": declared["exit_code"] == 0 and answer["exit_code"] == 0
            and answer["banks_with_accounts"] == ["9000"] and answer["banks_not_answered"] == [],
            "disaster": DEMO_DISASTER, "declared": declared.get("status"), "status": answer.get("status"),
            "reason": answer.get("reason"), "designated": ["9000", "9002"], "applied_on": "portal",
            "banks_with_accounts": answer.get("banks_with_accounts"),
            "via": "renkei portal card issue, renkei disaster declare, renkei portal disaster-lookup --card",
            "result_ms": elapsed_ms(started)}


async def lookup_flows(settings: Settings) -> list[dict[str, Any]]:
    """The four flows, sharing one DICJ desk (DICJ's own tools, beside its worker) and one portal client."""
    async with lookup_world(settings, "demo") as w:
        flows = []
        for name, flow in (("numbering", _numbering), ("inheritance-lookup", _inheritance),
                           ("inheritance-application", _application), ("disaster-lookup", _disaster)):
            try:
                flows.append(await flow(w))
            except Exception as exc:  # one failing flow is reported, the others still run
                flows.append({"name": name, "ok": False, "error": type(exc).__name__})
        return flows
