"""``renkei bank|portal|agency|dicj …``: each participant's own commands against a running stack.

Why this file is long: the shared path of every participant command (act as one participant, report, exit
codes) and the bank, portal and agency commands that are its first users; newer commands live in modules of
their own.

Each command acts as ONE participant of the stack started by ``renkei up``
(endpoints from ``infra.cli.resolve_running``, keys from the state folder):

- ``bank seed-account``: the simulated bank's own customer data (an account,
  and with ``--my-number`` the bank's link from ITS token to the account);
- ``portal register|change|delete|numbering|records|notices``: what a person
  does on the portal (STEP1, 付番申出 — to one bank, or through DICJ for several
  with ONE consolidated result —, 情報提供等記録, お知らせ), as the page does it:
  with the person's card and PIN (``--card ID --pin -``, the PIN from standard
  input), never with a My Number alone; a wrong PIN counts towards the card's
  lock as on the page (``portal card …``, the card issuer's commands, are
  :mod:`connectors.portal_card_command`);
- ``agency inquire``: STEP2, an agency asks the registry for the account;
- ``agency register``: an entitled agency files the person's registration
  alongside another procedure (口座登録法 §4: a tax return, a pension claim).

Lookups (相続時・災害時照会) have their own module, :mod:`connectors.lookup_commands`.

A My Number is accepted at the edge only: validated (check digit), exchanged
for the acting participant's token through token issuance (sealed to the
token authority), and never printed, logged or put in an error.  Secrets given
as ``-`` are read from standard input (on a terminal: prompted, not echoed).  Output is a
table, or with ``--json`` one stable JSON object (docs/cli.md).  Exit codes:
0 done, 2 rejected (the reason code in the output), 1 error (no answer in
time, broker or database away; one line on stderr).

Other modules add subcommands to these groups with :func:`subcommand` from
their own ``register`` (``infra.cli.build_parser`` calls this module's first),
e.g. ``subcommand("bank", "serve", handler, "…")``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from infra.core.clock import elapsed_ms

EXIT_DONE, EXIT_ERROR, EXIT_REJECTED = 0, 1, 2

GROUPS = {
    "bank": "a bank's own commands: its customer data, its channel connector (serve)",
    "portal": "what a person does on the portal with their card (register, change, delete, numbering, records, "
              "notices); the card issuer's card commands; serve the portal",
    "agency": "an agency's commands: ask the registry for a person's account (STEP2), file a registration "
              "alongside another procedure; serve the outbox relay",
    "dicj": "DICJ's commands: the lookups it ran for applications; the simulated J-LIS",
}

# Answer statuses that mean "done" and those that are a refusal (exit 2); anything else is an error (exit 1).
DONE = {
    "registration": {"DONE"},
    "inquiry": {"REGISTERED", "NOT_REGISTERED"},
    "numbering": {"LINKED", "NO_ACCOUNT"},
}
REFUSALS = {  # a registration's TIMEOUT (the bank did not answer the registry's check) is an error: exit 1
    "registration": {"ACCOUNT_NOT_FOUND", "HOLDER_MISMATCH", "NOT_HOLDER", "ACCOUNT_CLOSED", "NOT_REGISTERED",
                     "CONSENT_REQUIRED", "REFUSED"},
    "inquiry": {"BLOCKED"},
    "numbering": {"REFUSED"},
}

Run = Callable[[Any, argparse.Namespace], Awaitable[int]]

_subparsers: dict[str, Any] = {}
_common: argparse.ArgumentParser | None = None


def exit_code(kind: str, status: str) -> int:
    """0, 2 or 1 for an answer ``status`` to a request of ``kind`` (``REJECTED``: a hub rejection notice)."""
    if status in DONE[kind]:
        return EXIT_DONE
    if status == "REJECTED" or status in REFUSALS[kind]:
        return EXIT_REJECTED
    return EXIT_ERROR


def worst(codes: list[int]) -> int:
    """One exit code for several outcomes: an error outranks a refusal, a refusal outranks done."""
    return max(codes, key=[EXIT_DONE, EXIT_REJECTED, EXIT_ERROR].index, default=EXIT_DONE)


def split_codes(value: str) -> list[str]:
    """``"9000,9001 bank-9002"`` → ``["9000", "9001", "bank-9002"]`` (commas or spaces; first seen first, no repeats)."""
    return list(dict.fromkeys(v for v in value.replace(",", " ").split() if v))


def read_secret(prompt: str) -> str:
    """One secret from standard input: prompted without echo on a terminal, else the next line."""
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(prompt)
    return sys.stdin.readline().rstrip("\r\n")


def normalise_my_number(raw: str) -> str:
    """Drop the spaces and hyphens of a written My Number (``1234-5678-9012``), then validate it.

    Raises ``ValidationError`` whose message names the rule, never the value.
    """
    from infra.domain.validation import validate_my_number

    return validate_my_number(raw.replace(" ", "").replace("-", "").strip())


# --------------------------------------------------------------------------- output


@dataclass
class Outcome:
    """What a command reports: exit code, JSON object, tables, and a one-line note for stderr."""

    code: int
    report: dict[str, Any]
    tables: list[tuple[str, list[str], list[list[Any]]]] = field(default_factory=list)
    note: str | None = None


def report(args: argparse.Namespace, status: str, *, reason: str | None = None, detail: str | None = None,
           **fields: Any) -> dict[str, Any]:
    """The JSON object: ``command, status, reason, detail``, the command's own keys (defaults first)."""
    return {"command": args.command_name, "status": status, "reason": reason, "detail": detail,
            **args.report_defaults, **fields}


