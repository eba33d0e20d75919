"""Lookup gathering in the hub: inheritance and disaster lookups (相続時・災害時照会), scatter-gather.

DICJ sends ONE fan-out envelope (``lookup.inheritance`` / ``lookup.disaster``)
whose wraps name the banks to ask.  The gateway gives each bank its own leg
(its token for the person, only its own key wrap).  The answers
(``lookup.answer``) are sealed end to end to DICJ, so the hub cannot read
them: it forwards each one as usual and tracks *who* answered, by correlation
id, in PostgreSQL:

- ``hub_lookups`` — one row per inquiry: requester, its subject token, kind,
  deadline, ``result_emitted``.  The deadline is the lookup's own: the
  inquiry's creation time plus its kind's setting (``lookup_deadlines``:
  days, as banks answer in daily cycles), never the envelope's lifetime —
  an envelope lives at most a day, and a bank answering the next morning
  sends an answer envelope of its own.  DICJ re-sends the inquiry to banks
  that have not answered (same correlation id, ``reminder`` in the body):
  the hub forwards it and keeps the first inquiry's banks and deadline;
- ``hub_lookup_banks`` — one row per asked bank: ``answered_at``, ``late``;
- ``hub_lookup_outbox`` — sealed ``lookup.result`` envelopes waiting to be
  produced (a transactional outbox, like the participants').

When the last bank answers (in the batch's transaction) or the deadline
passes (``LookupTracker.sweep``, a periodic task in every hub worker), the
lookup row is locked, flagged ``result_emitted`` and ONE ``lookup.result`` is
sealed into the outbox, with its provision records, in the same transaction:
so a worker killed at any point loses nothing and never emits twice (rows are
locked ``FOR UPDATE SKIP LOCKED``; a result left unsent by a dead worker is
sent by the next sweep, under the same message id).  An answer after the
result is still forwarded and produces a supplement result
(``is_supplement``).  A second answer from the same bank is forwarded but
changes nothing here (first answer wins; DICJ's side ignores it too).

An answer counts for the bank that SENT it — the envelope's verified origin
sender, never a bank code inside the (unreadable) body — and only if that bank
was one of the lookup's legs: an answer from a bank that was not asked, or to
no lookup at all, is refused (``UNSOLICITED``: dead-lettered, not forwarded,
no provision record).

The result lists answering banks and banks that did not answer in time; its
``accounts`` list is always empty because only DICJ can read the answers —
DICJ's side (``connectors.dicj``) assembles the consolidated view.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from infra.core.errors import Reason
from infra.core.settings import Settings
from infra.core.tracing import TraceContext, hop, stored_headers
from infra.crypto.envelope import Message, Sealer, peek
from infra.crypto.pseudonyms import HubPseudonyms
from infra.crypto.tokens import TokenAuthority
from infra.domain.participants import Kind, Participant, Participants
from infra.domain.policy import Policy
from infra.platform.storage import migrate
from infra.platform.topics import TopicNames
from infra.records.provisions import ProvisionStatus, ProvisionStore, RecordDraft, audit_record
from schemas import types as msg
from streams.hub_produce import Outgoing

log = logging.getLogger("renkei.hub.lookups")

LOOKUP_KINDS = {msg.LOOKUP_INHERITANCE: "INHERITANCE", msg.LOOKUP_DISASTER: "DISASTER"}
"""Inquiry message type → ``LookupKind`` symbol of its result."""

PORTAL_ID = "portal"  # provision records are keyed by the person's portal token (see streams.gateway)


def lookup_deadlines(settings: Settings) -> dict[str, int]:
    """Seconds a lookup of each kind gathers answers: its own setting, not an envelope's lifetime."""
    return {"INHERITANCE": settings.lookup_deadline_inheritance_s, "DISASTER": settings.lookup_deadline_disaster_s}


