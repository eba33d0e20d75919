"""``renkei bank apply-lookup``, ``portal disaster-lookup``, ``dicj lookup``, ``dicj record-death``: 相続時・災害時照会.

Lookups follow the law's routes: an applicant applies at a bank (an heir: only
there) or, under a declared disaster, on the portal; DICJ checks the
application and asks the banks; the channel that applied gets DICJ's
notification — which banks hold numbered accounts, never the accounts.

- ``bank apply-lookup --bank B --kind inheritance …``: an heir at bank B's
  counter; the My Number is the DECEASED's (the heir presents it, or the bank
  knows its customer), exchanged for bank B's token.  ``--kind disaster``: a
  depositor at the counter, for the banks they designate.  Who: the bank's
  counter staff, as bank B (its keys); DICJ refuses what the law does not allow.
- ``portal disaster-lookup --card ID --pin -``: a depositor on the portal, under a
  declared disaster, with their card and PIN like every person's command.
- ``dicj lookup``: DICJ's ledger of the applications it handled (ids, codes and
  counts, no person): what DICJ's staff look at.
- ``dicj record-death``: the J-LIS stand-in (:mod:`connectors.jlis_sim`) —
  record a death on the simulated resident record, to try 相続時照会 by hand.

Each waits for DICJ's notification in the applying participant's inbox (the
``dicj`` worker of ``renkei up`` handles the application); it comes once every
bank asked has answered, or at the lookup's deadline (``lookup_deadline_*``
settings, days by default): ``--timeout`` bounds the wait (exit 1 when it
passes, the application goes on).  Exit codes: 0 answered, 2 refused (the
reason code: ``DEATH_NOT_CONFIRMED``, ``UNKNOWN_DISASTER``,
``DISASTER_EXPIRED``, ``OUTSIDE_DISASTER_AREA``, ``INVALID_FIELD``, or a hub
rejection), 1 error.
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import date
from typing import Any

from connectors.commands import (
    EXIT_DONE,
    EXIT_REJECTED,
    Outcome,
    act,
    act_as_card_holder,
    bank_of,
    card_args,
    emit,
    my_number_arg,
    participants_of,
    refused,
    report,
    split_codes,
    subcommand,
    timeout_arg,
)
from infra.core.clock import elapsed_ms

__all__ = ["register"]

NOTICE_KEYS = {"kind": None, "request_id": None, "application_ref": None, "banks_with_accounts": [],
               "banks_not_answered": [], "banks_not_asked": [], "elapsed_ms": None}


def _application(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """The application's body from the flags, validated at the edge (ValidationError names the field)."""
    from infra.domain.lookup_applications import validate_disaster_application, validate_inheritance_application

    ref = args.application_ref or f"cli-{uuid.uuid4().hex[:12]}"
    if kind == "INHERITANCE":
        return validate_inheritance_application({"application_ref": ref, "relationship": args.relationship,
                                                 "evidence": args.evidence or [], "date_of_death": args.died_on})
    return validate_disaster_application({"application_ref": ref, "disaster_id": args.disaster_id,
                                          "area_code": args.area,
                                          "designated_bank_codes": split_codes(args.bank_codes or "")})