_report = report


def _stopped(args: argparse.Namespace, code: int, status: str, reason: str | None, detail: str | None,
             request_id: str | None = None) -> Outcome:
    """A command that ended before its normal report: refused at the edge or by the hub, or no answer."""
    report = _report(args, status, reason=reason, detail=detail)
    if "request_id" in report:
        report["request_id"] = request_id
    verb = "rejected" if code == EXIT_REJECTED else "failed"
    return Outcome(code, report, [(f"renkei {args.command_name}", ["status", "reason", "detail"],
                                   [[status, reason, detail]])],
                   note=f"{args.command_name} {verb}: {reason}" + (f" ({detail})" if detail else ""))


def refused(args: argparse.Namespace, reason: str, detail: str | None, request_id: str | None = None) -> Outcome:
    return _stopped(args, EXIT_REJECTED, "REJECTED", reason, detail, request_id)


def emit(args: argparse.Namespace, outcome: Outcome) -> int:
    from infra.core.console import print_json, table

    if args.json:
        print_json(outcome.report)
    else:
        for title, columns, rows in outcome.tables:
            table(title, columns, rows)
    if outcome.note and outcome.code != EXIT_DONE:
        print(f"renkei: {outcome.note}", file=sys.stderr)
    return outcome.code


# --------------------------------------------------------------------------- the shared path


def participants_of(settings: Any) -> Any:
    from infra.domain.participants import participants_of

    return participants_of(settings)


def bank_of(participants: Any, value: str) -> Any:
    """A bank participant by bank code (``9000``) or participant id (``bank-9000``); None if there is none."""
    from infra.domain.participants import Kind

    p = participants.by_bank_code(value) or participants.get(value)
    return p if p is not None and p.kind is Kind.BANK else None


def _account(args: argparse.Namespace, bank_code: str) -> dict[str, str]:
    from infra.domain.validation import validate_bank_account

    return validate_bank_account({"bank_code": bank_code, "branch_code": args.branch, "account_type": args.type,
                                  "account_number": args.number, "holder_kana": args.holder}, field="account")


async def act(settings: Any, args: argparse.Namespace, identity: str | None,
              work: Callable[[Any, Any, str | None], Awaitable[Outcome]], *, person: bool = True) -> int:
    """The common path: check the My Number, start a client as ``identity``, run ``work``, map the answer.

    ``work(settings, client, my_number)`` returns the command's :class:`Outcome`; a hub rejection
    notice (:class:`~connectors.cli_client.Refused`) becomes exit 2 with its reason code, no answer in
    time exit 1.  ``identity`` None: no client at all.
    """
    from infra.core.errors import RenkeiError, ValidationError
    from infra.platform.endpoints import resolve_running

    my_number = None
    if person:
        raw = read_secret("My Number: ") if args.my_number == "-" else args.my_number
        try:
            my_number = normalise_my_number(raw)
        except ValidationError as exc:
            return emit(args, refused(args, exc.code, exc.message))
    settings = resolve_running(settings)  # StackError: one line from infra.cli.main, exit 1
    from connectors.cli_client import CommandClient, Refused

    try:
        if identity is None:
            outcome = await work(settings, None, my_number)
        else:
            client = CommandClient(settings, [identity])
            async with client:
                outcome = await work(settings, client, my_number)
    except Refused as exc:
        outcome = refused(args, exc.code, exc.message, exc.request_id)
    except TimeoutError:
        outcome = _stopped(args, EXIT_ERROR, "TIMEOUT", "TIMEOUT",
                           f"no answer within {args.timeout:g} s; is the stack running (`renkei status`)?")
    except RenkeiError:
        raise  # infra.cli.main prints it on one line (configuration error: exit 2, others: exit 1)
    except Exception as exc:  # broker or database away, …: one line, no traceback
        outcome = _stopped(args, EXIT_ERROR, "ERROR", "ERROR", f"{type(exc).__name__}: {exc}".rstrip(": "))
    return emit(args, outcome)


