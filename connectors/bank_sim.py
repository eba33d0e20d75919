"""Simulated banks for the embedded world: many bank identities served by one process.

Why this file is long: one simulated bank's every flow (registration, existence, numbering, lookups, counter
filings) over one shared account store.

Each bank has its own keys, inbox topic and token space; their accounts live
in one PostgreSQL table keyed by bank code.  They answer account existence
checks (口座実在性確認) from their own customer data (:func:`existence_result`):
the account exists, is open, is held by the person the check is about (the
check's subject is the bank's own token for the person, linked to the account
in ``bank_customers``) and the holder name matches.  A bank's counter files
STEP3 registrations with the person's consent (:func:`register_at_counter`) and
records the registry's answers.  The channel connectors (batch files, HTTP)
bridge real banks' systems; the handlers here are the bank's side of the
protocol.

Account numbering (付番申出) and lookups (相続時・災害時照会):

- ``bank_customers`` is the bank's own customer knowledge (本人確認 at account
  opening): which of its accounts belong to the person it knows by ITS token.
  A numbering request carries no account data (its schema has none), so the
  bank decides from this table which accounts are the person's.
- ``bank_numbered_accounts`` records the link (付番): one row per account,
  primary key the account itself, so an account is numbered at most once; a
  repeated request for the same person is a no-op (LINKED with the same
  count); an account already numbered to another person is REFUSED, never
  silently re-linked.
- A numbering request taken at a bank's counter (:func:`file_numbering_at_counter`)
  links the bank's own accounts and goes to DICJ with that outcome in the same
  transaction, whatever banks it names: the bank's own numbering is on the bus,
  and DICJ's one consolidated result comes back (``bank_numbering_results``).
- A lookup is answered from ``bank_numbered_accounts`` only (the law's
  lookups find numbered accounts), sealed end to end to DICJ.  A reminder
  (the same lookup again, ``reminder`` > 0) is answered like the first
  inquiry unless the bank's answer is still being prepared.
- An heir's or a depositor's application taken at a bank's counter
  (:func:`apply_lookup_at_counter`) goes to DICJ; DICJ's notification — the
  banks holding numbered accounts, or why it was refused — lands in
  ``bank_lookup_notifications``.
- ``bank_sim_behaviour`` makes a simulated bank slow (``answer_delay_ms``:
  the answer is held in ``bank_delayed_answers`` and really leaves only when
  due, without blocking the other banks), buggy (``answer_twice``) or
  forgetful (``ignore_inquiries``: that many inquiries get no answer, as if a
  batch had dropped them; a reminder is then answered).

Handover to a channel connector (``python -m connectors.serve bank``): a
connector that bridges bank X to its real channel holds a lease in
``bank_channel_leases`` naming the message types it handles.  In each batch
transaction, before any claim, the simulator checks the live leases; while X
has one, every message to X that the simulator would act on (any type of
``HANDLERS``, whatever the lease names) is *parked* (``bank_parked_messages``,
the sealed envelope only), not claimed and not handled
(``renkei_bank_parked_total``): the simulator never answers for a bank whose
real channel is connected.  Parked messages of the types the lease names are
handled by the lease holder while it holds the lease; every parked message of
X goes back to the simulator once X has no live lease (graceful release or
expiry); a parked row goes once its message is claimed or dead-lettered.  Both sides
share the database and its claims, so a message's effect happens once
whichever of them reads it first (docs/connectors.md, "Deploying").
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from infra.core.settings import Settings
from infra.crypto.envelope import Message
from infra.domain.participants import Kind, participants_of
from infra.domain.policy import (
    BASIS_BANK_INTAKE,
    BASIS_NUMBERING,
    DATA_DEPOSIT_ACCOUNT_NUMBERING,
    DATA_PUBLIC_FUNDS_ACCOUNT,
)
from infra.domain.validation import validate_bank_account
from infra.platform.metrics import Counter
from schemas import types as msg
from streams.participant import Context, ParticipantRuntime

log = logging.getLogger("renkei.bank")

BANK_MIGRATIONS = [
    """
    CREATE TABLE bank_accounts (
        bank_code      text NOT NULL,
        branch_code    text NOT NULL,
        account_type   text NOT NULL,
        account_number text NOT NULL,
        holder_kana    text NOT NULL,
        closed         boolean NOT NULL DEFAULT false,
        PRIMARY KEY (bank_code, branch_code, account_type, account_number)
    );
    CREATE TABLE bank_registration_results (
        participant    text NOT NULL,
        message_id     uuid PRIMARY KEY,
        correlation_id uuid NOT NULL,
        token          text NOT NULL,
        status         text NOT NULL,
        received_at    timestamptz NOT NULL DEFAULT now()
    );
    """,
    """
    CREATE TABLE bank_customers (
        bank_code      text NOT NULL,
        token          text NOT NULL,
        branch_code    text NOT NULL,
        account_type   text NOT NULL,
        account_number text NOT NULL,
        PRIMARY KEY (bank_code, branch_code, account_type, account_number),
        FOREIGN KEY (bank_code, branch_code, account_type, account_number) REFERENCES bank_accounts
    );
    CREATE INDEX bank_customers_token ON bank_customers (bank_code, token);
    CREATE TABLE bank_numbered_accounts (
        bank_code      text NOT NULL,
        branch_code    text NOT NULL,
        account_type   text NOT NULL,
        account_number text NOT NULL,
        token          text NOT NULL,
        correlation_id uuid NOT NULL,
        message_id     uuid NOT NULL,
        numbered_at    timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (bank_code, branch_code, account_type, account_number)
    );
    CREATE INDEX bank_numbered_accounts_token ON bank_numbered_accounts (bank_code, token);
    CREATE TABLE bank_numbering_results (
        participant    text NOT NULL,
        message_id     uuid PRIMARY KEY,
        correlation_id uuid NOT NULL,
        token          text NOT NULL,
        outcomes       jsonb NOT NULL,
        banks_not_answered jsonb NOT NULL,
        received_at    timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE bank_lookups_received (
        participant    text NOT NULL,
        message_id     uuid NOT NULL,  -- the legs of one fan-out share its message id
        correlation_id uuid NOT NULL,
        type           text NOT NULL,
        received_at    timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (participant, message_id)
    );
    CREATE TABLE bank_sim_behaviour (
        bank_id         text PRIMARY KEY,
        answer_delay_ms integer NOT NULL DEFAULT 0,
        answer_twice    boolean NOT NULL DEFAULT false
    );
    CREATE TABLE bank_delayed_answers (
        id             bigserial PRIMARY KEY,
        participant    text NOT NULL,
        requester      text NOT NULL,
        subject        text NOT NULL,
        correlation_id uuid NOT NULL,
        data_item      text NOT NULL,
        legal_basis    text NOT NULL,
        copies         integer NOT NULL,
        due_at         timestamptz NOT NULL
    );
    CREATE INDEX bank_delayed_answers_due ON bank_delayed_answers (due_at);
    """,
    # Reminders, forgetful banks, and applications for lookups taken at a counter.
    """
    ALTER TABLE bank_sim_behaviour ADD COLUMN ignore_inquiries integer NOT NULL DEFAULT 0;
    ALTER TABLE bank_lookups_received ADD COLUMN reminder integer NOT NULL DEFAULT 0,
        ADD COLUMN answered boolean NOT NULL DEFAULT false;
    CREATE TABLE bank_lookup_notifications (
        participant     text NOT NULL,
        message_id      uuid PRIMARY KEY,
        correlation_id  uuid NOT NULL,
        application_ref text NOT NULL,
        kind            text NOT NULL,
        status          text NOT NULL,
        reason          text,
        banks_with_accounts jsonb NOT NULL,
        banks_not_answered  jsonb NOT NULL,
        banks_not_asked     jsonb NOT NULL,
        is_supplement   boolean NOT NULL,
        received_at     timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX bank_lookup_notifications_cid ON bank_lookup_notifications (participant, correlation_id);
    """,
]


async def open_account(conn: Any, account: dict, *, closed: bool = False) -> None:
    """Seed a (simulated) deposit account."""
    a = validate_bank_account(account)
    await conn.execute(
        "INSERT INTO bank_accounts VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        a["bank_code"], a["branch_code"], a["account_type"], a["account_number"], a["holder_kana"], closed)


def existence_result(*, found: bool, closed: bool, held: bool, name_matches: bool) -> str:
    """The bank's answer from its own records.  The holder comes first: to anyone but the person who holds
    the account, an existing account is NOT_HOLDER whether it is open or closed, whatever name was typed."""
    if not found:
        return "ACCOUNT_NOT_FOUND"
    if not held:
        return "NOT_HOLDER"
    if closed:
        return "ACCOUNT_CLOSED"
    return "CONFIRMED" if name_matches else "HOLDER_MISMATCH"


async def on_existence_check(ctx: Context) -> None:
    me = ctx.participants.get(ctx.me)
    assert me is not None and me.bank_code is not None
    try:
        a = validate_bank_account(ctx.body["account"])
    except Exception:
        a = None
    row = None
    if a is not None and a["bank_code"] == me.bank_code:
        row = await ctx.conn.fetchrow(
            "SELECT a.holder_kana, a.closed, c.token = $5 AS held FROM bank_accounts a LEFT JOIN bank_customers c "
            "USING (bank_code, branch_code, account_type, account_number) WHERE a.bank_code = $1 "
            "AND a.branch_code = $2 AND a.account_type = $3 AND a.account_number = $4",
            a["bank_code"], a["branch_code"], a["account_type"], a["account_number"], ctx.meta.subject)
    result = existence_result(found=row is not None, closed=bool(row and row["closed"]), held=bool(row and row["held"]),
                              name_matches=bool(row and a and row["holder_kana"] == a["holder_kana"]))
    ctx.reply(type=msg.EXISTENCE_ANSWER,
              body={"bank_code": me.bank_code, "result": result, "answered_at": datetime.now(UTC)})


async def on_registration_result(ctx: Context) -> None:
    await ctx.conn.execute(
        "INSERT INTO bank_registration_results (participant, message_id, correlation_id, token, status) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        ctx.me, ctx.meta.message_id, ctx.meta.correlation_id, ctx.meta.subject, ctx.body["status"])


async def enrol_customer(conn: Any, token: str, account: dict) -> None:
    """Seed the bank's knowledge that ``account`` (opened first) belongs to the person it knows as ``token``."""
    a = validate_bank_account(account)
    await conn.execute(
        "INSERT INTO bank_customers VALUES ($1, $2, $3, $4, $5) ON CONFLICT (bank_code, branch_code, account_type, "
        "account_number) DO UPDATE SET token = EXCLUDED.token",
        a["bank_code"], token, a["branch_code"], a["account_type"], a["account_number"])


async def seed_customer(conn: Any, token: str, account: dict) -> None:
    """Open a (simulated) account and record that it belongs to the person known as ``token`` (demo, tests)."""
    await open_account(conn, account)
    await enrol_customer(conn, token, account)


async def set_behaviour(conn: Any, bank_id: str, *, answer_delay_ms: int = 0, answer_twice: bool = False,
                        ignore_inquiries: int = 0) -> None:
    """Make a simulated bank slow, buggy or forgetful (read by the bank worker on every inquiry)."""
    await conn.execute(
        "INSERT INTO bank_sim_behaviour (bank_id, answer_delay_ms, answer_twice, ignore_inquiries) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (bank_id) DO UPDATE "
        "SET answer_delay_ms = $2, answer_twice = $3, ignore_inquiries = $4",
        bank_id, answer_delay_ms, answer_twice, ignore_inquiries)


async def link_accounts(conn: Any, bank_code: str, token: str, correlation_id: str, message_id: str) -> tuple[str, int]:
    """Number (付番) the person's accounts at this bank: ``(status, accounts linked)``. Idempotent."""
    mine = await conn.fetch(
        "SELECT c.branch_code, c.account_type, c.account_number, n.token AS numbered_to FROM bank_customers c "
        "JOIN bank_accounts a USING (bank_code, branch_code, account_type, account_number) "
        "LEFT JOIN bank_numbered_accounts n USING (bank_code, branch_code, account_type, account_number) "
        "WHERE c.bank_code = $1 AND c.token = $2 AND NOT a.closed", bank_code, token)
    if not mine:
        return "NO_ACCOUNT", 0
    if any(r["numbered_to"] is not None and r["numbered_to"] != token for r in mine):
        return "REFUSED", 0  # numbered to another person: never re-linked silently
    await conn.executemany(
        "INSERT INTO bank_numbered_accounts (bank_code, branch_code, account_type, account_number, token, "
        "correlation_id, message_id) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        [(bank_code, r["branch_code"], r["account_type"], r["account_number"], token, uuid.UUID(correlation_id),
          uuid.UUID(message_id)) for r in mine])
    return "LINKED", len(mine)