async def _apply(settings: Any, args: argparse.Namespace, identity: str, kind: str, *, card: bool = False) -> int:
    """Send the application as ``identity`` and report DICJ's notification.

    ``card``: the person's own application on the portal — with their card and PIN (``--card ID --pin -``),
    never a My Number alone, as every person's command; otherwise a bank's counter, with the My Number."""
    from infra.core.errors import ValidationError
    from infra.domain.policy import BASIS_DISASTER_LOOKUP, BASIS_INHERITANCE_LOOKUP, DATA_DEPOSIT_ACCOUNT_HOLDINGS
    from schemas import types as msg

    try:
        body = _application(args, kind)
    except ValidationError as exc:
        return emit(args, refused(args, exc.code, exc.message))
    type_, basis = ((msg.LOOKUP_APPLICATION_INHERITANCE, BASIS_INHERITANCE_LOOKUP) if kind == "INHERITANCE"
                    else (msg.LOOKUP_APPLICATION_DISASTER, BASIS_DISASTER_LOOKUP))

    async def send(settings: Any, client: Any, token: str) -> Outcome:
        start = time.perf_counter()
        answer = await client.request(identity, type=type_, to="dicj", subject=token, body=body,
                                      data_item=DATA_DEPOSIT_ACCOUNT_HOLDINGS, basis=basis, timeout=args.timeout)
        n = answer.body
        code = EXIT_DONE if n["status"] == "ANSWERED" else EXIT_REJECTED
        out = report(args, n["status"], reason=n["reason"], detail=None if code == EXIT_DONE else
                         "DICJ refused the application; no bank was asked",
                         kind=n["lookup_kind"], request_id=answer.meta.correlation_id,
                         application_ref=n["application_ref"], banks_with_accounts=n["banks_with_accounts"],
                         banks_not_answered=n["banks_not_answered"], banks_not_asked=n["banks_not_asked"],
                         elapsed_ms=elapsed_ms(start))
        listed = [" ".join(out[k]) or "-" for k in ("banks_with_accounts", "banks_not_answered", "banks_not_asked")]
        return Outcome(code, out, [(f"{kind.capitalize()} lookup ({n['application_ref']}): {n['status']}"
                                       + (f" {n['reason']}" if n["reason"] else ""),
                                       ["banks with numbered accounts", "not answered by the deadline", "not asked"],
                                       [listed])],
                       note=f"{args.command_name} rejected: {n['reason']}")

    if card:
        return await act_as_card_holder(settings, args, send)

    async def work(settings: Any, client: Any, my_number: str | None) -> Outcome:
        return await send(settings, client, await client.token_for(identity, my_number, timeout=args.timeout))

    return await act(settings, args, identity, work)


async def cmd_bank_apply_lookup(settings: Any, args: argparse.Namespace) -> int:
    """An heir's or a depositor's application taken at a bank's counter, filed by that bank."""
    bank = bank_of(participants_of(settings), args.bank)
    if bank is None:
        return emit(args, refused(args, "UNKNOWN_PARTICIPANT", "--bank names no bank (a bank code or a bank id)"))
    return await _apply(settings, args, bank.id, args.kind.upper())


async def cmd_portal_disaster_lookup(settings: Any, args: argparse.Namespace) -> int:
    """A depositor's own application on the portal, under a declared disaster."""
    return await _apply(settings, args, "portal", "DISASTER", card=True)


async def cmd_dicj_lookup(settings: Any, args: argparse.Namespace) -> int:
    """DICJ's ledger: the applications it handled, newest first, with their lookups' tallies."""
    async def work(settings: Any, client: Any, my_number: str | None) -> Outcome:
        import asyncpg

        from connectors.dicj import DICJ_MIGRATIONS, application_ledger
        from infra.platform.pgdsn import component_dsn
        from infra.platform.storage import migrate

        conn = await asyncpg.connect(component_dsn(settings, "dicj"))  # DICJ's own tables, as its desk has them
        try:
            await migrate(conn, "dicj", DICJ_MIGRATIONS)
            ledger = await application_ledger(conn, args.limit)
        finally:
            await conn.close()
        out = report(args, "DONE", applications=ledger)
        rows = [[a["received_at"][:19], a["applicant"], a["kind"], a["application_ref"], a["status"],
                 a["reason"] or "", f"{a['answering']}/{a['banks_asked']}", " ".join(a["missing"]) or "-",
                 " ".join(a["late"]) or "-", " ".join(a["banks_with_accounts"]) or "-", a["reminders"]]
                for a in ledger]
        return Outcome(EXIT_DONE, out, [("DICJ: lookup applications (相続時・災害時照会)",
                                            ["received", "applicant", "kind", "ref", "status", "reason", "answered",
                                             "missing", "late", "banks with accounts", "reminders"], rows)])

    return await act(settings, args, None, work, person=False)


