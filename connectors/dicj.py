"""DICJ's side (預金保険機構) of numbering and lookups: ``DicjDesk``.

- 相続時・災害時照会 (inheritance / disaster lookups): ``start_lookup`` seals ONE
  fan-out envelope to the banks (every participating, non-suspended bank, or
  the banks a depositor designates).  Each bank's ``lookup.answer`` is sealed
  to DICJ and kept here (``dicj_lookup_answers``, first answer per bank wins:
  a duplicate is ignored), filed under the bank that SENT it (the envelope's
  verified sender): an answer whose body names another bank is refused
  (``SENDER_NOT_ALLOWED``), and so is one from a bank the lookup did not ask
  (``UNSOLICITED``); both stay in DICJ's dead letters.  The hub, which cannot read answers, sends one
  ``lookup.result`` naming the banks that answered in time and those that did
  not, then a supplement per late answer.  ``view`` joins the two into the
  consolidated result: answering banks, their accounts, missing banks, and
  late (supplementary) banks with theirs.  Each result is also told to the
  person the lookup was about (a ``person.notice`` to the portal, お知らせ,
  :mod:`streams.notices`): which banks reported accounts — a supplement only
  when it adds one.
- 付番申出 passed on by a bank (bank → DICJ → other banks): DICJ fans the
  request out to the other named banks, gathers their ``numbering.ack`` by
  correlation id up to a deadline (state in ``dicj_numberings`` /
  ``dicj_numbering_banks``) and notifies ONE ``numbering.result`` to the
  receiving bank and to the person (portal).  A periodic sweep sends results
  whose deadline passed, listing banks that did not answer.

Everything DICJ does runs in its participant runtime's transaction (claim +
effect + outbox), so redelivery never duplicates a result.
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

from connectors.client import BusClient
from infra.envelope import Message
from infra.errors import Reason, Rejection
from infra.participants import Participant
from infra.policy import (BASIS_DISASTER_LOOKUP, BASIS_INHERITANCE_LOOKUP, BASIS_NUMBERING,
                          DATA_DEPOSIT_ACCOUNT_HOLDINGS, DATA_DEPOSIT_ACCOUNT_NUMBERING)
from infra.settings import Settings
from schemas import types as T
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
]


def _now() -> datetime:
    return datetime.now(UTC)


class DicjDesk(BusClient):
    """The DICJ participant: lookups out, answers and results in, numbering passed on. An async context manager."""

    def __init__(self, settings: Settings, *, group: str, numbering_deadline_s: int = 30,
                 sweep_interval_s: float = 0.5) -> None:
        handlers = {
            T.LOOKUP_ANSWER: self._on_lookup_answer,
            T.LOOKUP_RESULT: self._on_lookup_result,
            T.NUMBERING_REQUEST: self._on_numbering_request,
            T.NUMBERING_ACK: self._on_numbering_ack,
        }
        self.runtime = ParticipantRuntime(settings, [DICJ_ID], handlers, group=group,
                                          migrations={"dicj": DICJ_MIGRATIONS})
        self.numbering_deadline_s = numbering_deadline_s
        self.sweep_interval_s = sweep_interval_s
        self._sweeper: asyncio.Task[None] | None = None

    async def __aenter__(self) -> DicjDesk:
        await self.runtime.start()
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="dicj-numbering-sweep")
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

    def lookup_banks(self, designated_codes: list[str] | None = None) -> list[Participant]:
        """Banks a lookup goes to: the designated ones, else every participating bank; never a suspended one."""
        banks = [b for b in self.runtime.participants.banks(participating_only=True) if not b.suspended]
        if designated_codes:
            wanted = set(designated_codes)
            banks = [b for b in banks if b.bank_code in wanted]
        return banks

    # -- lookups ---------------------------------------------------------------------------------
    async def start_lookup(self, kind: str, subject: str, *, deadline_s: int = 30, banks: list[str] | None = None,
                           designated_bank_codes: list[str] | None = None, disaster_id: str = "",
                           receiving_bank_code: str | None = None) -> str:
        """Send an inheritance (``kind="INHERITANCE"``) or disaster (``"DISASTER"``) lookup; its correlation id.

        The envelope expires at the deadline: the hub gathers answers until then.  ``banks``
        (participant ids) overrides the recipients (tests use it to include banks the hub must drop).
        """
        now = _now()
        deadline = now + timedelta(seconds=deadline_s)
        if kind == "INHERITANCE":
            type_, basis = T.LOOKUP_INHERITANCE, BASIS_INHERITANCE_LOOKUP
            body: dict = {"receiving_bank_code": receiving_bank_code, "requested_at": now, "deadline": deadline}
        elif kind == "DISASTER":
            type_, basis = T.LOOKUP_DISASTER, BASIS_DISASTER_LOOKUP
            body = {"designated_bank_codes": list(designated_bank_codes or []), "disaster_id": disaster_id,
                    "requested_at": now, "deadline": deadline}
        else:
            raise ValueError("kind must be INHERITANCE or DISASTER")
        to = banks if banks is not None else [b.id for b in self.lookup_banks(designated_bank_codes)]
        if not to:
            raise ValueError("no bank to ask")
        correlation = str(uuid.uuid4())
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO dicj_lookups (correlation_id, kind, subject, asked, deadline) VALUES ($1, $2, $3, $4, $5)",
                uuid.UUID(correlation), kind, subject, json.dumps(to), deadline)
            await self.runtime.send(DICJ_ID, [Message(
                body=body, type=type_, to=tuple(to), subject=subject, data_item=DATA_DEPOSIT_ACCOUNT_HOLDINGS,
                basis=basis, correlation_id=correlation, ttl_s=deadline_s)], conn=conn)
        return correlation

    async def wait_result(self, correlation_id: str, *, timeout: float = 60.0, poll_s: float = 0.02) -> dict:
        """Wait for the hub's consolidated result, then return ``view``."""
        end = time.monotonic() + timeout
        cid = uuid.UUID(correlation_id)
        while not await self.pool.fetchval(
                "SELECT 1 FROM dicj_lookup_results WHERE correlation_id = $1 AND NOT is_supplement", cid):
            if time.monotonic() > end:
                raise TimeoutError(f"no lookup result for {correlation_id} within {timeout:.0f} s")
            await asyncio.sleep(poll_s)
        return await self.view(correlation_id)

    async def view(self, correlation_id: str) -> dict:
        """DICJ's consolidated view of one lookup: the hub's tallies joined with the answers DICJ holds."""
        cid = uuid.UUID(correlation_id)
        results = await self.pool.fetch(
            "SELECT is_supplement, answering, missing FROM dicj_lookup_results WHERE correlation_id = $1 "
            "ORDER BY received_at", cid)
        answers = {r["bank_code"]: json.loads(r["accounts"]) for r in await self.pool.fetch(
            "SELECT bank_code, accounts FROM dicj_lookup_answers WHERE correlation_id = $1", cid)}
        main = next((r for r in results if not r["is_supplement"]), None)
        answering = sorted(json.loads(main["answering"])) if main else []
        late = sorted({c for r in results if r["is_supplement"] for c in json.loads(r["answering"])})
        missing = sorted(set(json.loads(main["missing"])) - set(late)) if main else []
        return {
            "correlation_id": correlation_id,
            "complete": main is not None,
            "answering_banks": answering,
            "banks_with_accounts": sorted(c for c in answering if answers.get(c)),
            "accounts": [a for c in answering for a in answers.get(c, [])],
            "missing_banks": missing,
            "late_banks": late,
            "supplement_accounts": [a for c in late for a in answers.get(c, [])],
            "results_received": len(results),
        }

    async def _on_lookup_answer(self, ctx: Context) -> None:
        sender = ctx.participants.get(ctx.meta.sender)  # verified by the opener, a bank (infra.senders)
        code = sender.bank_code if sender is not None else None
        if code is None or ctx.body["bank_code"] != code:
            raise Rejection(Reason.SENDER_NOT_ALLOWED, "a lookup answer naming another bank than its sender")
        asked = await ctx.conn.fetchval("SELECT asked ? $2 FROM dicj_lookups WHERE correlation_id = $1",
                                        uuid.UUID(ctx.meta.correlation_id), ctx.meta.sender)
        if not asked:
            raise Rejection(Reason.UNSOLICITED, "a lookup answer from a bank this lookup did not ask")
        accounts = [dict(a) for a in ctx.body["accounts"]]
        await ctx.conn.execute(
            "INSERT INTO dicj_lookup_answers (correlation_id, bank_code, message_id, accounts) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT DO NOTHING",  # a bank's second answer is ignored
            ctx.meta.correlation_id, code, ctx.meta.message_id, json.dumps(accounts))

    async def _on_lookup_result(self, ctx: Context) -> None:
        b = ctx.body
        stored = await ctx.conn.fetchval(
            "INSERT INTO dicj_lookup_results (message_id, correlation_id, is_supplement, answering, missing) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
            ctx.meta.message_id, ctx.meta.correlation_id, b["is_supplement"],
            json.dumps(b["answering_bank_codes"]), json.dumps(b["banks_not_answered"]))
        lookup = await ctx.conn.fetchrow("SELECT kind, subject FROM dicj_lookups WHERE correlation_id = $1",
                                         uuid.UUID(ctx.meta.correlation_id))
        if not stored or lookup is None:  # a lookup started elsewhere has no person here to tell
            return
        with_accounts = [r["bank_code"] for r in await ctx.conn.fetch(
            "SELECT bank_code FROM dicj_lookup_answers WHERE correlation_id = $1 AND bank_code = ANY($2::text[]) "
            "AND jsonb_array_length(accounts) > 0", uuid.UUID(ctx.meta.correlation_id), b["answering_bank_codes"])]
        if b["is_supplement"] and not with_accounts:
            return
        ctx.outgoing.append(notice(
            kind="LOOKUP", event=lookup["kind"], status="SUPPLEMENT" if b["is_supplement"] else "COMPLETE",
            subject=lookup["subject"], reference=ctx.meta.correlation_id, basis=ctx.meta.legal_basis,
            party=DICJ_ID, bank_codes=with_accounts))

    # -- numbering passed on by a bank -----------------------------------------------------------
    async def _on_numbering_request(self, ctx: Context) -> None:
        m, body = ctx.meta, ctx.body
        sender = ctx.participants.get(m.sender)
        receiving = sender.bank_code if sender is not None else None
        codes = [c for c in dict.fromkeys(body["bank_codes"]) if c != receiving]
        banks = {c: ctx.participants.by_bank_code(c) for c in codes}
        await ctx.conn.execute(
            "INSERT INTO dicj_numberings (correlation_id, receiving_bank, subject, deadline) "
            "VALUES ($1, $2, $3, now() + $4 * interval '1 second') ON CONFLICT DO NOTHING",
            m.correlation_id, m.sender, m.subject, self.numbering_deadline_s)
        await ctx.conn.executemany(
            "INSERT INTO dicj_numbering_banks (correlation_id, bank_code, bank_id, status, answered_at) "
            "VALUES ($1, $2, $3, $4, CASE WHEN $4::text IS NULL THEN NULL ELSE now() END) ON CONFLICT DO NOTHING",
            [(uuid.UUID(m.correlation_id), c, b.id if b else None, None if b else "REFUSED") for c, b in banks.items()])
        to = tuple(b.id for b in banks.values() if b is not None)
        if to:
            ctx.send(type=T.NUMBERING_REQUEST, to=to, subject=m.subject,  # type: ignore[arg-type]  # fan-out
                     body={"bank_codes": [b.bank_code for b in banks.values() if b is not None], "channel": "BANK",
                           "receiving_bank_code": receiving, "requested_at": body["requested_at"]},
                     data_item=DATA_DEPOSIT_ACCOUNT_NUMBERING, basis=BASIS_NUMBERING,
                     ttl_s=self.numbering_deadline_s)
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
        """Queue the one consolidated ``numbering.result`` (receiving bank + portal) unless already sent."""
        row = await conn.fetchrow(
            "UPDATE dicj_numberings SET result_sent = true WHERE correlation_id = $1 AND NOT result_sent "
            "RETURNING receiving_bank, subject", cid)
        if row is None:
            return False
        banks = await conn.fetch(
            "SELECT bank_code, status, accounts_linked FROM dicj_numbering_banks WHERE correlation_id = $1 "
            "ORDER BY bank_code", cid)
        body = {"outcomes": [{"bank_code": b["bank_code"], "status": b["status"],
                              "accounts_linked": b["accounts_linked"]} for b in banks if b["status"] is not None],
                "banks_not_answered": [b["bank_code"] for b in banks if b["status"] is None],
                "completed_at": _now()}
        for to in (row["receiving_bank"], PORTAL_ID):
            outgoing.append(Message(body=body, type=T.NUMBERING_RESULT, to=to, subject=row["subject"],
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
            except Exception as exc:  # database away: the next round retries
                log.warning("numbering sweep failed (%s)", type(exc).__name__)
