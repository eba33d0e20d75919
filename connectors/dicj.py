"""DICJ's side (預金保険機構) of numbering and lookups: ``DicjDesk``, also the ``dicj`` worker of ``renkei up``.

Why this file is long: one participant, DICJ's desk (:class:`DicjDesk`), with its lookup ledger and
consolidated view; the desk's flows share its database state.

Lookups begin with an APPLICATION (相続時・災害時照会の申出) and end with a
NOTIFICATION to the channel that applied; DICJ never asks the banks on its own:

- 相続時照会: an heir applies at a bank; the bank sends
  ``lookup.application.inheritance`` (the deceased as the envelope's subject,
  the heir's relationship, references to the identity evidence).  DICJ checks
  the death with the resident record — the J-LIS stand-in
  (:mod:`connectors.jlis_sim`), outside the platform's trust — and, if it is
  not confirmed on the stated date, notifies the bank ``REFUSED``
  (``DEATH_NOT_CONFIRMED``) and asks no bank.  Otherwise it asks every
  participating bank and, once the hub's result comes, notifies the applying
  bank of the banks where the deceased has numbered accounts — which banks,
  never account numbers.
- 災害時照会: a depositor applies at a bank or on the portal
  (``lookup.application.disaster``).  DICJ checks the disaster in the
  platform's registry (:mod:`infra.domain.disasters`: unknown id, period over, area
  not covered → ``REFUSED`` with that reason), asks only the designated banks
  and notifies the bank or portal that applied.
- The fan-out (:meth:`DicjDesk._open_lookup`): ONE envelope sealed to the banks
  asked (participating, not suspended).  Each bank's ``lookup.answer`` is sealed
  to DICJ and kept here sealed under DICJ's data key (``dicj_lookup_answers``,
  :mod:`infra.crypto.sealing`; only the count of accounts in the clear; first answer per bank wins),
  filed under the bank that SENT it (the envelope's verified sender): an answer
  whose body names another bank is refused (``SENDER_NOT_ALLOWED``), and so is
  one from a bank the lookup did not ask (``UNSOLICITED``); both stay in DICJ's
  dead letters.  The hub, which cannot read answers, sends one ``lookup.result``
  naming the banks that answered in time and those that did not, then a
  supplement per late answer; each becomes a notification (a supplement's with
  ``is_supplement``).  ``view`` joins them into DICJ's consolidated view.  Each
  result is also told to the person the lookup was about (a ``person.notice``
  to the portal, お知らせ, :mod:`streams.notices`): which banks reported
  accounts — a supplement only when it adds one.
- Deadlines and reminders: a lookup's deadline is its kind's setting
  (``lookup_deadline_inheritance_s`` / ``_disaster_s``, days by default) — the
  hub gathers until then whatever the envelopes' lifetimes.  Every
  ``lookup_reminder_interval_s`` until the deadline, DICJ re-sends the inquiry
  (same correlation id, ``reminder`` = n) to the banks whose answer it does
  not have yet; each round is claimed in ``dicj_lookups`` under a row lock in
  the sending transaction, so two desks never send one round twice.
- 付番申出 passed on by a bank (bank → DICJ → other banks), with the bank's
  own outcome when it is itself named, or filed on the portal for several
  banks (portal → DICJ → banks): DICJ fans the request out, gathers the
  ``numbering.ack`` by correlation id up to ``numbering_deadline_s`` (state in
  ``dicj_numberings`` / ``dicj_numbering_banks``) and sends ONE
  ``numbering.result`` to the requester (and, for a bank's counter, to the
  portal, so the person sees it).  A periodic sweep sends results whose
  deadline passed, listing banks that did not answer.

Everything DICJ does runs in its participant runtime's transaction (claim +
effect + outbox), so redelivery never duplicates a result, a fan-out or a
notification; an application resent under the same correlation id is asked once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from connectors.jlis_sim import JLIS_MIGRATIONS, date_of_death, death_confirmed
from infra.core.errors import Reason, Rejection, ValidationError
from infra.core.settings import Settings
from infra.crypto.envelope import MAX_TTL_S, Message
from infra.crypto.sealing import RowSealer
from infra.domain.disasters import DISASTER_MIGRATIONS, check_application, find, today_jst
from infra.domain.lookup_applications import validate_disaster_application, validate_inheritance_application
from infra.domain.participants import Participant
from infra.domain.policy import (
    BASIS_DISASTER_LOOKUP,
    BASIS_INHERITANCE_LOOKUP,
    BASIS_NUMBERING,
    DATA_DEPOSIT_ACCOUNT_HOLDINGS,
    DATA_DEPOSIT_ACCOUNT_NUMBERING,
)
from infra.platform.keystore import KeyStore
from schemas import types as msg
from streams.client import BusClient
from streams.lookups import lookup_deadlines
from streams.notices import notice
from streams.participant import Context, ParticipantRuntime

log = logging.getLogger("renkei.dicj")

DICJ_ID = "dicj"
PORTAL_ID = "portal"

DICJ_MIGRATIONS = [
    """
    CREATE TABLE dicj_lookups (
        correlation_id uuid PRIMARY KEY,
        kind           text NOT NULL,
        subject        text NOT NULL,
        asked          jsonb NOT NULL,
        created_at     timestamptz NOT NULL DEFAULT now(),
        deadline       timestamptz NOT NULL
    );
    CREATE TABLE dicj_lookup_answers (
        correlation_id uuid NOT NULL,
        bank_code      text NOT NULL,
        message_id     uuid NOT NULL,
        accounts       jsonb NOT NULL,
        received_at    timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (correlation_id, bank_code)
    );
    CREATE TABLE dicj_lookup_results (
        message_id     uuid PRIMARY KEY,
        correlation_id uuid NOT NULL,
        is_supplement  boolean NOT NULL,
        answering      jsonb NOT NULL,
        missing        jsonb NOT NULL,
        received_at    timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX dicj_lookup_results_cid ON dicj_lookup_results (correlation_id);
    CREATE TABLE dicj_numberings (
        correlation_id uuid PRIMARY KEY,
        receiving_bank text NOT NULL,
        subject        text NOT NULL,
        deadline       timestamptz NOT NULL,
        result_sent    boolean NOT NULL DEFAULT false,
        created_at     timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE dicj_numbering_banks (
        correlation_id  uuid NOT NULL REFERENCES dicj_numberings,
        bank_code       text NOT NULL,
        bank_id         text,
        status          text,
        accounts_linked integer NOT NULL DEFAULT 0,
        answered_at     timestamptz,
        PRIMARY KEY (correlation_id, bank_code)
    );
    """,
    # Applications and notifications; reminders of lookups; the requester of a numbering may be the portal.
    """
    ALTER TABLE dicj_lookups ADD COLUMN inquiry jsonb, ADD COLUMN reminders integer NOT NULL DEFAULT 0,
        ADD COLUMN next_reminder_at timestamptz;
    CREATE INDEX dicj_lookups_reminder_due ON dicj_lookups (next_reminder_at) WHERE next_reminder_at IS NOT NULL;
    CREATE TABLE dicj_lookup_reminders (
        correlation_id uuid NOT NULL,
        round          integer NOT NULL,
        bank_id        text NOT NULL,
        sent_at        timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (correlation_id, round, bank_id)
    );
    CREATE TABLE dicj_applications (
        correlation_id     uuid PRIMARY KEY,
        applicant          text NOT NULL,
        kind               text NOT NULL,
        application_ref    text NOT NULL,
        subject            text NOT NULL,
        data_item          text NOT NULL,
        legal_basis        text NOT NULL,
        status             text NOT NULL CHECK (status IN ('ASKED', 'REFUSED', 'ANSWERED')),
        reason             text,
        lookup_correlation uuid UNIQUE,
        banks_not_asked    jsonb NOT NULL DEFAULT '[]'::jsonb,
        notifications      integer NOT NULL DEFAULT 0,
        received_at        timestamptz NOT NULL DEFAULT now(),
        notified_at        timestamptz
    );
    ALTER TABLE dicj_numberings RENAME COLUMN receiving_bank TO requester;
    """,
    # Personal data at rest: a bank's answer (the deceased's or depositor's accounts) is sealed under DICJ's
    # data key, bound to its lookup and bank (infra.crypto.sealing); only how many accounts it holds is in the clear.
    # Rows written before keep their plain column until the desk's start seals them.
    """
    ALTER TABLE dicj_lookup_answers ALTER COLUMN accounts DROP NOT NULL, ADD COLUMN accounts_ct bytea,
        ADD COLUMN account_count integer;
    UPDATE dicj_lookup_answers SET account_count = jsonb_array_length(accounts);
    ALTER TABLE dicj_lookup_answers ALTER COLUMN account_count SET NOT NULL;
    """,
]
ANSWERS_TABLE = "dicj_lookup_answers"

_FILE_ANSWERS = """
WITH a AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::bytea[], $5::int[], $6::text[])
        WITH ORDINALITY AS a(correlation_id, bank_code, message_id, accounts_ct, account_count, sender, n)
), asked AS (
    SELECT a.* FROM a JOIN dicj_lookups l ON l.correlation_id = a.correlation_id AND l.asked ? a.sender
), filed AS (
    INSERT INTO dicj_lookup_answers (correlation_id, bank_code, message_id, accounts_ct, account_count)
    SELECT correlation_id, bank_code, message_id, accounts_ct, account_count FROM asked
    WHERE (SELECT count(*) FROM asked) = (SELECT count(*) FROM a)
    ORDER BY n
    ON CONFLICT DO NOTHING
)
SELECT count(*) FROM asked
"""
"""File banks' answers, each under the bank that sent it, all (in order: a bank's first answer wins, a second is
ignored) only if the lookup asked every one of them; how many were asked."""

def _now() -> datetime:
    return datetime.now(UTC)


_KINDS = {
    "INHERITANCE": (msg.LOOKUP_INHERITANCE, BASIS_INHERITANCE_LOOKUP),
    "DISASTER": (msg.LOOKUP_DISASTER, BASIS_DISASTER_LOOKUP),
}
"""Lookup kind → (inquiry type, legal basis)."""


def _inquiry_body(inquiry: dict[str, Any], reminder: int) -> dict[str, Any]:
    """The inquiry's Avro body from what ``dicj_lookups.inquiry`` keeps (JSON, times as ISO strings)."""
    times = {k: datetime.fromisoformat(inquiry[k]) for k in ("requested_at", "deadline")}
    if inquiry["kind"] == "INHERITANCE":
        return {"receiving_bank_code": inquiry.get("receiving_bank_code"), **times, "reminder": reminder}
    return {"designated_bank_codes": inquiry["designated_bank_codes"], "disaster_id": inquiry["disaster_id"],
            **times, "reminder": reminder}