LOGIN_REFUSALS = {
    "WRONG_PIN": "the card id or PIN is wrong",
    "CARD_LOCKED": "the card is locked after too many wrong PINs; it is unlocked at the counter "
                   "(renkei portal card unlock)",
    "CARD_SUSPENDED": "the card was reported lost; it is unlocked at the counter (renkei portal card unlock)",
}


async def act_as_card_holder(settings: Any, args: argparse.Namespace,
                             work: Callable[[Any, Any, str], Awaitable[Outcome]], *, bus: bool = True) -> int:
    """The person's own commands: log in with the card and its PIN, then ``work(settings, client, token)``.

    The page's rules: the PIN is read from standard input (``--pin -``), a wrong one counts towards the
    card's lock (three lock it), a locked or suspended card is refused.  ``token`` is the person's portal
    token from the card — no My Number is asked.  ``bus``: a client acting as the portal (None without).
    """
    from connectors.portal_cards import validate_card_id, validate_pin
    from infra.core.errors import ValidationError
    from infra.platform.endpoints import resolve_running

    if args.pin != "-":
        return emit(args, refused(args, "INVALID_FIELD", "--pin: the PIN is read from standard input only (--pin -)"))
    pin = read_secret("PIN: ")
    try:
        card = validate_card_id(args.card, "--card")
        validate_pin(pin)
    except ValidationError as exc:
        return emit(args, refused(args, exc.code, exc.message))
    settings = resolve_running(settings)
    try:
        login = await _card_login(settings, card, pin)
    except Exception as exc:  # database away: one line, no traceback
        return emit(args, _stopped(args, EXIT_ERROR, "ERROR", "ERROR", f"{type(exc).__name__}: {exc}".rstrip(": ")))
    if not login.ok:
        assert login.reason is not None
        detail = LOGIN_REFUSALS[login.reason.value]
        if login.tries_left:
            detail += f"; {login.tries_left} more wrong PIN(s) lock the card"
        return emit(args, refused(args, login.reason.value, detail))
    token = login.token
    assert token is not None
    return await act(settings, args, "portal" if bus else None, lambda s, client, _: work(s, client, token),
                     person=False)


async def _card_login(settings: Any, card: str, pin: str) -> Any:
    """``CardStore.login`` on the portal's database (its tables created if this is the first use)."""
    from connectors.portal_cards import CardStore
    from connectors.portal_schema import migrate_portal
    from infra.platform.pgdsn import component_dsn
    from infra.platform.storage import create_pool

    pool = await create_pool(component_dsn(settings, "portal"), min_size=1, max_size=2)
    try:
        await migrate_portal(pool)
        return await CardStore(pool).login(card, pin)
    finally:
        await pool.close()


def _now() -> datetime:
    return datetime.now(UTC)



# --------------------------------------------------------------------------- bank