async def numbered_accounts(conn: Any, bank_code: str, token: str) -> list[dict]:
    rows = await conn.fetch(
        "SELECT n.bank_code, n.branch_code, n.account_type, n.account_number, a.holder_kana "
        "FROM bank_numbered_accounts n JOIN bank_accounts a USING (bank_code, branch_code, account_type, account_number) "
        "WHERE n.bank_code = $1 AND n.token = $2 ORDER BY 2, 3, 4", bank_code, token)
    return [dict(r) for r in rows]


async def on_numbering_request(ctx: Context) -> None:
    me = ctx.participants.get(ctx.me)
    assert me is not None and me.bank_code is not None
    if me.bank_code in ctx.body["bank_codes"]:
        status, linked = await link_accounts(ctx.conn, me.bank_code, ctx.meta.subject, ctx.meta.correlation_id,
                                             ctx.meta.message_id)
    else:
        status, linked = "REFUSED", 0  # not named in the request
    ctx.reply(type=msg.NUMBERING_ACK, body={"bank_code": me.bank_code, "status": status, "accounts_linked": linked,
                                          "acknowledged_at": datetime.now(UTC)})


async def on_numbering_result(ctx: Context) -> None:
    await ctx.conn.execute(
        "INSERT INTO bank_numbering_results (participant, message_id, correlation_id, token, outcomes, "
        "banks_not_answered) VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb) ON CONFLICT DO NOTHING",
        ctx.me, ctx.meta.message_id, ctx.meta.correlation_id, ctx.meta.subject,
        json.dumps(ctx.body["outcomes"]), json.dumps(ctx.body["banks_not_answered"]))