LOOKUP_MIGRATIONS = [
    """
    CREATE TABLE hub_lookups (
        correlation_id   uuid PRIMARY KEY,
        inquiry_id       uuid NOT NULL,
        kind             text NOT NULL,
        requester        text NOT NULL,
        subject          text NOT NULL,
        data_item        text NOT NULL,
        legal_basis      text NOT NULL,
        not_disclosed    boolean NOT NULL,
        created_at       timestamptz NOT NULL,
        deadline         timestamptz NOT NULL,
        result_emitted   boolean NOT NULL DEFAULT false,
        result_emitted_at timestamptz
    );
    CREATE INDEX hub_lookups_due ON hub_lookups (deadline) WHERE NOT result_emitted;
    CREATE TABLE hub_lookup_banks (
        correlation_id    uuid NOT NULL REFERENCES hub_lookups ON DELETE CASCADE,
        bank_id           text NOT NULL,
        bank_code         text NOT NULL,
        answered_at       timestamptz,
        answer_message_id uuid,
        late              boolean NOT NULL DEFAULT false,
        PRIMARY KEY (correlation_id, bank_id)
    );
    CREATE INDEX hub_lookup_banks_open ON hub_lookup_banks (correlation_id) WHERE answered_at IS NULL;
    CREATE TABLE hub_lookup_outbox (
        message_id     uuid PRIMARY KEY,
        correlation_id uuid NOT NULL,
        recipient      text NOT NULL,
        kafka_key      bytea NOT NULL,
        envelope       bytea NOT NULL,
        supplement     boolean NOT NULL,
        created_at     timestamptz NOT NULL DEFAULT now(),
        sent_at        timestamptz
    );
    CREATE INDEX hub_lookup_outbox_pending ON hub_lookup_outbox (created_at) WHERE sent_at IS NULL;
    """,
    # The inquiry's W3C trace (infra.core.tracing): its result, sealed later, goes out in the same trace.
    """
    ALTER TABLE hub_lookups ADD COLUMN traceparent text;
    ALTER TABLE hub_lookup_outbox ADD COLUMN traceparent text;
    """,
]


def fanout_leg_allowed(policy: Policy, type_: str, recipient: Participant | None) -> bool:
    """May one leg of a fan-out go out? Suspended participants never; lookups only to participating banks.

    A fan-out to 1,000 banks is not refused as a whole because one bank is
    suspended or has left the lookup scheme: that leg is dropped (and the
    bank is not counted as asked).  Unknown recipients are left to the
    policy, which refuses the whole envelope.
    """
    if recipient is None:
        return True
    if policy.is_suspended(recipient):
        return False
    if type_ in LOOKUP_KINDS and recipient.kind is Kind.BANK and not recipient.participating:
        return False
    return True


@dataclass(frozen=True)
class _Due:
    """A result to seal: one inquiry, which banks it reports as answering and as missing."""

    lookup: asyncpg.Record
    answering: list[str]
    missing: list[str]
    supplement: bool


_LOCK_LOOKUPS = """
SELECT * FROM hub_lookups WHERE correlation_id = ANY($1::uuid[]) ORDER BY correlation_id FOR UPDATE
"""

_ASKED = """
SELECT a.n FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS a(correlation_id, bank_id, n)
JOIN hub_lookup_banks b ON b.correlation_id = a.correlation_id AND b.bank_id = a.bank_id
"""

_RECORD_ANSWERS = """
UPDATE hub_lookup_banks b SET answered_at = now(), answer_message_id = a.message_id, late = l.result_emitted
FROM unnest($1::uuid[], $2::text[], $3::uuid[]) AS a(correlation_id, bank_id, message_id), hub_lookups l
WHERE b.correlation_id = a.correlation_id AND b.bank_id = a.bank_id AND b.answered_at IS NULL
  AND l.correlation_id = b.correlation_id
RETURNING b.correlation_id, b.bank_code, b.late
"""

_COMPLETE = """
UPDATE hub_lookups l SET result_emitted = true, result_emitted_at = now()
WHERE l.correlation_id = ANY($1::uuid[]) AND NOT l.result_emitted
  AND NOT EXISTS (SELECT 1 FROM hub_lookup_banks b WHERE b.correlation_id = l.correlation_id AND b.answered_at IS NULL)
RETURNING l.*
"""