async def cmd_bank_seed_account(settings: Any, args: argparse.Namespace) -> int:
    """The bank's own data: open the account; with --my-number also link it to the bank's token for the person."""
    from infra.core.errors import ValidationError

    bank = _bank(_participants(settings), args.bank)
    if bank is None:
        return emit(args, refused(args, "UNKNOWN_PARTICIPANT", "--bank names no bank (a bank code or a bank id)"))
    try:
        account = _account(args, bank.bank_code)
    except ValidationError as exc:
        return emit(args, refused(args, exc.code, exc.message))

    async def work(settings: Any, client: Any, my_number: str | None) -> Outcome:
        import asyncpg

        from connectors.bank_sim import BANK_MIGRATIONS, enrol_customer, open_account
        from infra.platform.pgdsn import component_dsn
        from infra.platform.pglayout import BANKS
        from infra.platform.storage import migrate

        token = await client.token_for(bank.id, my_number, timeout=args.timeout) if client is not None else None
        conn = await asyncpg.connect(component_dsn(settings, BANKS))  # the simulated banks' own system
        try:
            await migrate(conn, "bank-sim", BANK_MIGRATIONS)
            async with conn.transaction():
                held = await conn.fetchrow(
                    "SELECT holder_kana, closed FROM bank_accounts WHERE bank_code = $1 AND branch_code = $2 "
                    "AND account_type = $3 AND account_number = $4 FOR UPDATE",
                    account["bank_code"], account["branch_code"], account["account_type"], account["account_number"])
                if held is not None and (held["holder_kana"], held["closed"]) != (account["holder_kana"], args.closed):
                    return refused(args, "ACCOUNT_EXISTS", "the bank already holds this account with another holder "
                                   "name or state")
                await open_account(conn, account, closed=args.closed)
                if token is not None:  # seed_customer would open it again, ignoring --closed
                    await enrol_customer(conn, token, account)
        finally:
            await conn.close()
        report = _report(args, "DONE", bank=bank.id, account=account, closed=args.closed, created=held is None,
                         customer_linked=token is not None)
        return Outcome(EXIT_DONE, report, [(
            f"{bank.name}: account {'opened' if held is None else 'already held'}",
            ["bank", "branch", "type", "number", "holder", "closed", "customer linked"],
            [[account["bank_code"], account["branch_code"], account["account_type"], account["account_number"],
              account["holder_kana"], "yes" if args.closed else "no", "yes" if token is not None else "no"]])])

    return await act(settings, args, bank.id if args.my_number is not None else None, work,
                     person=args.my_number is not None)


# --------------------------------------------------------------------------- portal


async def _file_registration(settings: Any, args: argparse.Namespace, identity: str, basis: str, channel: str,
                             title: str, *, by_card: bool = False) -> int:
    """REGISTER / CHANGE / DELETE the person's public-funds account as ``identity``; the registry's answer
    (after the bank's existence check for REGISTER and CHANGE) is the report.  ``by_card``: the person acts
    with their card (the portal), else with a My Number (an agency)."""
    from infra.core.errors import ValidationError
    from infra.domain.policy import DATA_PUBLIC_FUNDS_ACCOUNT
    from schemas import types as msg

    operation = args.operation
    account = None
    if operation != "DELETE":
        bank = _bank(_participants(settings), args.bank)
        code = bank.bank_code if bank is not None else args.bank  # an unknown code: the registry answers
        try:
            account = _account(args, code)
        except ValidationError as exc:
            return emit(args, refused(args, exc.code, exc.message))

    async def work(settings: Any, client: Any, who: str | None) -> Outcome:
        start = time.perf_counter()
        subject = who if by_card else await client.token_for(identity, who, timeout=args.timeout)
        answer = await client.request(
            identity, type=msg.REGISTRATION_REQUEST, to="registry", subject=subject,
            body={"operation": operation, "account": account, "channel": channel, "requested_at": _now()},
            data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=basis, timeout=args.timeout)
        status, detail = answer.body["status"], answer.body.get("detail")
        code = exit_code("registration", status)
        report = _report(args, status, reason=None if code == EXIT_DONE else status, detail=detail,
                         operation=operation, request_id=answer.meta.correlation_id, elapsed_ms=elapsed_ms(start))
        verb = "rejected" if code == EXIT_REJECTED else "failed"
        return Outcome(code, report, [(f"{title}: {operation.lower()} the public-funds account",
                                       ["status", "detail", "request id", "ms"],
                                       [[status, detail, report["request_id"], report["elapsed_ms"]]])],
                       note=f"{args.command_name} {verb}: {status}" + (f" ({detail})" if detail else ""))

    if by_card:
        return await act_as_card_holder(settings, args, work)
    return await act(settings, args, identity, work)


async def cmd_portal_account(settings: Any, args: argparse.Namespace) -> int:
    """STEP1 through the portal: REGISTER / CHANGE / DELETE the public-funds account."""
    from infra.domain.policy import BASIS_CHANGE, BASIS_REGISTRATION

    basis = BASIS_REGISTRATION if args.operation == "REGISTER" else BASIS_CHANGE
    return await _file_registration(settings, args, "portal", basis, "PORTAL", "Portal", by_card=True)


async def cmd_agency_register(settings: Any, args: argparse.Namespace) -> int:
    """Registration alongside another procedure (口座登録法 §4): an entitled agency files it for the person."""
    from infra.domain.participants import Kind
    from infra.domain.policy import BASIS_ALONGSIDE_PROCEDURE

    agency = _participants(settings).get(args.agency)
    if agency is None or agency.kind is not Kind.AGENCY:
        return emit(args, refused(args, "UNKNOWN_PARTICIPANT", "--agency names no agency"))
    return await _file_registration(settings, args, agency.id, BASIS_ALONGSIDE_PROCEDURE, "ALONGSIDE_PROCEDURE",
                                    agency.name)