def _lookup_answer(bank_code: str, accounts: list[dict], *, to: str, subject: str, correlation_id: str,
                   data_item: str, basis: str) -> Message:
    return Message(body={"bank_code": bank_code, "accounts": accounts, "answered_at": datetime.now(UTC)},
                   type=msg.LOOKUP_ANSWER, to=to, subject=subject, data_item=data_item, basis=basis,
                   correlation_id=correlation_id)


_LOOKUP_STATE = """
SELECT (SELECT ARRAY[answer_delay_ms, answer_twice::int, ignore_inquiries] FROM bank_sim_behaviour
        WHERE bank_id = $1 FOR UPDATE) AS behaviour,
       EXISTS (SELECT 1 FROM bank_delayed_answers WHERE participant = $1 AND correlation_id = $2) AS preparing
"""
"""A bank's behaviour (locked: a forgetful bank's count goes down once per inquiry), and whether its answer to
this lookup is being prepared (a delayed answer not yet due)."""

_RECEIVED = ("INSERT INTO bank_lookups_received (participant, message_id, correlation_id, type, reminder, answered) "
             "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING")


async def on_lookup(ctx: Context) -> None:
    """Inheritance or disaster lookup (or a reminder of one): answer DICJ with the person's numbered accounts
    here (or none)."""
    me = ctx.participants.get(ctx.me)
    assert me is not None and me.bank_code is not None
    m = ctx.meta
    # Two statements for a bank that answers: what the bank is told to do and whether its answer is already
    # being prepared; then the receipt with the accounts (:func:`_answer_now`).
    state = await ctx.conn.fetchrow(_LOOKUP_STATE, ctx.me, uuid.UUID(m.correlation_id))
    delay, twice, ignore = state["behaviour"] or (0, 0, 0)
    received = (ctx.me, m.message_id, m.correlation_id, m.type, ctx.body.get("reminder", 0))
    if ignore > 0:  # a forgetful bank: this inquiry is lost in its batch, as if never read
        await ctx.conn.execute("UPDATE bank_sim_behaviour SET ignore_inquiries = ignore_inquiries - 1 "
                               "WHERE bank_id = $1", ctx.me)
        await ctx.conn.execute(_RECEIVED, *received, False)
        return
    if state["preparing"] or delay > 0:
        await ctx.conn.execute(_RECEIVED, *received, True)
        if state["preparing"]:
            return  # a reminder while this bank's answer is still being prepared: it leaves when due, once
    copies = 2 if twice else 1
    if delay > 0:
        await ctx.conn.execute(
            "INSERT INTO bank_delayed_answers (participant, requester, subject, correlation_id, data_item, "
            "legal_basis, copies, due_at) VALUES ($1, $2, $3, $4, $5, $6, $7, now() + $8 * interval '1 millisecond')",
            ctx.me, m.sender, m.subject, m.correlation_id, m.data_item, m.legal_basis, copies, delay)
        return
    await _answer_now(ctx.conn, [ctx], copies)