async def cmd_dicj_record_death(settings: Any, args: argparse.Namespace) -> int:
    """The J-LIS stand-in: record that the person died on ``--died-on`` (simulation only, for trying 相続時照会)."""
    try:
        died_on = date.fromisoformat(args.died_on)
    except ValueError:
        return emit(args, refused(args, "INVALID_FIELD", "--died-on: a date, YYYY-MM-DD"))

    async def work(settings: Any, client: Any, my_number: str | None) -> Outcome:
        import asyncpg

        from connectors.jlis_sim import JLIS_MIGRATIONS, record_death
        from infra.platform.pgdsn import component_dsn
        from infra.platform.storage import migrate

        token = await client.token_for("dicj", my_number, timeout=args.timeout)  # who J-LIS answers DICJ about
        # The stand-in's table sits where DICJ's desk reads it (DICJ's schema): J-LIS itself is outside the platform.
        conn = await asyncpg.connect(component_dsn(settings, "dicj"))
        try:
            await migrate(conn, "jlis-sim", JLIS_MIGRATIONS)
            await record_death(conn, token, died_on)
        finally:
            await conn.close()
        out = report(args, "DONE", died_on=died_on.isoformat())
        return Outcome(EXIT_DONE, out, [("Simulated J-LIS: death recorded", ["died on"], [[died_on.isoformat()]])])

    return await act(settings, args, "dicj", work)


def _inheritance_args(p: argparse.ArgumentParser) -> None:
    from infra.domain.lookup_applications import EVIDENCE_KINDS, RELATIONSHIPS

    p.add_argument("--relationship", help="inheritance: the heir's relationship to the deceased: "
                                          + ", ".join(r.lower().replace("_", "-") for r in RELATIONSHIPS))
    p.add_argument("--evidence", action="append", metavar="KIND:REF",
                   help="inheritance: a document the bank checked and its reference (repeat); KIND one of "
                        + ", ".join(k.lower().replace("_", "-") for k in EVIDENCE_KINDS)
                        + "; at least one showing the death")
    p.add_argument("--died-on", dest="died_on", metavar="DATE", help="inheritance: the date of death (YYYY-MM-DD)")


def _disaster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--disaster-id", dest="disaster_id", help="disaster: the declared disaster's id "
                                                             "(renkei disaster list)")
    p.add_argument("--area", help="disaster: where the depositor lives, a prefecture (17) or municipality (17204) "
                                  "code")
    p.add_argument("--designated-banks", dest="bank_codes", metavar="CODES",
                   help="disaster: the banks the depositor designates (codes, comma-separated)")


def register() -> None:
    """Add the lookup commands (after :func:`connectors.commands.register`, which creates the groups)."""
    p = subcommand("bank", "apply-lookup", cmd_bank_apply_lookup,
                   "file an heir's (相続時照会) or a depositor's (災害時照会) lookup application taken at the bank's "
                   "counter; DICJ's answer: which banks hold numbered accounts", report_defaults=NOTICE_KEYS)
    p.add_argument("--bank", required=True, help="the bank where the applicant applied: code (9000) or id")
    p.add_argument("--kind", required=True, choices=["inheritance", "disaster"])
    my_number_arg(p)
    p.add_argument("--ref", dest="application_ref", help="the bank's reference for the application (default: "
                                                         "generated)")
    _inheritance_args(p)
    _disaster_args(p)
    timeout_arg(p, default=60.0)

    p = subcommand("portal", "disaster-lookup", cmd_portal_disaster_lookup,
                   "a depositor's disaster lookup (災害時照会) under a declared disaster, to the banks designated",
                   report_defaults=NOTICE_KEYS)
    card_args(p)
    p.add_argument("--ref", dest="application_ref", help="the portal's reference for the application")
    _disaster_args(p)
    timeout_arg(p, default=60.0)

    p = subcommand("dicj", "lookup", cmd_dicj_lookup,
                   "DICJ's ledger of lookup applications and their lookups (no person, no account)",
                   report_defaults={"applications": []})
    p.add_argument("--limit", type=int, default=20, help="how many, newest first (default 20)")
    timeout_arg(p)

    p = subcommand("dicj", "record-death", cmd_dicj_record_death,
                   "the simulated J-LIS: record a death on the resident record (to try 相続時照会 by hand)",
                   report_defaults={"died_on": None})
    my_number_arg(p)
    p.add_argument("--died-on", dest="died_on", required=True, metavar="DATE", help="the date of death (YYYY-MM-DD)")
    timeout_arg(p)