async def cmd_portal_numbering(settings: Any, args: argparse.Namespace) -> int:
    """付番申出 from the portal: to the one bank named (its acknowledgement), or through DICJ for several banks
    (ONE consolidated result, each bank's outcome in it)."""
    from connectors.cli_client import Refused
    from infra.domain.policy import BASIS_NUMBERING, DATA_DEPOSIT_ACCOUNT_NUMBERING
    from schemas import types as msg

    participants = _participants(settings)
    named = split_codes(args.bank_codes)
    banks = [_bank(participants, v) for v in named]
    if not named or None in banks:
        return emit(args, refused(args, "UNKNOWN_PARTICIPANT", "--banks: a value names no bank (bank codes or ids)"))
    banks = sorted({b.id: b for b in banks}.values(), key=lambda b: b.bank_code)
    codes = [b.bank_code for b in banks]

    async def work(settings: Any, client: Any, token: str) -> Outcome:

        async def through_dicj() -> list[dict[str, Any]]:
            answer = await client.request(
                "portal", type=msg.NUMBERING_REQUEST, to="dicj", subject=token,
                body={"bank_codes": codes, "channel": "PORTAL", "receiving_bank_code": None, "requested_at": _now()},
                data_item=DATA_DEPOSIT_ACCOUNT_NUMBERING, basis=BASIS_NUMBERING, timeout=args.timeout)
            outcomes = {o["bank_code"]: o for o in answer.body["outcomes"]}
            rows = []
            for b in banks:
                o = outcomes.get(b.bank_code)
                status = o["status"] if o else "NO_ANSWER"  # not answered by DICJ's deadline: exit 1
                rows.append({"bank_code": b.bank_code, "bank": b.id, "status": status,
                             "accounts_linked": o["accounts_linked"] if o else None,
                             "reason": None if exit_code("numbering", status) == EXIT_DONE else status,
                             "request_id": answer.meta.correlation_id})
            return rows

        async def one(bank: Any) -> dict[str, Any]:
            row: dict[str, Any] = {"bank_code": bank.bank_code, "bank": bank.id, "status": None,
                                   "accounts_linked": None, "reason": None, "request_id": None}
            try:
                ack = await client.request(
                    "portal", type=msg.NUMBERING_REQUEST, to=bank.id, subject=token,
                    body={"bank_codes": codes, "channel": "PORTAL", "receiving_bank_code": None,
                          "requested_at": _now()},
                    data_item=DATA_DEPOSIT_ACCOUNT_NUMBERING, basis=BASIS_NUMBERING, timeout=args.timeout)
                row.update(status=ack.body["status"], accounts_linked=ack.body["accounts_linked"],
                           request_id=ack.meta.correlation_id)
                if exit_code("numbering", row["status"]) != EXIT_DONE:
                    row["reason"] = row["status"]
            except Refused as exc:
                row.update(status="REJECTED", reason=exc.code, request_id=exc.request_id)
            except TimeoutError:
                row.update(status="TIMEOUT", reason="TIMEOUT")
            return row

        if len(banks) > 1:
            try:
                rows = await through_dicj()
            except Refused as exc:
                rows = [{"bank_code": b.bank_code, "bank": b.id, "status": "REJECTED", "accounts_linked": None,
                         "reason": exc.code, "request_id": exc.request_id} for b in banks]
        else:
            rows = [await one(banks[0])]
        code = worst([exit_code("numbering", r["status"]) for r in rows])
        first = next((r for r in rows if exit_code("numbering", r["status"]) == code), rows[0])
        status = {EXIT_DONE: "DONE", EXIT_REJECTED: "REJECTED", EXIT_ERROR: "TIMEOUT"}[code]
        reason = None if code == EXIT_DONE else first["reason"]
        detail = None if code == EXIT_DONE else f"bank {first['bank_code']}: {first['status']}"
        report = _report(args, status, reason=reason, detail=detail, banks=rows)
        route = "portal → DICJ → banks, one result" if len(banks) > 1 else "portal → bank"
        return Outcome(code, report, [(f"Numbering ({route}): {status}",
                                       ["bank", "status", "accounts linked", "reason"],
                                       [[r["bank_code"], r["status"], r["accounts_linked"], r["reason"]]
                                        for r in rows])],
                       note=f"{args.command_name}: {reason} ({detail})")

    return await act_as_card_holder(settings, args, work)