_PLAIN_LEGS = """
SELECT a.n FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS a(bank_id, correlation_id, n)
WHERE NOT EXISTS (SELECT 1 FROM bank_sim_behaviour b WHERE b.bank_id = a.bank_id)
  AND NOT EXISTS (SELECT 1 FROM bank_delayed_answers d WHERE d.participant = a.bank_id
                  AND d.correlation_id = a.correlation_id)
"""
"""Which legs of a poll no behaviour touches (none set for the bank, no answer of it being prepared)."""

_RECEIVED_ALL_WITH_ACCOUNTS = """
WITH a AS (
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::int[], $6::text[], $7::text[])
        WITH ORDINALITY AS a(participant, message_id, correlation_id, type, reminder, bank_code, token, n)
), received AS (
    INSERT INTO bank_lookups_received (participant, message_id, correlation_id, type, reminder, answered)
    SELECT participant, message_id, correlation_id, type, reminder, true FROM a ORDER BY n
    ON CONFLICT DO NOTHING
)
SELECT a.n, num.bank_code, num.branch_code, num.account_type, num.account_number, acc.holder_kana
FROM a JOIN bank_numbered_accounts num ON num.bank_code = a.bank_code AND num.token = a.token
JOIN bank_accounts acc ON (acc.bank_code, acc.branch_code, acc.account_type, acc.account_number)
                        = (num.bank_code, num.branch_code, num.account_type, num.account_number)
ORDER BY a.n, num.branch_code, num.account_type, num.account_number
"""
"""The receipts of legs the banks answer now, and each leg's numbered accounts (by its ordinal), in one statement."""