def answer_row_id(correlation_id: str, bank_code: str) -> str:
    """A bank's answer's identity in its sealed accounts' associated data: one lookup (one person), one bank."""
    return f"{correlation_id}/{bank_code}"


def _answer_accounts(sealer: RowSealer | None, r: Any) -> list[dict[str, Any]]:
    """A stored answer's accounts (opened with ``sealer``), or as many placeholders when not opened."""
    if sealer is None:
        return [{}] * r["account_count"]
    if r["accounts_ct"] is not None:
        return sealer.open(DICJ_ID, answer_row_id(str(r["correlation_id"]), r["bank_code"]), "", r["accounts_ct"])
    return json.loads(r["accounts"])  # written before answers were sealed, not yet sealed


async def consolidated_view(db: Any, correlation_id: str, sealer: RowSealer | None = None) -> dict[str, Any]:
    """DICJ's consolidated view of one lookup: the hub's tallies joined with the answers DICJ holds.

    ``sealer``: DICJ's (:meth:`DicjDesk.view`), to list the accounts; without it the view has the banks
    and counts only (the operators' ledger), and ``accounts`` lists are empty."""
    cid = uuid.UUID(correlation_id)
    results = await db.fetch(
        "SELECT is_supplement, answering, missing FROM dicj_lookup_results WHERE correlation_id = $1 "
        "ORDER BY received_at", cid)
    rows = await db.fetch("SELECT correlation_id, bank_code, account_count, accounts, accounts_ct "
                          "FROM dicj_lookup_answers WHERE correlation_id = $1", cid)
    answers = {r["bank_code"]: _answer_accounts(sealer, r) for r in rows}
    main = next((r for r in results if not r["is_supplement"]), None)
    answering = sorted(json.loads(main["answering"])) if main else []
    late = sorted({c for r in results if r["is_supplement"] for c in json.loads(r["answering"])})
    missing = sorted(set(json.loads(main["missing"])) - set(late)) if main else []
    return {
        "correlation_id": correlation_id,
        "complete": main is not None,
        "answering_banks": answering,
        "banks_with_accounts": sorted(c for c in answering if answers.get(c)),
        "accounts": [a for c in answering for a in answers.get(c, [])] if sealer else [],
        "missing_banks": missing,
        "late_banks": late,
        "late_banks_with_accounts": [c for c in late if answers.get(c)],
        "supplement_accounts": [a for c in late for a in answers.get(c, [])] if sealer else [],
        "results_received": len(results),
    }