async def cmd_portal_records(settings: Any, args: argparse.Namespace) -> int:
    """The person's provision records as the portal shows them, verified against the latest checkpoint.

    Exit 0 for OK and PENDING (records not yet checkpointed verify against the signed head), 1 for TAMPERED.
    """
    from connectors.portal import records_view
    from connectors.portal_views import named_records
    from infra.platform.pgdsn import records_dsn
    from infra.platform.storage import create_pool
    from infra.records.records_verify import RecordsVerifier

    async def work(settings: Any, client: Any, token: str) -> Outcome:
        pool = await create_pool(records_dsn(settings), min_size=1, max_size=2)
        try:
            async with RecordsVerifier.for_settings(settings, pool) as verifier:
                view = named_records(_participants(settings), await records_view(verifier, token))
        finally:
            await pool.close()
        ok, verdict, checkpoint = view["chain_ok"], view["verdict"], view["checkpoint"]
        report = _report(args, "OK" if ok else "TAMPERED", reason=None if ok else "TAMPERED",
                         detail=None if ok else "; ".join(view["problems"]), **view)
        against = (f"checkpoint #{checkpoint['number']} of {checkpoint['issued_at']}" if checkpoint
                   else "no checkpoint yet")
        headline = {"OK": "[green]OK[/green]: every record is covered by a signed checkpoint",
                    "PENDING": f"PENDING: {view['pending']} record(s) not yet checkpointed, verified against the "
                               "signed head",
                    "TAMPERED": "[red]TAMPERED[/red]: see the problems below"}[verdict]
        shown = {"CHECKPOINTED": "[green]checkpointed[/green]", "PENDING": "[yellow]not yet checkpointed[/yellow]",
                 "TAMPERED": "[red]TAMPERED[/red]", "UNVERIFIED": "[red]cannot verify[/red]"}
        tables = [(f"Provision records (情報提供等記録): {headline} ({against})",
                   ["requested at", "requester", "provider", "data item", "legal basis", "procedure", "status",
                    "provided at", "record"],
                   [[r["requested_at"], r["requester_name"]["en"], r["provider_name"]["en"], r["data_item"],
                     r["legal_basis"], (r["procedure"] or {}).get("name_en", (r["procedure"] or {}).get("code")),
                     r["status"], r["provided_at"], shown[r["state"]]] for r in view["records"]])]
        if view["purged_before"]:
            tables.append(("Retention", ["records before", "removed"],
                           [[view["purged_before"], "under the retention period (a signed anchor keeps the rest "
                                                    "verifiable)"]]))
        if view["problems"]:
            tables.append(("Problems", ["problem"], [[p] for p in view["problems"]]))
        return Outcome(EXIT_DONE if ok else EXIT_ERROR, report, tables,
                       note=f"{args.command_name}: the records were tampered with")

    return await act_as_card_holder(settings, args, work, bus=False)


async def cmd_portal_notices(settings: Any, args: argparse.Namespace) -> int:
    """The person's notices (お知らせ), newest first, and the registered account they last showed (masked)."""
    from connectors.portal_notices import NoticeVault, PortalNotices
    from connectors.portal_schema import migrate_portal
    from connectors.portal_views import account_view, notice_view
    from infra.platform.pgdsn import component_dsn
    from infra.platform.storage import create_pool

    async def work(settings: Any, client: Any, token: str) -> Outcome:
        participants = _participants(settings)
        notices = PortalNotices(NoticeVault.for_settings(settings))
        pool = await create_pool(component_dsn(settings, "portal"), min_size=1, max_size=2)  # the portal's tables
        try:
            await migrate_portal(pool)
            shown = [notice_view(participants, n) for n in await notices.for_person(pool, token, limit=args.limit)]
            account = account_view(participants, await notices.account(pool, token))
            unread = await notices.unread(pool, token)
            if args.mark_read:
                await notices.mark_read(pool, token)
        finally:
            await pool.close()
        report = _report(args, "OK", account=account, unread=unread, notices=shown)
        a = account or {}
        tables = [("Registered public-funds account (公金受取口座, masked)",
                   ["bank", "branch", "type", "number", "holder", "since"],
                   [[a["bank_name"]["en"], a["branch_code"], a["account_type"], f"****{a['number_last_digits']}",
                     a["holder_kana"], a["since"]]] if account else [["none registered", "", "", "", "", ""]]),
                  (f"Notices (お知らせ): {len(shown)} shown, {unread} unread",
                   ["when", "kind", "event", "status", "other party", "banks", "new"],
                   [[n["occurred_at"], n["kind"], n["event"], n["status"], (n["party_name"] or {}).get("en"),
                     " ".join(n["bank_codes"]), "" if n["read"] else "yes"] for n in shown])]
        return Outcome(EXIT_DONE, report, tables)

    return await act_as_card_holder(settings, args, work, bus=False)