async def on_lookups(ctxs: list[Context]) -> None:
    """:func:`on_lookup` for a poll's legs at once (a fan-out reaches the 1,000 banks of this process together):
    the legs no behaviour touches in two statements in all; any other leg through :func:`on_lookup`, in order.
    Each leg touches only its own bank's rows, so taking the plain ones together changes no effect."""
    conn = ctxs[0].conn
    plain = {r["n"] - 1 for r in await conn.fetch(_PLAIN_LEGS, [c.me for c in ctxs],
                                                   [uuid.UUID(c.meta.correlation_id) for c in ctxs])}
    for i, ctx in enumerate(ctxs):  # a slow, forgetful or double-answering bank: its own bank's rows only
        if i not in plain:
            await on_lookup(ctx)
    await _answer_now(conn, [ctx for i, ctx in enumerate(ctxs) if i in plain])


async def _answer_now(conn: Any, ctxs: list[Context], copies: int = 1) -> None:
    """Record each leg as received and answer it (``copies`` times) with the person's numbered accounts there."""
    if not ctxs:
        return
    codes = []
    for ctx in ctxs:
        me = ctx.participants.get(ctx.me)
        assert me is not None and me.bank_code is not None
        codes.append(me.bank_code)
    rows = await conn.fetch(_RECEIVED_ALL_WITH_ACCOUNTS, *map(list, zip(*[
        (c.me, uuid.UUID(c.meta.message_id), uuid.UUID(c.meta.correlation_id), c.meta.type, c.body.get("reminder", 0),
         code, c.meta.subject) for c, code in zip(ctxs, codes, strict=True)], strict=True)))
    accounts: dict[int, list[dict]] = {}
    for r in rows:
        accounts.setdefault(r["n"] - 1, []).append({k: r[k] for k in ("bank_code", "branch_code", "account_type",
                                                                       "account_number", "holder_kana")})
    for i, (ctx, code) in enumerate(zip(ctxs, codes, strict=True)):
        m = ctx.meta
        for _ in range(copies):
            ctx.outgoing.append(_lookup_answer(code, accounts.get(i, []), to=m.sender, subject=m.subject,
                                               correlation_id=m.correlation_id, data_item=m.data_item,
                                               basis=m.legal_basis))


async def send_delayed_answers(runtime: ParticipantRuntime) -> int:
    """Send the slow banks' answers that are due (each exactly once: deleted in the sending transaction)."""
    assert runtime.pool is not None
    sent = 0
    async with runtime.pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "DELETE FROM bank_delayed_answers WHERE id IN (SELECT id FROM bank_delayed_answers WHERE due_at <= now() "
            "AND participant = ANY($1::text[]) ORDER BY due_at LIMIT 200 FOR UPDATE SKIP LOCKED) RETURNING *",
            list(runtime.identities))
        for r in rows:
            bank = runtime.participants.get(r["participant"])
            assert bank is not None and bank.bank_code is not None
            accounts = await numbered_accounts(conn, bank.bank_code, r["subject"])
            message = _lookup_answer(bank.bank_code, accounts, to=r["requester"], subject=r["subject"],
                                     correlation_id=str(r["correlation_id"]), data_item=r["data_item"],
                                     basis=r["legal_basis"])
            await runtime.send(r["participant"], [message] * r["copies"], conn=conn)
            sent += 1
    return sent