async def application_ledger(db: Any, limit: int = 50) -> list[dict[str, Any]]:
    """DICJ's applications, newest first, each with its lookup's tallies: ids, codes and counts only — no
    person, no account (``renkei dicj lookup``)."""
    rows = await db.fetch(
        "SELECT a.*, l.asked, l.deadline, l.reminders FROM dicj_applications a LEFT JOIN dicj_lookups l "
        "ON l.correlation_id = a.lookup_correlation ORDER BY a.received_at DESC LIMIT $1", limit)
    out = []
    for r in rows:
        view = await consolidated_view(db, str(r["lookup_correlation"])) if r["lookup_correlation"] else None
        out.append({
            "applicant": r["applicant"], "kind": r["kind"], "application_ref": r["application_ref"],
            "status": r["status"], "reason": r["reason"],
            "banks_asked": len(json.loads(r["asked"])) if r["asked"] else 0,
            "answering": len(view["answering_banks"]) if view else 0,
            "missing": view["missing_banks"] if view else [], "late": view["late_banks"] if view else [],
            "banks_with_accounts": sorted({*view["banks_with_accounts"], *view["late_banks_with_accounts"]})
            if view else [],
            "banks_not_asked": json.loads(r["banks_not_asked"]), "reminders": r["reminders"] or 0,
            "received_at": r["received_at"].isoformat(),
            "deadline": r["deadline"].isoformat() if r["deadline"] else None,
            "notified_at": r["notified_at"].isoformat() if r["notified_at"] else None,
            "notifications": r["notifications"]})
    return out