# --------------------------------------------------------------------------- agency


ITEMS = {"public-funds-account": "public_funds_account", "public_funds_account": "public_funds_account"}


async def cmd_agency_inquire(settings: Any, args: argparse.Namespace) -> int:
    """STEP2: the agency asks the registry which account to pay into."""
    from connectors.agency import SUPPORTED_ITEMS
    from infra.domain.participants import Kind

    agency = _participants(settings).get(args.agency)
    if agency is None or agency.kind is not Kind.AGENCY:
        return emit(args, refused(args, "UNKNOWN_PARTICIPANT", "--agency names no agency"))
    item = ITEMS[args.item]
    type_, basis = SUPPORTED_ITEMS[item]

    async def work(settings: Any, client: Any, my_number: str | None) -> Outcome:
        start = time.perf_counter()
        answer = await client.request(
            agency.id, type=type_, to="registry",
            subject=await client.token_for(agency.id, my_number, timeout=args.timeout),
            body={"procedure_code": args.procedure, "requested_at": _now()},
            data_item=item, basis=basis, timeout=args.timeout, procedure=args.procedure)
        status, account = answer.body["status"], answer.body.get("account")
        code = exit_code("inquiry", status)
        report = _report(args, status, reason=None if code == EXIT_DONE else status, agency=agency.id, item=item,
                         procedure=args.procedure, account=account, request_id=answer.meta.correlation_id,
                         elapsed_ms=elapsed_ms(start))
        a = account or {}
        return Outcome(code, report, [(f"{agency.name}: provision inquiry ({item})",
                                       ["status", "bank", "branch", "type", "number", "holder", "ms"],
                                       [[status, a.get("bank_code"), a.get("branch_code"), a.get("account_type"),
                                         a.get("account_number"), a.get("holder_kana"), report["elapsed_ms"]]])],
                       note=f"{args.command_name} rejected: {status}")

    return await act(settings, args, agency.id, work)


# --------------------------------------------------------------------------- parser


async def _dispatch(settings: Any, args: argparse.Namespace) -> int:
    return await args.run(settings, args)


def subcommand(group: str, name: str, run: Run, help_text: str, *, report_defaults: dict[str, Any] | None = None,
               bank_codes: bool = False) -> argparse.ArgumentParser:
    """Add ``renkei <group> <name>`` (``group``: bank, portal, agency, dicj) and return its parser.

    ``run(settings, args) -> exit code``; the configuration flags (``--json``, ``--state-dir``, …) work after
    the subcommand too.  Call it after :func:`register` (``infra.cli.build_parser`` runs this module's
    ``register`` before ``connectors.ops.register``).  ``bank_codes`` makes ``--banks`` this command's list
    of banks (``args.bank_codes``) instead of the number of generated demo banks.
    """
    assert _common is not None and group in _subparsers, "connectors.commands.register() must run first"
    if bank_codes:
        from infra.core.arguments import common_parser

        # A fresh copy of the configuration flags, so that resolving the --banks clash touches only this parser.
        parser = _subparsers[group].add_parser(name, parents=[common_parser()], conflict_handler="resolve",
                                               help=help_text, description=help_text)
    else:
        parser = _subparsers[group].add_parser(name, parents=[_common], help=help_text, description=help_text)
    parser.set_defaults(run=run, command_name=f"{group} {name}", report_defaults=report_defaults or {})
    return parser


def my_number_arg(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--my-number", dest="my_number", required=required, metavar="N",
                   help="the person's My Number (12 digits; `-` reads it from stdin). Checked here, exchanged for "
                        "this participant's token, never printed or sent on")


def card_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--card", required=True, metavar="ID", help="the person's card id (as on the portal page)")
    p.add_argument("--pin", required=True, metavar="-",
                   help="`-`: the card's PIN is read from standard input (a terminal prompts without echo). Three "
                        "wrong PINs lock the card, as on the page")


def timeout_arg(p: argparse.ArgumentParser, default: float | None = 30.0) -> None:
    p.add_argument("--timeout", type=float, default=default, metavar="S",
                   help=f"seconds to wait for each answer (default {default:g})" if default else
                   "seconds to wait for the result (default: the deadline + 30)")