async def file_numbering_at_counter(runtime: ParticipantRuntime, bank_id: str, token: str,
                                    bank_codes: list[str]) -> tuple[str, str, int]:
    """A person files 付番申出 at ``bank_id``'s counter for ``bank_codes`` (this bank among them or not).

    The bank links its own accounts at once and, in the same transaction, sends the request to DICJ with
    that outcome (bank → DICJ → the other banks): its own numbering is on the bus, and DICJ's ONE
    consolidated result comes back to the bank (``bank_numbering_results``).  Returns ``(correlation id,
    own status, own accounts linked)``; the status is None when the bank itself is not named.
    """
    assert runtime.pool is not None
    bank = runtime.participants.get(bank_id)
    assert bank is not None and bank.kind is Kind.BANK and bank.bank_code is not None
    correlation = str(uuid.uuid4())
    codes = list(dict.fromkeys(bank_codes))
    status, linked, own = None, 0, None
    async with runtime.pool.acquire() as conn, conn.transaction():
        if bank.bank_code in codes:
            status, linked = await link_accounts(conn, bank.bank_code, token, correlation, correlation)
            own = {"bank_code": bank.bank_code, "status": status, "accounts_linked": linked}
        await runtime.send(bank_id, [Message(
            body={"bank_codes": codes, "channel": "BANK", "receiving_bank_code": bank.bank_code,
                  "requested_at": datetime.now(UTC), "receiving_bank_outcome": own},
            type=msg.NUMBERING_REQUEST, to="dicj", subject=token, data_item=DATA_DEPOSIT_ACCOUNT_NUMBERING,
            basis=BASIS_NUMBERING, correlation_id=correlation)], conn=conn)
    return correlation, status, linked


async def apply_lookup_at_counter(runtime: ParticipantRuntime, bank_id: str, token: str, kind: str,
                                  application: dict[str, Any]) -> str:
    """An heir (``kind`` ``"INHERITANCE"``: ``token`` is the deceased as this bank knows them) or a depositor
    in a declared disaster (``"DISASTER"``) applies at ``bank_id``'s counter; the bank sends the application to
    DICJ.  ``application``: the body's fields (:mod:`infra.domain.lookup_applications`).  Returns the correlation id;
    DICJ's notification lands in ``bank_lookup_notifications`` (:func:`lookup_notifications`)."""
    from infra.domain.lookup_applications import validate_disaster_application, validate_inheritance_application
    from infra.domain.policy import BASIS_DISASTER_LOOKUP, BASIS_INHERITANCE_LOOKUP, DATA_DEPOSIT_ACCOUNT_HOLDINGS

    bank = runtime.participants.get(bank_id)
    assert bank is not None and bank.kind is Kind.BANK
    if kind == "INHERITANCE":
        type_, basis, body = (msg.LOOKUP_APPLICATION_INHERITANCE, BASIS_INHERITANCE_LOOKUP,
                              validate_inheritance_application(application))
    elif kind == "DISASTER":
        type_, basis, body = (msg.LOOKUP_APPLICATION_DISASTER, BASIS_DISASTER_LOOKUP,
                              validate_disaster_application(application))
    else:
        raise ValueError("kind must be INHERITANCE or DISASTER")
    correlation = str(uuid.uuid4())
    await runtime.send(bank_id, [Message(body=body, type=type_, to="dicj", subject=token,
                                         data_item=DATA_DEPOSIT_ACCOUNT_HOLDINGS, basis=basis,
                                         correlation_id=correlation)])
    return correlation


async def on_lookup_notification(ctx: Context) -> None:
    b = ctx.body
    await ctx.conn.execute(
        "INSERT INTO bank_lookup_notifications (participant, message_id, correlation_id, application_ref, kind, "
        "status, reason, banks_with_accounts, banks_not_answered, banks_not_asked, is_supplement) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10::jsonb, $11) ON CONFLICT DO NOTHING",
        ctx.me, ctx.meta.message_id, ctx.meta.correlation_id, b["application_ref"], b["lookup_kind"], b["status"],
        b["reason"], json.dumps(b["banks_with_accounts"]), json.dumps(b["banks_not_answered"]),
        json.dumps(b["banks_not_asked"]), b["is_supplement"])


async def lookup_notifications(conn: Any, bank_id: str, correlation_id: str) -> list[dict[str, Any]]:
    """DICJ's notifications about an application taken at ``bank_id``'s counter, the first one first."""
    rows = await conn.fetch(
        "SELECT status, reason, kind, application_ref, banks_with_accounts, banks_not_answered, banks_not_asked, "
        "is_supplement FROM bank_lookup_notifications WHERE participant = $1 AND correlation_id = $2 "
        "ORDER BY is_supplement, received_at", bank_id, uuid.UUID(correlation_id))
    return [{**dict(r), **{k: json.loads(r[k]) for k in ("banks_with_accounts", "banks_not_answered",
                                                          "banks_not_asked")}} for r in rows]