class DicjDesk(BusClient):
    """The DICJ participant: applications and lookups, answers and results, notifications, numbering passed on.

    An async context manager; its sweep (numbering results past their deadline, lookup reminders) runs every
    ``sweep_interval_s``.  Deadlines and the reminder interval come from ``settings`` (module docstring).
    """

    def __init__(self, settings: Settings, *, group: str, numbering_deadline_s: int | None = None,
                 sweep_interval_s: float = 0.5) -> None:
        handlers = {
            msg.LOOKUP_APPLICATION_INHERITANCE: self._on_inheritance_application,
            msg.LOOKUP_APPLICATION_DISASTER: self._on_disaster_application,
            msg.LOOKUP_ANSWER: self._on_lookup_answer,
            msg.LOOKUP_RESULT: self._on_lookup_result,
            msg.NUMBERING_REQUEST: self._on_numbering_request,
            msg.NUMBERING_ACK: self._on_numbering_ack,
        }
        self.runtime = ParticipantRuntime(settings, [DICJ_ID], handlers, group=group,
                                          migrations={"dicj": DICJ_MIGRATIONS, "disasters": DISASTER_MIGRATIONS,
                                                      "jlis-sim": JLIS_MIGRATIONS}, worker="dicj",
                                          batch_handlers={msg.LOOKUP_ANSWER: self._on_lookup_answers})
        self.numbering_deadline_s = numbering_deadline_s or settings.numbering_deadline_s
        self.deadlines = lookup_deadlines(settings)
        self.reminder_interval_s = settings.lookup_reminder_interval_s
        self.sweep_interval_s = sweep_interval_s
        self._sweeper: asyncio.Task[None] | None = None
        self.sealer = RowSealer(KeyStore.for_settings(settings).data_key, ANSWERS_TABLE)

    async def __aenter__(self) -> DicjDesk:
        await self.runtime.start()
        await self.seal_legacy_answers()
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="dicj-sweep")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
        await self.runtime.stop()

    @property
    def pool(self) -> asyncpg.Pool:
        assert self.runtime.pool is not None
        return self.runtime.pool

    async def seal_legacy_answers(self) -> int:
        """Seal the plain accounts of answers stored before sealing existed (run at start); how many."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch("SELECT correlation_id, bank_code, accounts FROM dicj_lookup_answers "
                                    "WHERE accounts IS NOT NULL FOR UPDATE")
            for r in rows:
                await conn.execute(
                    "UPDATE dicj_lookup_answers SET accounts = NULL, accounts_ct = $3 "
                    "WHERE correlation_id = $1 AND bank_code = $2", r["correlation_id"], r["bank_code"],
                    self.sealer.seal(DICJ_ID, answer_row_id(str(r["correlation_id"]), r["bank_code"]), "",
                                     json.loads(r["accounts"])))
        return len(rows)

    def lookup_banks(self, designated_codes: list[str] | None = None) -> list[Participant]:
        """Banks a lookup goes to: the designated ones, else every participating bank; never a suspended one."""
        banks = [b for b in self.runtime.participants.banks(participating_only=True) if not b.suspended]
        if designated_codes:
            wanted = set(designated_codes)
            banks = [b for b in banks if b.bank_code in wanted]
        return banks

    def inquiry_ttl_s(self, kind: str) -> int:
        """An inquiry envelope lives until the next reminder replaces it (at most the envelope cap): it is
        transport, not the deadline, which the hub keeps by itself."""
        return max(1, min(self.reminder_interval_s, self.deadlines[kind], MAX_TTL_S))

    # -- lookups ---------------------------------------------------------------------------------
    async def start_lookup(self, kind: str, subject: str, *, banks: list[str] | None = None,
                           designated_bank_codes: list[str] | None = None, disaster_id: str = "",
                           receiving_bank_code: str | None = None) -> str:
        """Ask the banks (``kind`` ``"INHERITANCE"`` or ``"DISASTER"``) about ``subject``: its correlation id.

        The step an accepted application takes (the handlers below); DICJ's own tools and tests call it
        directly.  ``banks`` (participant ids) overrides the recipients (tests use it to include banks the hub
        must drop).  The deadline is the kind's setting.
        """
        outgoing: list[Message] = []
        async with self.pool.acquire() as conn, conn.transaction():
            correlation = await self._open_lookup(
                conn, outgoing, kind, subject, banks if banks is not None else
                [b.id for b in self.lookup_banks(designated_bank_codes)],
                designated_bank_codes=designated_bank_codes, disaster_id=disaster_id,
                receiving_bank_code=receiving_bank_code)
            await self.runtime.send(DICJ_ID, outgoing, conn=conn)
        return correlation

    async def _open_lookup(self, conn: asyncpg.Connection, outgoing: list[Message], kind: str, subject: str,
                           to: list[str], *, designated_bank_codes: list[str] | None = None, disaster_id: str = "",
                           receiving_bank_code: str | None = None) -> str:
        """Record a lookup and queue its ONE fan-out envelope (in the caller's transaction); its correlation id."""
        if kind not in _KINDS:
            raise ValueError("kind must be INHERITANCE or DISASTER")
        if not to:
            raise ValueError("no bank to ask")
        now = _now()
        deadline = now + timedelta(seconds=self.deadlines[kind])
        inquiry: dict[str, Any] = {"kind": kind, "requested_at": now.isoformat(), "deadline": deadline.isoformat()}
        if kind == "INHERITANCE":
            inquiry["receiving_bank_code"] = receiving_bank_code
        else:
            inquiry |= {"designated_bank_codes": list(designated_bank_codes or []), "disaster_id": disaster_id}
        correlation = str(uuid.uuid4())
        reminder_at = now + timedelta(seconds=self.reminder_interval_s)
        await conn.execute(
            "INSERT INTO dicj_lookups (correlation_id, kind, subject, asked, deadline, inquiry, next_reminder_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)", uuid.UUID(correlation), kind, subject, json.dumps(to), deadline,
            json.dumps(inquiry), reminder_at if reminder_at < deadline else None)
        type_, basis = _KINDS[kind]
        outgoing.append(Message(body=_inquiry_body(inquiry, 0), type=type_, to=tuple(to), subject=subject,
                                data_item=DATA_DEPOSIT_ACCOUNT_HOLDINGS, basis=basis, correlation_id=correlation,
                                ttl_s=self.inquiry_ttl_s(kind)))
        return correlation

    async def wait_result(self, correlation_id: str, *, timeout: float = 60.0, poll_s: float | None = None) -> dict:
        """Wait for the hub's consolidated result, then return ``view``.

        The desk's consumer wakes it after each committed batch holding a message of this lookup (an
        answer, the result): the table is read then, not every 20 ms of a lookup that takes seconds or
        days.  ``poll_s`` is the fallback read (default 1 s; 20 ms when this desk does not consume).
        """
        end = time.monotonic() + timeout
        cid = uuid.UUID(correlation_id)
        key = (DICJ_ID, str(cid))
        waiters = self.runtime.waiters
        poll_s = poll_s if poll_s is not None else (1.0 if self.runtime.consumer is not None else 0.02)
        woken: asyncio.Future[Any] | None = None
        try:
            while True:
                # Registered before the read: a batch committed after it resolves the waiter (handle_batch).
                woken = waiters.get(key)
                if woken is None or woken.done():
                    woken = waiters[key] = asyncio.get_running_loop().create_future()
                if await self.pool.fetchval(
                        "SELECT 1 FROM dicj_lookup_results WHERE correlation_id = $1 AND NOT is_supplement", cid):
                    return await self.view(correlation_id)
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no lookup result for {correlation_id} within {timeout:.0f} s")
                await asyncio.wait([woken], timeout=min(poll_s, left))  # the future is shared, never cancelled
        finally:
            if woken is not None and not woken.done() and waiters.get(key) is woken:
                del waiters[key]

    async def view(self, correlation_id: str, conn: asyncpg.Connection | None = None) -> dict:
        """DICJ's consolidated view of one lookup (:func:`consolidated_view`)."""
        return await consolidated_view(conn or self.pool, correlation_id, self.sealer)

    async def _on_lookup_answer(self, ctx: Context) -> None:
        await self._on_lookup_answers([ctx])

    async def _on_lookup_answers(self, ctxs: list[Context]) -> None:
        """File answers (a poll's, in one statement): an answer naming another bank than its verified sender is
        refused SENDER_NOT_ALLOWED, one from a bank the lookup did not ask UNSOLICITED. Either refusal raises; the
        runtime then files each answer alone, so only the refused one is dead-lettered."""
        rows = []
        for ctx in ctxs:
            sender = ctx.participants.get(ctx.meta.sender)
            code = sender.bank_code if sender is not None else None
            if code is None or ctx.body["bank_code"] != code:
                raise Rejection(Reason.SENDER_NOT_ALLOWED, "a lookup answer naming another bank than its sender")
            accounts = [dict(a) for a in ctx.body["accounts"]]
            rows.append((uuid.UUID(ctx.meta.correlation_id), code, uuid.UUID(ctx.meta.message_id),
                         self.sealer.seal(DICJ_ID, answer_row_id(ctx.meta.correlation_id, code), "", accounts),
                         len(accounts), ctx.meta.sender))
        asked = await ctxs[0].conn.fetchval(_FILE_ANSWERS, *map(list, zip(*rows, strict=True)))
        if asked != len(rows):  # nothing was filed
            raise Rejection(Reason.UNSOLICITED, "a lookup answer from a bank this lookup did not ask")

    async def _on_lookup_result(self, ctx: Context) -> None:
        b, cid = ctx.body, uuid.UUID(ctx.meta.correlation_id)
        inserted = await ctx.conn.fetchval(
            "INSERT INTO dicj_lookup_results (message_id, correlation_id, is_supplement, answering, missing) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
            ctx.meta.message_id, cid, b["is_supplement"],
            json.dumps(b["answering_bank_codes"]), json.dumps(b["banks_not_answered"]))
        if inserted is None:
            return
        if not b["is_supplement"]:  # the deadline passed or every bank answered: no more reminders
            await ctx.conn.execute("UPDATE dicj_lookups SET next_reminder_at = NULL WHERE correlation_id = $1", cid)
        await self._tell_the_person(ctx, cid, b)
        application = await ctx.conn.fetchrow(
            "SELECT * FROM dicj_applications WHERE lookup_correlation = $1 FOR UPDATE", cid)
        if application is None:  # a lookup DICJ started itself (its tools, tests): nobody to notify
            return
        view = await self.view(str(cid), ctx.conn)
        if not view["complete"]:  # a supplement before the main result (the hub sends the main one first)
            return
        if b["is_supplement"]:  # the banks of this supplement that hold accounts
            with_accounts = [c for c in view["late_banks_with_accounts"] if c in set(b["answering_bank_codes"])]
        else:
            with_accounts = view["banks_with_accounts"]
        self._notify(ctx, application, status="ANSWERED", reason=None, banks_with_accounts=with_accounts,
                     banks_not_answered=view["missing_banks"],
                     banks_not_asked=json.loads(application["banks_not_asked"]), supplement=b["is_supplement"])
        await ctx.conn.execute(
            "UPDATE dicj_applications SET status = 'ANSWERED', notifications = notifications + 1, "
            "notified_at = now() WHERE correlation_id = $1", application["correlation_id"])

    async def _tell_the_person(self, ctx: Context, cid: uuid.UUID, b: dict) -> None:
        """お知らせ: the person the lookup was about sees its result on the portal — which banks reported accounts
        (a supplement only when it adds one). Queued in the result's transaction, so it is sent once."""
        lookup = await ctx.conn.fetchrow("SELECT kind, subject FROM dicj_lookups WHERE correlation_id = $1", cid)
        if lookup is None:  # a lookup started elsewhere has no person here to tell
            return
        with_accounts = [r["bank_code"] for r in await ctx.conn.fetch(
            "SELECT bank_code FROM dicj_lookup_answers WHERE correlation_id = $1 AND bank_code = ANY($2::text[]) "
            "AND account_count > 0", cid, b["answering_bank_codes"])]
        if b["is_supplement"] and not with_accounts:
            return
        ctx.outgoing.append(notice(
            kind="LOOKUP", event=lookup["kind"], status="SUPPLEMENT" if b["is_supplement"] else "COMPLETE",
            subject=lookup["subject"], reference=ctx.meta.correlation_id, basis=ctx.meta.legal_basis,
            party=DICJ_ID, bank_codes=with_accounts))

    # -- applications ------------------------------------------------------------------------------
    def _notify(self, ctx: Context, application: Any, *, status: str, reason: str | None,
                banks_with_accounts: list[str], banks_not_answered: list[str], banks_not_asked: list[str],
                supplement: bool = False) -> None:
        """Queue the ``lookup.notification`` to the channel that applied, in its correlation."""
        ctx.send(type=msg.LOOKUP_NOTIFICATION, to=application["applicant"], subject=application["subject"],
                 correlation_id=str(application["correlation_id"]), data_item=application["data_item"],
                 basis=application["legal_basis"],
                 body={"application_ref": application["application_ref"], "lookup_kind": application["kind"],
                       "status": status, "reason": reason, "banks_with_accounts": sorted(banks_with_accounts),
                       "banks_not_answered": sorted(banks_not_answered), "banks_not_asked": sorted(banks_not_asked),
                       "is_supplement": supplement, "notified_at": _now()})

    async def _receive(self, ctx: Context, kind: str, ref: str, not_asked: list[str] | None = None) -> Any:
        """Record an application; None if its correlation was received before (one lookup per application)."""
        return await ctx.conn.fetchrow(
            "INSERT INTO dicj_applications (correlation_id, applicant, kind, application_ref, subject, data_item, "
            "legal_basis, status, banks_not_asked) VALUES ($1, $2, $3, $4, $5, $6, $7, 'ASKED', $8) "
            "ON CONFLICT DO NOTHING RETURNING *", uuid.UUID(ctx.meta.correlation_id), ctx.meta.sender, kind, ref,
            ctx.meta.subject, ctx.meta.data_item, ctx.meta.legal_basis, json.dumps(not_asked or []))

    async def _refuse(self, ctx: Context, application: Any, reason: str) -> None:
        """An application DICJ does not act on: no bank is asked; the applicant is told why."""
        log.info("%s application from %s refused: %s", application["kind"].lower(), application["applicant"], reason)
        await ctx.conn.execute("UPDATE dicj_applications SET status = 'REFUSED', reason = $2, notifications = 1, "
                               "notified_at = now() WHERE correlation_id = $1", application["correlation_id"], reason)
        self._notify(ctx, application, status="REFUSED", reason=reason, banks_with_accounts=[],
                     banks_not_answered=[], banks_not_asked=[])

    @staticmethod
    def _ref(body: dict) -> str:
        """The application's reference to echo, or "" when it is not a valid one (it is the channel's text)."""
        from infra.domain.validation import validate_reference

        try:
            return validate_reference(body.get("application_ref"), field="application_ref")
        except ValidationError:
            return ""

    async def _on_inheritance_application(self, ctx: Context) -> None:
        """相続時照会: the bank where the heir applied (a bank: infra.domain.senders); the deceased is the subject."""
        application = await self._receive(ctx, "INHERITANCE", self._ref(ctx.body))
        if application is None:
            return
        try:
            body = validate_inheritance_application(ctx.body)
        except ValidationError as exc:
            await self._refuse(ctx, application, exc.code)
            return
        recorded = await date_of_death(ctx.conn, ctx.meta.subject)  # the J-LIS stand-in: outside our trust
        if not death_confirmed(recorded, body["date_of_death"]):
            await self._refuse(ctx, application, Reason.DEATH_NOT_CONFIRMED.value)
            return
        bank = ctx.participants.get(ctx.meta.sender)
        await self._ask(ctx, application, "INHERITANCE", self.lookup_banks(),
                        receiving_bank_code=bank.bank_code if bank else None)

    async def _on_disaster_application(self, ctx: Context) -> None:
        """災害時照会: the depositor's own application at a bank or the portal; only the designated banks."""
        try:
            body = validate_disaster_application(ctx.body)
        except ValidationError as exc:
            application = await self._receive(ctx, "DISASTER", self._ref(ctx.body))
            if application is not None:
                await self._refuse(ctx, application, exc.code)
            return
        banks = self.lookup_banks(body["designated_bank_codes"])
        asked = {b.bank_code for b in banks}
        not_asked = [c for c in body["designated_bank_codes"] if c not in asked]
        application = await self._receive(ctx, "DISASTER", body["application_ref"], not_asked)
        if application is None:
            return
        try:
            check_application(await find(ctx.conn, body["disaster_id"]), area=body["area_code"], on=today_jst())
        except Rejection as exc:
            await self._refuse(ctx, application, exc.code)
            return
        await self._ask(ctx, application, "DISASTER", banks, not_asked=not_asked,
                        designated_bank_codes=body["designated_bank_codes"], disaster_id=body["disaster_id"])

    async def _ask(self, ctx: Context, application: Any, kind: str, banks: list[Participant], *,
                   not_asked: list[str] | None = None, **inquiry: Any) -> None:
        """Open the application's lookup; with no bank to ask, the answer is that, at once."""
        if not banks:
            await ctx.conn.execute("UPDATE dicj_applications SET status = 'ANSWERED', notifications = 1, "
                                   "notified_at = now() WHERE correlation_id = $1", application["correlation_id"])
            self._notify(ctx, application, status="ANSWERED", reason=None, banks_with_accounts=[],
                         banks_not_answered=[], banks_not_asked=not_asked or [])
            return
        lookup = await self._open_lookup(ctx.conn, ctx.outgoing, kind, ctx.meta.subject, [b.id for b in banks],
                                         **inquiry)
        await ctx.conn.execute("UPDATE dicj_applications SET lookup_correlation = $2 WHERE correlation_id = $1",
                               application["correlation_id"], uuid.UUID(lookup))

    # -- reminders -------------------------------------------------------------------------------
    async def send_reminders(self, limit: int = 50) -> int:
        """Re-send due lookups to the banks whose answer DICJ does not have; how many reminders went out.

        A round is claimed under the lookup's row lock (SKIP LOCKED) in the transaction that seals the
        reminder, so it goes out once however many desks sweep; the next is due one interval later, and
        none after the deadline or once the hub's result came.
        """
        sent = 0
        async with self.pool.acquire() as conn, conn.transaction():
            due = await conn.fetch(
                "SELECT l.*, EXISTS (SELECT 1 FROM dicj_lookup_results r WHERE r.correlation_id = l.correlation_id "
                "AND NOT r.is_supplement) AS done FROM dicj_lookups l WHERE next_reminder_at <= now() "
                "ORDER BY next_reminder_at LIMIT $1 FOR UPDATE SKIP LOCKED", limit)
            outgoing: list[Message] = []
            now = _now()
            for lk in due:
                answered = {r["bank_code"] for r in await conn.fetch(
                    "SELECT bank_code FROM dicj_lookup_answers WHERE correlation_id = $1", lk["correlation_id"])}
                missing = [bank for bank in json.loads(lk["asked"])
                           if (p := self.runtime.participants.get(bank)) is None or p.bank_code not in answered]
                if lk["done"] or lk["deadline"] <= now or not missing or lk["inquiry"] is None:
                    await conn.execute("UPDATE dicj_lookups SET next_reminder_at = NULL WHERE correlation_id = $1",
                                       lk["correlation_id"])
                    continue
                round_ = lk["reminders"] + 1
                inquiry = json.loads(lk["inquiry"])
                type_, basis = _KINDS[lk["kind"]]
                outgoing.append(Message(body=_inquiry_body(inquiry, round_), type=type_, to=tuple(missing),
                                        subject=lk["subject"], data_item=DATA_DEPOSIT_ACCOUNT_HOLDINGS, basis=basis,
                                        correlation_id=str(lk["correlation_id"]), ttl_s=self.inquiry_ttl_s(lk["kind"])))
                await conn.executemany(
                    "INSERT INTO dicj_lookup_reminders (correlation_id, round, bank_id) VALUES ($1, $2, $3)",
                    [(lk["correlation_id"], round_, bank) for bank in missing])
                following = now + timedelta(seconds=self.reminder_interval_s)
                await conn.execute("UPDATE dicj_lookups SET reminders = $2, next_reminder_at = $3 "
                                   "WHERE correlation_id = $1", lk["correlation_id"], round_,
                                   following if following < lk["deadline"] else None)
                sent += len(missing)
            if outgoing:
                await self.runtime.send(DICJ_ID, outgoing, conn=conn)
        if sent:
            log.info("lookup reminders sent to %d bank(s)", sent)
        return sent

    # -- numbering passed on by a bank, or filed on the portal for several banks -----------------
    async def _on_numbering_request(self, ctx: Context) -> None:
        m, body = ctx.meta, ctx.body
        sender = ctx.participants.get(m.sender)
        receiving = sender.bank_code if sender is not None else None  # None: the portal
        own = body.get("receiving_bank_outcome")
        if own is not None and (receiving is None or own["bank_code"] != receiving):
            raise Rejection(Reason.SENDER_NOT_ALLOWED, "a receiving bank's outcome naming another bank than its sender")
        codes = [c for c in dict.fromkeys(body["bank_codes"]) if c != receiving]
        banks = {c: ctx.participants.by_bank_code(c) for c in codes}
        inserted = await ctx.conn.fetchval(
            "INSERT INTO dicj_numberings (correlation_id, requester, subject, deadline) "
            "VALUES ($1, $2, $3, now() + $4 * interval '1 second') ON CONFLICT DO NOTHING RETURNING 1",
            m.correlation_id, m.sender, m.subject, self.numbering_deadline_s)
        if inserted is None:  # the same request again (a new message id, the same correlation): passed on once
            return
        rows = [(uuid.UUID(m.correlation_id), c, b.id if b else None, None if b else "REFUSED", 0)
                for c, b in banks.items()]
        if own is not None:  # the receiving bank's own numbering, recorded as its answer
            rows.append((uuid.UUID(m.correlation_id), receiving, m.sender, own["status"], own["accounts_linked"]))
        await ctx.conn.executemany(
            "INSERT INTO dicj_numbering_banks (correlation_id, bank_code, bank_id, status, accounts_linked, "
            "answered_at) VALUES ($1, $2, $3, $4, $5, CASE WHEN $4::text IS NULL THEN NULL ELSE now() END) "
            "ON CONFLICT DO NOTHING", rows)
        to = tuple(b.id for b in banks.values() if b is not None)
        if to:
            ctx.send(type=msg.NUMBERING_REQUEST, to=to, subject=m.subject,  # type: ignore[arg-type]  # fan-out
                     body={"bank_codes": [b.bank_code for b in banks.values() if b is not None],
                           "channel": "BANK" if receiving else "PORTAL", "receiving_bank_code": receiving,
                           "requested_at": body["requested_at"]},
                     data_item=DATA_DEPOSIT_ACCOUNT_NUMBERING, basis=BASIS_NUMBERING,
                     ttl_s=min(self.numbering_deadline_s, MAX_TTL_S))
        else:
            await self._complete_numbering(ctx.conn, ctx.outgoing, uuid.UUID(m.correlation_id))

    async def _on_numbering_ack(self, ctx: Context) -> None:
        cid = uuid.UUID(ctx.meta.correlation_id)
        await ctx.conn.execute("SELECT 1 FROM dicj_numberings WHERE correlation_id = $1 FOR UPDATE", cid)
        updated = await ctx.conn.execute(
            "UPDATE dicj_numbering_banks SET status = $3, accounts_linked = $4, answered_at = now() "
            "WHERE correlation_id = $1 AND bank_id = $2 AND answered_at IS NULL",
            cid, ctx.meta.sender, ctx.body["status"], ctx.body["accounts_linked"])
        if updated == "UPDATE 0" and not await ctx.conn.fetchval(
                "SELECT 1 FROM dicj_numbering_banks WHERE correlation_id = $1 AND bank_id = $2", cid, ctx.meta.sender):
            raise Rejection(Reason.UNSOLICITED, "a numbering answer from a bank this request did not go to")
        if not await ctx.conn.fetchval(
                "SELECT 1 FROM dicj_numbering_banks WHERE correlation_id = $1 AND answered_at IS NULL", cid):
            await self._complete_numbering(ctx.conn, ctx.outgoing, cid)

    async def _complete_numbering(self, conn: asyncpg.Connection, outgoing: list[Message], cid: uuid.UUID) -> bool:
        """Queue the one consolidated ``numbering.result`` (the requester; a bank's counter: the portal too)."""
        row = await conn.fetchrow(
            "UPDATE dicj_numberings SET result_sent = true WHERE correlation_id = $1 AND NOT result_sent "
            "RETURNING requester, subject", cid)
        if row is None:
            return False
        banks = await conn.fetch(
            "SELECT bank_code, status, accounts_linked FROM dicj_numbering_banks WHERE correlation_id = $1 "
            "ORDER BY bank_code", cid)
        body = {"outcomes": [{"bank_code": b["bank_code"], "status": b["status"],
                              "accounts_linked": b["accounts_linked"]} for b in banks if b["status"] is not None],
                "banks_not_answered": [b["bank_code"] for b in banks if b["status"] is None],
                "completed_at": _now()}
        for to in dict.fromkeys((row["requester"], PORTAL_ID)):
            outgoing.append(Message(body=body, type=msg.NUMBERING_RESULT, to=to, subject=row["subject"],
                                    data_item=DATA_DEPOSIT_ACCOUNT_NUMBERING, basis=BASIS_NUMBERING,
                                    correlation_id=str(cid)))
        return True

    async def sweep_numberings(self) -> int:
        """Send the results of numberings past their deadline (banks that did not answer are listed)."""
        async with self.pool.acquire() as conn, conn.transaction():
            due = await conn.fetch(
                "SELECT correlation_id FROM dicj_numberings WHERE NOT result_sent AND deadline <= now() "
                "ORDER BY deadline LIMIT 100 FOR UPDATE SKIP LOCKED")
            outgoing: list[Message] = []
            for row in due:
                await self._complete_numbering(conn, outgoing, row["correlation_id"])
            if outgoing:
                await self.runtime.send(DICJ_ID, outgoing, conn=conn)
        return len(due)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                await self.sweep_numberings()
                await self.send_reminders()
            except Exception as exc:  # database away: the next round retries
                log.warning("DICJ sweep failed (%s)", type(exc).__name__)


def dicj_group(settings: Settings) -> str:
    """DICJ's consumer group (the ``dicj`` worker of ``renkei up``)."""
    return f"{settings.kafka.topic_prefix}.dicj"


async def serve(settings: Settings) -> None:
    """DICJ's desk until cancelled: applications, answers, results, numbering, the sweep; /metrics and /health."""
    desk = DicjDesk(settings, group=dicj_group(settings))
    await desk.runtime.serve_metrics()
    async with desk:
        log.info("DICJ desk serving")
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    from infra.core.arguments import worker_settings
    from streams.app import serve_until_signal

    settings = worker_settings(argv, participant_id=DICJ_ID)
    serve_until_signal(serve(settings), settings.log_level, settings.log_format, "dicj")


if __name__ == "__main__":
    main()