def _account_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bank", required=True, help="bank code (9000) or bank participant id (bank-9000)")
    p.add_argument("--branch", required=True, help="branch code, 3 digits")
    p.add_argument("--type", default="ordinary", help="ordinary, current, savings (普通/当座/貯蓄, Zengin 1/2/4)")
    p.add_argument("--number", required=True, help="account number, up to 7 digits")
    p.add_argument("--holder", required=True, help="holder name in katakana, e.g. 'ヤマダ タロウ'")


def register(add: Any, common: Any) -> None:
    """Add the participant command groups to the ``renkei`` parser (``add(name, handler, help)``)."""
    global _common
    _common = common
    _subparsers.clear()
    for group, help_text in GROUPS.items():
        _subparsers[group] = add(group, _dispatch, help_text).add_subparsers(
            dest=f"{group}_command", required=True, metavar="COMMAND")

    p = subcommand("bank", "seed-account", cmd_bank_seed_account,
                   "the simulated bank's own customer data: open an account (and link it to the person)",
                   report_defaults={"bank": None, "account": None, "closed": None, "created": None,
                                    "customer_linked": None})
    _account_args(p)
    _my_number_arg(p, required=False)
    p.add_argument("--closed", action="store_true", help="the account is closed")
    timeout_arg(p)

    account_keys = {"operation": None, "request_id": None, "elapsed_ms": None}
    for operation, help_text in (("register", "register the person's public-funds account (STEP1)"),
                                 ("change", "change the person's public-funds account"),
                                 ("delete", "delete the person's public-funds account")):
        p = subcommand("portal", operation, cmd_portal_account, help_text, report_defaults=account_keys)
        p.set_defaults(operation=operation.upper())
        card_args(p)
        if operation != "delete":
            _account_args(p)
        timeout_arg(p)
    p = subcommand("portal", "numbering", cmd_portal_numbering,
                   "file an account-numbering request (付番申出): with the bank named, or through DICJ for several "
                   "(one consolidated result)",
                   report_defaults={"banks": []}, bank_codes=True)
    card_args(p)
    p.add_argument("--banks", dest="bank_codes", required=True, metavar="CODES",
                   help="banks to number at: codes or ids, comma-separated (9000,9001)")
    timeout_arg(p)
    p = subcommand("portal", "records", cmd_portal_records,
                   "the person's provision records (情報提供等記録), verified against the signed checkpoint",
                   report_defaults={"verdict": None, "chain_ok": None, "problems": [], "checkpoint": None,
                                    "pending": None, "purged_before": None, "records": []})
    card_args(p)
    timeout_arg(p)
    p = subcommand("portal", "notices", cmd_portal_notices,
                   "the person's notices (お知らせ) and registered account (masked), as the page shows them",
                   report_defaults={"account": None, "unread": None, "notices": []})
    card_args(p)
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N notices, newest first (50)")
    p.add_argument("--mark-read", dest="mark_read", action="store_true", help="mark them read afterwards")
    timeout_arg(p)

    p = subcommand("agency", "inquire", cmd_agency_inquire,
                   "ask the registry for the person's public-funds account (STEP2)",
                   report_defaults={"agency": None, "item": None, "procedure": None, "account": None,
                                    "request_id": None, "elapsed_ms": None})
    p.add_argument("--agency", required=True, help="the agency's participant id (e.g. agency-nta)")
    _my_number_arg(p)
    p.add_argument("--item", choices=sorted(ITEMS), default="public-funds-account", help="the data item")
    p.add_argument("--procedure", "--procedure-code", dest="procedure", required=True, metavar="CODE",
                   help="the public-benefit procedure the account is needed for, one the agency is entitled to "
                        "(infra/domain/procedures.toml, e.g. income-tax-refund)")
    timeout_arg(p)

    for operation in ("register", "change"):
        p = subcommand("agency", operation, cmd_agency_register,
                       f"{operation} the person's public-funds account alongside another procedure (口座登録法 §4; "
                       "entitled agencies only)", report_defaults=account_keys)
        p.set_defaults(operation=operation.upper())
        p.add_argument("--agency", required=True, help="the agency's participant id (agency-nta, agency-mhlw)")
        _my_number_arg(p)
        _account_args(p)
        timeout_arg(p)


# The names the command modules of this package use (connectors.lookup_commands); the ones above keep their
# short private spellings here.
_report, _participants, _bank, _my_number_arg = report, participants_of, bank_of, my_number_arg