async def register_at_counter(runtime: ParticipantRuntime, bank_id: str, token: str, operation: str,
                              account: dict | None, consent: dict) -> str:
    """STEP3 at ``bank_id``'s counter: the bank files the person's registration with their ``consent``
    (who, how, when, the bank's evidence reference).  Returns the correlation id; the registry checks the
    account with this bank's own records and its answer lands in ``bank_registration_results``
    (:func:`registration_status`)."""
    bank = runtime.participants.get(bank_id)
    assert bank is not None and bank.kind is Kind.BANK
    correlation = str(uuid.uuid4())
    await runtime.send(bank_id, [Message(
        body={"operation": operation, "account": account, "channel": "BANK_COUNTER", "consent": consent,
              "requested_at": datetime.now(UTC)},
        type=msg.REGISTRATION_REQUEST, to="registry", subject=token, data_item=DATA_PUBLIC_FUNDS_ACCOUNT,
        basis=BASIS_BANK_INTAKE, correlation_id=correlation)])
    return correlation


async def registration_status(conn: Any, bank_id: str, correlation_id: str) -> str | None:
    """The registry's answer to a counter registration (None until it came)."""
    return await conn.fetchval("SELECT status FROM bank_registration_results WHERE participant = $1 "
                               "AND correlation_id = $2", bank_id, uuid.UUID(correlation_id))


# -- handover to a channel connector ----------------------------------------------------------

HANDOVER_MIGRATIONS = [
    """
    CREATE TABLE bank_channel_leases (
        bank_id     text PRIMARY KEY,
        channel     text NOT NULL,
        holder      text NOT NULL,
        types       text[] NOT NULL,
        taken_at    timestamptz NOT NULL DEFAULT now(),
        expires_at  timestamptz NOT NULL,
        released_at timestamptz
    );
    CREATE TABLE bank_parked_messages (
        id            bigserial PRIMARY KEY,
        bank_id       text NOT NULL,
        message_id    uuid NOT NULL,
        type          text NOT NULL,
        src_topic     text NOT NULL,
        src_partition integer NOT NULL,
        src_offset    bigint NOT NULL,
        envelope      bytea NOT NULL,
        parked_at     timestamptz NOT NULL DEFAULT now(),
        UNIQUE (src_topic, src_partition, src_offset)
    );
    CREATE INDEX bank_parked_messages_bank ON bank_parked_messages (bank_id, id);
    """,
]
"""Component ``bank-handover``: applied by the simulator and by every served bank connector."""

_LIVE_LEASES = "SELECT bank_id FROM bank_channel_leases WHERE expires_at > now()"
_LEASED = "EXISTS (SELECT 1 FROM bank_channel_leases l WHERE l.bank_id = p.bank_id AND l.expires_at > now())"
_HOLDER_COVERS = ("EXISTS (SELECT 1 FROM bank_channel_leases l WHERE l.bank_id = p.bank_id AND l.expires_at > now() "
                  "AND p.type = ANY(l.types) AND l.holder = $3)")


def parking(runtime: ParticipantRuntime) -> Any:
    """The simulator's divert hook: park the messages a live lease gives to a channel connector."""
    parked = runtime.metrics.register(Counter(
        "renkei_bank_parked_total", "Messages left to the bank's channel connector (live lease): "
        "parked, not handled by the simulator", labels={"bank": None}))

    async def park(conn: Any, items: list[Any]) -> set[int]:
        leased = {r["bank_id"] for r in await conn.fetch(_LIVE_LEASES)}
        if not leased:
            return set()
        # Whatever types the lease names: the simulator never acts for a bank whose channel is connected.
        chosen = {n: item for n, item in enumerate(items)
                  if item.ident.participant_id in leased and item.opened.meta.type in HANDLERS}
        if chosen:
            await conn.executemany(
                "INSERT INTO bank_parked_messages (bank_id, message_id, type, src_topic, src_partition, src_offset, "
                "envelope) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                [(i.ident.participant_id, uuid.UUID(i.opened.meta.message_id), i.opened.meta.type, i.topic,
                  i.partition, i.offset, i.value) for i in chosen.values()])
            for item in chosen.values():  # a batch retried after a database error counts again
                parked.inc(bank=item.ident.participant_id)
        return set(chosen)

    return park