_DUE = """
WITH due AS (
    SELECT correlation_id FROM hub_lookups WHERE NOT result_emitted AND deadline <= now()
    ORDER BY deadline LIMIT $1 FOR UPDATE SKIP LOCKED
)
UPDATE hub_lookups l SET result_emitted = true, result_emitted_at = now()
FROM due WHERE l.correlation_id = due.correlation_id
RETURNING l.*
"""


class LookupTracker:
    """The hub's scatter-gather bookkeeping for lookups. One per hub worker; state in PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool, *, sealer: Sealer, tokens: TokenAuthority, participants: Participants,
                 policy: Policy, producer: Any, names: TopicNames, hub_id: str = "hub",
                 sweep_limit: int = 200, records: ProvisionStore | None = None,
                 pseudonyms: HubPseudonyms | None = None, deadlines: Mapping[str, int] | None = None) -> None:
        self.pool = pool
        self.deadlines = dict(deadlines or lookup_deadlines(Settings()))  # seconds per kind
        self.sealer = sealer
        self.tokens = tokens
        self.participants = participants
        self.policy = policy
        self.producer = producer
        self.names = names
        self.hub_id = hub_id
        self.sweep_limit = sweep_limit
        self.records = records or ProvisionStore(pool)  # the hub's, with the records key that seals heads
        self.pseudonyms = pseudonyms or HubPseudonyms.of(tokens)  # how records name results and persons
        self.pending = False  # results were sealed into the outbox since the last flush
        self._flush_lock = asyncio.Lock()

    async def migrate(self) -> None:
        await migrate(self.pool, "hub-lookups", LOOKUP_MIGRATIONS)

    # -- inside the hub's batch transaction -----------------------------------------------------
    async def track(self, conn: asyncpg.Connection, decisions: Iterable[Any], redelivered: set[str]) -> None:
        """Record new inquiries and answers of an accepted batch; seal results that became complete.

        Runs in the hub's claim + provision-record transaction, after both:
        a redelivered message (already tracked before a crash) is skipped.
        """
        inquiries, answering = [], []
        for d in decisions:
            if not d.accepted or d.local or d.meta.message_id in redelivered:
                continue
            if d.meta.type in LOOKUP_KINDS and d.legs:
                inquiries.append(d)
            elif d.meta.type == msg.LOOKUP_ANSWER:
                answering.append(d)
        if inquiries:
            await self._open(conn, inquiries)
        if not answering:
            return
        # A bank answers under ITS correlation id; lookups are kept under the requester's (DICJ's), which
        # is the correlation id of the answer's leg to DICJ.
        lookup_of = {id(d): uuid.UUID(d.legs[0].ids.correlation_id) for d in answering}
        await conn.fetch(_LOCK_LOOKUPS, sorted(set(lookup_of.values())))  # serialise with answers and the sweep
        asked = {r["n"] - 1 for r in await conn.fetch(_ASKED, [lookup_of[id(d)] for d in answering],
                                                       [d.meta.sender for d in answering])}
        answers = []
        for i, d in enumerate(answering):
            if i in asked:
                answers.append(d)
            else:  # attributed to its verified sender, which no leg of this lookup went to
                d.reject(Reason.UNSOLICITED, "lookup answer from a bank this lookup did not ask")
        if not answers:
            return
        rows = await conn.fetch(_RECORD_ANSWERS, [lookup_of[id(d)] for d in answers],
                                [d.meta.sender for d in answers], [uuid.UUID(d.meta.message_id) for d in answers])
        late: dict[uuid.UUID, list[str]] = {}
        on_time: set[uuid.UUID] = set()
        for r in rows:
            if r["late"]:
                late.setdefault(r["correlation_id"], []).append(r["bank_code"])
            else:
                on_time.add(r["correlation_id"])
        due: list[_Due] = []
        if on_time:
            for lookup in await conn.fetch(_COMPLETE, sorted(on_time)):
                due.append(await self._tally(conn, lookup, supplement=False))
        if late:
            for lookup in await conn.fetch("SELECT * FROM hub_lookups WHERE correlation_id = ANY($1::uuid[])",
                                           sorted(late)):
                tally = await self._tally(conn, lookup, supplement=True)
                due.append(_Due(lookup, sorted(late[lookup["correlation_id"]]), tally.missing, True))
        if due:
            await self._seal(conn, due)

    async def _open(self, conn: asyncpg.Connection, inquiries: list[Any]) -> None:
        lookups, banks = [], []
        for d in inquiries:
            m = d.meta
            cid = uuid.UUID(m.correlation_id)
            not_disclosed = any(r.not_disclosed for r in d.records)
            kind = LOOKUP_KINDS[m.type]
            lookups.append((cid, uuid.UUID(m.message_id), kind, m.sender, m.subject, m.data_item,
                            m.legal_basis, not_disclosed, m.created_at,
                            m.created_at + timedelta(seconds=self.deadlines[kind]),
                            d.trace.header if d.trace is not None else None))
            for leg in d.legs:
                bank = self.participants.get(leg.recipient)
                banks.append((cid, leg.recipient, bank.bank_code if bank and bank.bank_code else leg.recipient))
        await conn.executemany(
            "INSERT INTO hub_lookups (correlation_id, inquiry_id, kind, requester, subject, data_item, legal_basis, "
            "not_disclosed, created_at, deadline, traceparent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
            "ON CONFLICT (correlation_id) DO NOTHING", lookups)
        # A correlation id reused by a second inquiry keeps the first inquiry's set of banks.
        await conn.execute(
            "INSERT INTO hub_lookup_banks (correlation_id, bank_id, bank_code) "
            "SELECT c, b, k FROM unnest($1::uuid[], $2::text[], $3::text[]) AS t(c, b, k) "
            "JOIN hub_lookups l ON l.correlation_id = t.c AND l.inquiry_id = ANY($4::uuid[]) "
            "ON CONFLICT DO NOTHING",
            [b[0] for b in banks], [b[1] for b in banks], [b[2] for b in banks],
            [uuid.UUID(d.meta.message_id) for d in inquiries])

    async def _tally(self, conn: asyncpg.Connection, lookup: asyncpg.Record, *, supplement: bool) -> _Due:
        rows = await conn.fetch(
            "SELECT bank_code, answered_at IS NOT NULL AND NOT late AS on_time, answered_at IS NULL AS missing "
            "FROM hub_lookup_banks WHERE correlation_id = $1 ORDER BY bank_code", lookup["correlation_id"])
        return _Due(lookup, [r["bank_code"] for r in rows if r["on_time"]],
                    [r["bank_code"] for r in rows if r["missing"]], supplement)

    async def _seal(self, conn: asyncpg.Connection, due: list[_Due]) -> None:
        """Seal one ``lookup.result`` per item into the outbox, with its provision records (same transaction)."""
        now = datetime.now(UTC)
        messages = [
            Message(
                body={"lookup_kind": d.lookup["kind"], "answering_bank_codes": d.answering, "accounts": [],
                      "banks_not_answered": d.missing, "is_supplement": d.supplement, "completed_at": now},
                type=msg.LOOKUP_RESULT, to=d.lookup["requester"], subject=d.lookup["subject"],
                data_item=d.lookup["data_item"], basis=d.lookup["legal_basis"],
                correlation_id=str(d.lookup["correlation_id"]))
            for d in due
        ]
        envelopes = self.sealer.seal_batch(messages)
        rows, drafts = [], []
        for d, m, env in zip(due, messages, envelopes, strict=True):
            mid = uuid.UUID(peek(env).message_id)
            trace = hop(TraceContext.parse(d.lookup["traceparent"]), "renkei.hub.lookup_result",
                        {"renkei.type": m.type, "renkei.recipient": str(m.to)})
            rows.append((mid, d.lookup["correlation_id"], m.to, m.subject.encode(), env, d.supplement, trace.header))
            drafts += self._drafts(d, mid, now)
        await conn.executemany(
            "INSERT INTO hub_lookup_outbox (message_id, correlation_id, recipient, kafka_key, envelope, supplement, "
            "traceparent) VALUES ($1, $2, $3, $4, $5, $6, $7)", rows)
        await self.records.append(conn, drafts)
        self.pending = True

    def _drafts(self, d: _Due, result_id: uuid.UUID, now: datetime) -> list[RecordDraft]:
        """The consolidated result's records: one for the result, one NO_ANSWER per bank missing at the deadline."""
        lk = d.lookup
        person = self.tokens.translate(lk["subject"], lk["requester"], PORTAL_ID)
        names = self.pseudonyms  # ids on no participant's topic, as the gateway's records (infra.crypto.pseudonyms)
        common = dict(message_id=names.record_message_id(result_id),
                      correlation_id=names.conversation(str(lk["correlation_id"]), lk["requester"]),
                      person_token=person, person=names.person(person),
                      requester=lk["requester"], data_item=lk["data_item"], legal_basis=lk["legal_basis"],
                      requested_at=lk["created_at"], not_disclosed=lk["not_disclosed"])
        drafts = [RecordDraft(provider=self.hub_id, provided_at=now, status=ProvisionStatus.PROVIDED, **common)]
        if not d.supplement:
            for code in d.missing:
                bank = self.participants.by_bank_code(code)
                drafts.append(RecordDraft(provider=bank.id if bank else code, status=ProvisionStatus.NO_ANSWER,
                                          **common))
        return drafts

    # -- outside the batch: the deadline sweep and the outbox ------------------------------------
    async def sweep(self) -> int:
        """Seal the results of lookups past their deadline (exactly one worker each), then flush."""
        sealed = 0
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                lookups = await conn.fetch(_DUE, self.sweep_limit)
                if lookups:
                    await self._seal(conn, [await self._tally(conn, lk, supplement=False) for lk in lookups])
            sealed += len(lookups)
            if len(lookups) < self.sweep_limit:
                break
        await self.flush()
        return sealed

    async def flush(self, limit: int = 500) -> int:
        """Produce sealed results (and their provision records) not yet sent; mark them sent after the acks.

        Rows in flight are locked (SKIP LOCKED), so two workers never send one at the same time; a
        worker killed before the mark leaves it for the next sweep, which sends the same envelope
        again (same message id: DICJ's runtime claims it once).
        """
        self.pending = False
        sent = 0
        async with self._flush_lock:
            while True:
                async with self.pool.acquire() as conn, conn.transaction():
                    rows = await conn.fetch(
                        "SELECT message_id, recipient, kafka_key, envelope, traceparent FROM hub_lookup_outbox "
                        "WHERE sent_at IS NULL ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED", limit)
                    if not rows:
                        return sent
                    records = await self.records.by_message_ids(
                        conn, [self.pseudonyms.record_message_id(r["message_id"]) for r in rows])
                    # One record batch per topic (streams.hub_produce): a result past its deadline brings a
                    # NO_ANSWER record per silent bank, up to 1,000 audit records for one lookup.
                    out = Outgoing(self.producer)
                    for r in rows:
                        out.add(self.names.inbox(r["recipient"]), r["envelope"], key=r["kafka_key"],
                                headers=stored_headers(r["traceparent"]))
                    for record in records:
                        key, value = audit_record(record, self.pseudonyms.person(record.person_token))
                        out.add(self.names.audit, value, key=key)
                    await out.flush()  # every ack before the rows are marked sent
                    await conn.execute("UPDATE hub_lookup_outbox SET sent_at = now() WHERE message_id = ANY($1::uuid[])",
                                       [r["message_id"] for r in rows])
                sent += len(rows)
                if len(rows) < limit:
                    return sent

    async def run_sweeps(self, interval_s: float = 0.5) -> None:
        """The periodic task every hub worker runs: a failing sweep is logged and retried, never fatal."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database or broker away: the rows wait, the next sweep retries
                log.warning("lookup sweep failed (%s); retrying", type(exc).__name__)