async def drain_parked(runtime: ParticipantRuntime, *, holder: str | None = None, limit: int = 200) -> int:
    """Handle parked messages of ``runtime``'s banks: those of banks with no live lease (the simulator,
    ``holder=None``) or those ``holder``'s live lease covers (the connector).  Returns how many were taken.

    A row is deleted only once its message is claimed (by either side) or dead-lettered, so a message
    re-parked meanwhile (a lease taken again) stays parked.
    """
    assert runtime.pool is not None
    banks = list(runtime.identities)
    cover = _HOLDER_COVERS if holder else f"NOT {_LEASED}"
    async with runtime.pool.acquire() as conn:
        await _forget_done(conn, banks)
        rows = await conn.fetch(
            f"SELECT src_topic, envelope, src_partition, src_offset FROM bank_parked_messages p "
            f"WHERE bank_id = ANY($1::text[]) AND {cover} ORDER BY id LIMIT $2",
            banks, limit, *([holder] if holder else []))
    if not rows:
        return 0
    await runtime.handle_batch([(r["src_topic"], bytes(r["envelope"]), r["src_partition"], r["src_offset"])
                                for r in rows])
    async with runtime.pool.acquire() as conn:
        await _forget_done(conn, banks)
    return len(rows)


async def _forget_done(conn: Any, banks: list[str]) -> None:
    await conn.execute(
        "DELETE FROM bank_parked_messages p WHERE bank_id = ANY($1::text[]) AND (EXISTS (SELECT 1 FROM "
        "processed_messages c WHERE c.consumer = p.bank_id AND c.message_id = p.message_id) OR EXISTS (SELECT 1 "
        "FROM participant_dead_letters d WHERE d.src_topic = p.src_topic AND d.src_partition = p.src_partition "
        "AND d.src_offset = p.src_offset))", banks)


HANDLERS = {
    msg.EXISTENCE_CHECK: on_existence_check,
    msg.REGISTRATION_RESULT: on_registration_result,
    msg.NUMBERING_REQUEST: on_numbering_request,
    msg.NUMBERING_RESULT: on_numbering_result,
    msg.LOOKUP_INHERITANCE: on_lookup,
    msg.LOOKUP_DISASTER: on_lookup,
    msg.LOOKUP_NOTIFICATION: on_lookup_notification,
}
"""What the simulator acts on for a bank; a channel connector of the bank handles every one of these types."""


def simulator_group(settings: Settings) -> str:
    """The simulated banks' consumer group (the ``banks`` worker of ``renkei up``)."""
    return f"{settings.kafka.topic_prefix}.banks"


def bank_runtime(settings: Settings, bank_ids: list[str] | None = None, *, group: str | None = None) -> ParticipantRuntime:
    if bank_ids is None:
        bank_ids = [p.id for p in participants_of(settings).banks()]
    runtime = ParticipantRuntime(settings, bank_ids, HANDLERS, group=group or simulator_group(settings),
                                 migrations={"bank-sim": BANK_MIGRATIONS, "bank-handover": HANDOVER_MIGRATIONS},
                                 worker="banks", database="banks",  # every simulated bank's own system
                                 batch_handlers={msg.LOOKUP_INHERITANCE: on_lookups, msg.LOOKUP_DISASTER: on_lookups})
    runtime.divert = parking(runtime)
    return runtime


async def serve(settings: Settings) -> None:
    runtime = bank_runtime(settings)
    drains = runtime.metrics.register(Counter(
        "renkei_bank_drain_passes_total", "Passes of the simulator over parked messages (every second), empty ones "
        "included: a test waits for two before checking that a leased bank's message stayed parked"))
    await runtime.serve_metrics()
    await runtime.start()
    log.info("serving %d banks", len(runtime.identity_ids))
    try:
        for tick in itertools.count():  # the slow banks' answers leave when due; parked messages once released
            await asyncio.sleep(0.1)
            try:
                await send_delayed_answers(runtime)  # runtime.send wakes the outbox relay
                if tick % 10 == 0:
                    await drain_parked(runtime)
                    drains.inc()
            except Exception as exc:  # database away: the rows wait for the next round
                log.warning("delayed answers or parked messages not handled yet (%s)", type(exc).__name__)
    finally:
        await runtime.stop()


def main(argv: list[str] | None = None) -> None:
    from infra.core.arguments import worker_settings
    from streams.app import serve_until_signal

    settings = worker_settings(argv, participant_id="banks")
    serve_until_signal(serve(settings), settings.log_level, settings.log_format, "banks")


if __name__ == "__main__":
    main()
