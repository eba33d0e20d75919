"""The hub's batch step over ``renkei.hub.ingress`` (``HubService``), and what every hub worker runs beside it.

Why this file is long: the batch step (:class:`HubService`) and the worker wiring around it (metrics,
checkpoints, start-up) share the hub's state; the pure decisions are :mod:`streams.gateway`, forwarding
:mod:`streams.hub_produce`.

``streams.hub_loop`` drives it from a plain aiokafka consumer group (one poll = one batch); the
faust app below (``build_app``, run by ``streams.hub_faust``) drives the same step and is kept for
the bench's comparison.  For each batch, in this order:

1. ``HubCore.decide`` — verify (wraps and audit paths capped before decoding),
   rate-limit each verified sender, authorise, translate (pure, no I/O);
2. one PostgreSQL transaction: claim every verified message id with its
   source partition/offset (a different offset = a replay → REPLAYED; the
   same offset = a redelivery after a crash → forwarded again, no new
   record; a concurrent claim by another worker counts as earlier, so a
   duplicate racing between workers is REPLAYED too), track lookups (an
   answer from a bank the lookup did not ask is refused UNSOLICITED) and
   append the provision records;
3. only after that commit: countersign and produce the forwards to the
   recipients' inboxes (each leg under ids of its own: ``infra.crypto.pseudonyms``),
   the dead letters to ``renkei.hub.rejected``, the signed rejection notices
   to the senders' inboxes and the records to ``renkei.audit.provisions``
   (keyed by the person's hub-only pseudonym, never a token), one record batch per
   topic (``streams.hub_produce``); wait for the broker's acks;
4. return to the loop, which commits the batch's offsets (at-least-once).

If step 2 fails (database down), nothing is forwarded and the batch is
retried with back-off until it succeeds: fail closed, nothing lost.  Run it
as ``python -m streams.hub_loop`` (``renkei up`` does; ``streams.hub_loop`` drives this module).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka.partitioner import DefaultPartitioner

from infra.core.errors import Reason
from infra.core.retry import Backoff
from infra.core.settings import Settings
from infra.core.tracing import TraceContext, hop, received, trace_headers
from infra.crypto.envelope import HubForwarder, Opener, Sealer, Verifier
from infra.crypto.keys import KeyDirectory
from infra.crypto.records_keys import RecordsKey
from infra.domain.identity import IDENTITY_MIGRATIONS, NumberChanges
from infra.domain.participants import Participants, participants_of
from infra.domain.policy import Policy
from infra.domain.ratelimit import SenderRateLimiter
from infra.platform.keystore import KeyStore, load_directory
from infra.platform.pgdsn import component_dsn
from infra.platform.storage import create_pool, migrate
from infra.platform.topics import TopicNames
from infra.records.provisions import ProvisionStore, audit_record
from schemas.types import REJECTION_NOTICE
from streams.gateway import HubCore, HubDecision, Inbound, reply_id
from streams.hub_produce import Outgoing
from streams.lookups import LOOKUP_MIGRATIONS, LookupTracker, lookup_deadlines
from streams.participant import ClaimedInTransaction

log = logging.getLogger("renkei.hub")

RECORDS_RETRY = Backoff(base_s=0.2, cap_s=5.0)  # the records database away: the batch waits, fail closed

HUB_MIGRATIONS = [
    """
    CREATE TABLE hub_messages (
        message_id    uuid PRIMARY KEY,
        src_partition integer NOT NULL,
        src_offset    bigint NOT NULL,
        accepted      boolean NOT NULL,
        reason        text,
        type          text NOT NULL,
        sender        text NOT NULL,
        received_at   timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX hub_messages_received_at ON hub_messages (received_at);
    """,
]

# Sorted, so two workers claiming overlapping ids lock them in the same order (no deadlock).
_CLAIM_SQL = """
INSERT INTO hub_messages (message_id, src_partition, src_offset, accepted, reason, type, sender)
SELECT * FROM unnest($1::uuid[], $2::int[], $3::bigint[], $4::bool[], $5::text[], $6::text[], $7::text[])
    AS t(message_id, src_partition, src_offset, accepted, reason, type, sender)
ORDER BY message_id
ON CONFLICT (message_id) DO NOTHING
RETURNING message_id::text
"""

_EARLIER_SQL = ("SELECT message_id::text, src_partition, src_offset FROM hub_messages "
                "WHERE message_id = ANY($1::uuid[])")


@dataclass(frozen=True)
class MessageClaim:
    """One verified ingress message the hub claims before acting on it."""

    message_id: str
    partition: int
    offset: int
    accepted: bool
    reason: str | None
    type: str
    sender: str


async def claim_messages(conn: asyncpg.Connection, claims: Sequence[MessageClaim]) -> dict[str, tuple[int, int] | None]:
    """Claim message ids in ``conn``'s transaction; returns the ids that were NOT new, with where they were first seen.

    The INSERT claims what no one holds.  An id another worker inserted but has not committed
    makes the INSERT wait for that worker: if it commits, the id is not ours (and the SELECT,
    a new statement, sees its row); if it rolls back, the INSERT claims it for us.  So a
    duplicate racing between two workers is never "new" twice.  ``None`` = claimed by someone,
    but the row is gone (pruned): treat it as seen before.
    """
    if not claims:
        return {}
    # Ids go to PostgreSQL as the canonical strings the envelope checked (asyncpg parses them in C) and come
    # back as text: no uuid.UUID per message either way.
    inserted = await conn.fetch(
        _CLAIM_SQL,
        [c.message_id for c in claims], [c.partition for c in claims], [c.offset for c in claims],
        [c.accepted for c in claims], [c.reason for c in claims], [c.type for c in claims],
        [c.sender for c in claims])
    ours = {r[0] for r in inserted}
    others = [c.message_id for c in claims if c.message_id not in ours]
    if not others:
        return {}
    found: dict[str, tuple[int, int] | None] = dict.fromkeys(others)
    for r in await conn.fetch(_EARLIER_SQL, others):
        found[r[0]] = (r[1], r[2])
    return found


@dataclass
class BatchStats:
    received: int = 0
    forwarded: int = 0
    rejected: int = 0
    redelivered: int = 0
    records: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    by_sender: dict[str, int] = field(default_factory=dict)  # accepted, by verified sender (per-participant series)
    by_recipient: dict[str, int] = field(default_factory=dict)  # forwarded, by inbox
    provision_write_s: float = 0.0  # the claim + provision-record transaction, retries included (not totalled)


class HubService:
    """Ingress batch → decisions → one PostgreSQL transaction → produce. Transport-agnostic."""

    def __init__(self, settings: Settings, core: HubCore, sealer: Sealer, pool: asyncpg.Pool, producer: Any,
                 directory: KeyDirectory | None = None, records_key: RecordsKey | None = None) -> None:
        self.settings = settings
        self.directory = directory  # what the verifier and sealer use: follow_directory keeps it current
        self.keystore: KeyStore | None = None  # whose keysets take keys rotated into their files (create())
        self.core = core
        self.sealer = sealer
        self.pool = pool
        self.producer = producer
        self.names = TopicNames(settings.kafka.topic_prefix)
        self.records_key = records_key  # seals chain heads (no key: nothing is recorded, nothing forwarded)
        self.records = ProvisionStore(pool, records_key)
        self.totals = BatchStats()
        self.write_failures = 0  # provision-record transactions failed and retried (metrics: infra.platform.metrics_hub)
        self.number_changes: NumberChanges | None = None  # 番号変更, applied at token issuance (create())
        self.lookups = LookupTracker(pool, sealer=sealer, tokens=core.tokens, participants=core.participants,
                                     policy=core.policy, producer=producer, names=self.names, hub_id=core.hub_id,
                                     records=self.records, pseudonyms=core.pseudonyms,
                                     deadlines=lookup_deadlines(settings))

    @classmethod
    async def create(cls, settings: Settings, producer: Any, *, policy: Policy | None = None,
                     participants: Participants | None = None) -> HubService:
        participants = participants or participants_of(settings)
        store = KeyStore.for_settings(settings)
        directory = await load_directory(settings, store.root_public_key())
        hub_keys = store.keyset(settings.participant_id)
        sealer = Sealer(hub_keys, directory)
        policy = policy or Policy.load()
        policy.follow(directory)  # suspensions published on the keys topic (renkei participants suspend)
        # No fan-out names more recipients than there are participants: refuse more before decoding them.
        max_wraps = max(1, len(participants))
        core = HubCore(
            verifier=Verifier(directory, hub_id=hub_keys.participant_id, max_wraps=max_wraps),
            forwarder=HubForwarder(hub_keys, directory),
            policy=policy,
            participants=participants,
            tokens=store.token_authority(),
            hub_id=hub_keys.participant_id,
            opener=Opener(hub_keys, directory, ClaimedInTransaction(), participants=participants,
                          require_countersignature=False),
            sealer=sealer,
            limiter=(SenderRateLimiter(settings.hub_sender_rate, settings.hub_sender_burst)
                     if settings.hub_sender_rate > 0 else None),
        )
        pool = await create_pool(component_dsn(settings, "hub"))
        await migrate(pool, "hub", HUB_MIGRATIONS)
        await ProvisionStore(pool).migrate()
        await migrate(pool, "hub-lookups", LOOKUP_MIGRATIONS)
        await migrate(pool, "hub-identity", IDENTITY_MIGRATIONS)
        service = cls(settings, core, sealer, pool, producer, directory, records_key=store.records_key())
        service.keystore = store
        service.number_changes = NumberChanges(core.tokens)
        core.tokens.resolver = service.number_changes.resolve
        return service

    async def close(self) -> None:
        await self.pool.close()

    # -- the batch step ---------------------------------------------------------------------------
    async def process(self, batch: Sequence[Inbound]) -> BatchStats:
        decisions = self.core.decide(list(batch))
        for d in decisions:
            d.trace = _trace_of(d)
        started = time.monotonic()
        redelivered, new_records = await self._commit_with_retry(decisions)
        write_s = time.monotonic() - started
        stats = await self._emit(decisions, redelivered, new_records)
        stats.provision_write_s = write_s
        if self.lookups.pending:  # lookup results sealed in this batch's transaction
            await self.lookups.flush()
        t = self.totals
        t.received += stats.received
        t.forwarded += stats.forwarded
        t.rejected += stats.rejected
        t.redelivered += stats.redelivered
        t.records += stats.records
        for k, v in stats.by_reason.items():
            t.by_reason[k] = t.by_reason.get(k, 0) + v
        return stats

    async def _commit_with_retry(self, decisions: list[HubDecision]) -> tuple[set[str], list[Any]]:
        failures = 0
        while True:
            try:
                return await self._commit(decisions)
            except (asyncpg.PostgresError, OSError, asyncio.TimeoutError) as exc:
                # Fail closed: nothing of this batch is forwarded until its records are written.
                self.write_failures += 1
                failures += 1
                delay = RECORDS_RETRY.delay(failures)
                log.error("provision records could not be written (%s); retrying in %.1f s, nothing forwarded",
                          type(exc).__name__, delay)
                await asyncio.sleep(delay)

    async def _commit(self, decisions: list[HubDecision]) -> tuple[set[str], list[Any]]:
        """Claim verified message ids and write provision records, in one transaction."""
        seen_in_batch: set[str] = set()
        claim: list[HubDecision] = []
        for d in decisions:
            if d.meta is None:
                continue
            if d.meta.message_id in seen_in_batch:
                d.reject(Reason.REPLAYED, "message id seen before (twice in one batch)")
                continue
            seen_in_batch.add(d.meta.message_id)
            claim.append(d)
        redelivered: set[str] = set()
        async with self.pool.acquire() as conn, conn.transaction():
            if self.number_changes is not None and any(d.accepted and d.local for d in claim):
                await self.number_changes.refresh(conn)  # every number change committed before this batch applies
            earlier = await claim_messages(conn, [
                MessageClaim(d.meta.message_id, d.inbound.partition, d.inbound.offset, d.accepted,
                             d.reason.value if d.reason else None, d.meta.type, d.meta.sender) for d in claim])
            for d in claim:
                if d.meta.message_id not in earlier:
                    continue
                if earlier[d.meta.message_id] == (d.inbound.partition, d.inbound.offset):
                    redelivered.add(d.meta.message_id)  # our own crash: forward again, record nothing new
                else:
                    d.reject(Reason.REPLAYED, "message id seen before")
            claimed_accepted = [d for d in claim if d.accepted and d.meta.message_id not in earlier]
            # Scatter-gather state first: lookup rows, then provision-record heads, the order the sweep takes too.
            await self.lookups.track(conn, decisions, redelivered)
            refused = [d for d in claimed_accepted if not d.accepted]  # e.g. an answer from a bank not asked
            if refused:
                await conn.executemany("UPDATE hub_messages SET accepted = false, reason = $2 WHERE message_id = $1",
                                       [(d.meta.message_id, d.reason.value) for d in refused])
            drafts = [r for d in decisions if d.accepted and d.meta.message_id not in redelivered for r in d.records]
            new_records = await self.records.append(conn, drafts) if drafts else []
            if redelivered:
                # Republish their records: the crash may have come before the audit topic got them.
                new_records += await self.records.by_message_ids(
                    conn, [self.core.pseudonyms.record_message_id(m) for m in redelivered])
        return redelivered, new_records

    async def _emit(self, decisions: list[HubDecision], redelivered: set[str], records: list[Any]) -> BatchStats:
        stats = BatchStats(received=len(decisions), redelivered=len(redelivered), records=len(records))
        out = Outgoing(self.producer)  # one record batch per topic, not one send per record
        inbox = self.names.inbox
        answers, _ = self.core.answer_local(decisions)
        # forward() yields each accepted leg in decision order, answer_local() each answered local decision.
        legs = [d for d in decisions if d.accepted and not d.local for _ in d.legs]
        legs += [d for d in decisions if d.accepted and d.local] if answers else []  # none answered without a sealer
        for (recipient, subject, envelope), d in zip(self.core.forward(decisions) + answers, legs, strict=True):
            out.add(inbox(recipient), envelope, key=subject.encode(), headers=_leg_headers(d, recipient))
            stats.forwarded += 1
            stats.by_recipient[recipient] = stats.by_recipient.get(recipient, 0) + 1
        notices = []
        for d in decisions:
            if d.accepted:
                if d.meta is not None:
                    stats.by_sender[d.meta.sender] = stats.by_sender.get(d.meta.sender, 0) + 1
                continue
            stats.rejected += 1
            stats.by_reason[d.reason.value] = stats.by_reason.get(d.reason.value, 0) + 1
            _log_refused(d)
            out.add(self.names.rejected, d.inbound.value, key=d.inbound.key, headers=dead_letter_headers(d))
            if d.meta is not None and d.meta.sender in self.core.participants and d.meta.type != REJECTION_NOTICE:
                notices.append(d)
        if notices:
            for d, envelope in zip(notices, self._seal_notices(notices)):
                out.add(inbox(d.meta.sender), envelope, key=d.meta.subject.encode(),
                        headers=_leg_headers(d, d.meta.sender))
        person = self.core.pseudonyms.person
        for record in records:
            # A v2 record carries its pseudonym (computed for its draft, covered by its hash); a v1 one is keyed
            # by the same HMAC of its token.
            key, value = audit_record(record, record.person or person(record.person_token))
            out.add(self.names.audit, value, key=key)
        await out.flush()  # every ack before the caller commits the consumed offsets
        return stats

    def _seal_notices(self, decisions: list[HubDecision]) -> list[bytes]:
        from infra.crypto.envelope import Message

        now = datetime.now(UTC)
        messages = [
            Message(
                body={"reason_code": d.reason.value, "message": d.detail, "original_message_id": d.meta.message_id,
                      "original_type": d.meta.type, "rejected_at": now},
                type=REJECTION_NOTICE, to=d.meta.sender, subject=d.meta.subject,
                data_item=d.meta.data_item, basis=d.meta.legal_basis, correlation_id=d.meta.correlation_id,
                message_id=reply_id("rejection-notice", d.inbound, d.meta.message_id),
            )
            for d in decisions
        ]
        try:
            return self.sealer.seal_batch(messages)
        except Exception:  # e.g. the sender has no encryption key: the dead letter is still there
            log.exception("could not seal rejection notices; the dead letters stand")
            return []


def dead_letter_headers(d: HubDecision) -> list[tuple[str, bytes]]:
    headers = [
        ("renkei.reason", d.reason.value.encode()),
        ("renkei.detail", d.detail.encode()[:500]),
        ("renkei.src.partition", str(d.inbound.partition).encode()),
        ("renkei.src.offset", str(d.inbound.offset).encode()),
        ("renkei.rejected_at", str(int(time.time() * 1000)).encode()),
    ]
    meta = d.meta or d.unverified
    if meta is not None:
        headers += [("renkei.message_id", meta.message_id.encode()), ("renkei.type", meta.type.encode()),
                    ("renkei.sender", meta.sender.encode()),
                    ("renkei.verified", b"true" if d.meta is not None else b"false")]
    # A re-driven or replayed message that fails again keeps its history (count, earlier dead letters,
    # ops event): `renkei dlq redrive` continues from it.
    headers += [(k, v) for k, v in d.inbound.headers if k.startswith(_CARRIED_HEADERS) or k == "renkei.ops.event"]
    if d.trace is not None:  # rewritten from the parsed values: the sender's raw header bytes are not copied
        headers += trace_headers(d.trace)
    return headers


def _log_refused(d: HubDecision) -> None:
    """One line per refused message: the verified sender's own ids, the reason code and the trace (never the
    detail, a token, or what an unverified envelope claims: its fields are the sender's to choose). What the
    rate limit refuses, and unverifiable input, are counted in the metrics and the batch line, logged one by one
    only at DEBUG: a flood must not flood the log."""
    meta = d.meta
    assert d.reason is not None
    quiet = meta is None or d.reason is Reason.RATE_LIMITED
    log.log(logging.DEBUG if quiet else logging.INFO, "refused %s from %s: %s",
            meta.type if meta else "a message", meta.sender if meta else "an unverified sender",
            d.reason.value, extra={"participant": meta.sender if meta else "", "reason": d.reason.value,
                                   "message_id": meta.message_id if meta else "",
                                   "correlation_id": meta.correlation_id if meta else "",
                                   "trace_id": d.trace.trace_id if d.trace else ""})


def _trace_of(d: HubDecision) -> TraceContext:
    """The trace of an ingress message: the sender's, unless its trace id is one of the message's own ids."""
    meta = d.meta or d.unverified
    return received(d.inbound.headers, not_ids=(meta.message_id, meta.correlation_id) if meta else ())


def _leg_headers(d: HubDecision, recipient: str) -> list[tuple[str, bytes]]:
    """The Kafka headers of one message the hub sends for ``d``: its trace, continued with a span of this leg."""
    assert d.meta is not None and d.trace is not None
    return trace_headers(hop(d.trace, "renkei.hub.forward", {"renkei.type": d.meta.type,
                                                             "renkei.sender": d.meta.sender,
                                                             "renkei.recipient": recipient}))


_CARRIED_HEADERS = ("renkei.redrive", "renkei.replay")


def record_headers(raw: Any) -> tuple[tuple[str, bytes], ...]:
    """Kafka headers as faust or aiokafka hand them (a list of pairs, a mapping, or None)."""
    if not raw:
        return ()
    items = raw.items() if hasattr(raw, "items") else raw
    return tuple((str(k), bytes(v or b"")) for k, v in items)




def single_partition_first(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka's default partitioner, minus its pure-Python murmur2 (~40 µs a call) where there is nothing to choose.

    Inboxes, the audit and the rejected topics have one partition; the answer there is the same.
    """
    if len(all_partitions) == 1:
        return all_partitions[0]
    return _DEFAULT_PARTITIONER(key, all_partitions, available)


_DEFAULT_PARTITIONER = DefaultPartitioner()


# -- the worker: what every hub process runs beside its consume loop ----------------------------------


@dataclass
class HubRunning:
    """A started hub: its service, its producer and the background tasks the consume loop needs beside it."""

    service: HubService
    producer: Any
    tasks: dict[str, asyncio.Task[Any]]

    def health(self) -> tuple[str, str]:
        for name, task in self.tasks.items():
            if task.done():
                return "failing", f"the {name} task stopped"
        return "ok", ""

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self.service.close()
        await self.producer.stop()


def hub_metrics(settings: Settings) -> Any:
    """The hub worker's series (``infra.platform.metrics``), its participants known so their labels are kept."""
    from infra.platform.metrics import WorkerMetrics

    metrics = WorkerMetrics("hub", group=f"{settings.kafka.topic_prefix}.hub")
    metrics.know_participants(p.id for p in participants_of(settings))
    return metrics


def hub_metrics_server(settings: Settings, metrics: Any, health: Callable[[], tuple[str, str]],
                       service: Callable[[], HubService | None]) -> Any:
    """``/metrics`` and ``/health`` on ``ops_host``/``ops_port``, with the figures read from the hub's tables at
    each scrape (``infra.platform.metrics_hub``; ``service``: the running ``HubService``, None while starting)."""
    from infra.platform.metrics_hub import HubFigures
    from infra.platform.metrics_server import MetricsServer

    return MetricsServer(metrics, health, state_dir=settings.state_dir, host=settings.ops_host,
                         port=settings.ops_port, collect=HubFigures(metrics).collector(service))


GC_YOUNG_THRESHOLD = 50_000
"""Container allocations (net of frees) before a young collection; Python's default is 700."""


def settle_heap() -> None:
    """Take the hub's start-up objects out of the garbage collector's way, once they are all built.

    Keys, schemas, the policy and the directory live as long as the process: ``gc.freeze()`` leaves
    them out of every later collection.  A batch allocates a few hundred container objects per
    message and keeps them until it is produced; with the default young threshold (700) each of
    them was scanned by two or three collections before reference counting freed it (30–48 µs of
    CPU a message, docs/performance.md "Issue 18, session 8").  With a young generation larger
    than a batch, most of them are freed before any collection sees them; cycles are still
    collected, a little later.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD)


async def start_hub(settings: Settings, metrics: Any) -> HubRunning:
    """Producer, ``HubService``, and the key-directory, lookup-sweep and checkpoint tasks (either loop runs it)."""
    from infra.platform.kafka import producer as make_producer
    from infra.platform.keystore import follow_directory

    prod = make_producer(settings, linger_ms=2, partitioner=single_partition_first)
    await prod.start()
    service = await HubService.create(settings, prod)
    settle_heap()
    directory = service.directory
    metrics.directory_entries.set(len(directory))

    def directory_changed(n: int) -> None:
        metrics.directory_updates.inc(n)
        metrics.directory_entries.set(len(directory))

    tasks = {
        "directory": asyncio.ensure_future(follow_directory(
            settings, directory, on_change=directory_changed, keystore=service.keystore, metrics=metrics)),
        "sweeps": asyncio.ensure_future(service.lookups.run_sweeps()),
        "checkpoints": asyncio.ensure_future(_checkpoints(settings, service, prod, metrics)),
    }
    return HubRunning(service, prod, tasks)


def build_app(settings: Settings) -> Any:
    """The hub as a faust app: one agent over the ingress topic, batches of up to BATCH_MAX.

    Not what the hub worker (``python -m streams.hub_loop``) runs (``streams.hub_loop``, a plain aiokafka loop, costs
    less: docs/performance.md); ``python -m streams.hub_faust`` runs it, for the bench's comparison.
    """
    from streams.app import BATCH_MAX, BATCH_WITHIN_S, make_app

    names = TopicNames(settings.kafka.topic_prefix)
    app = make_app(settings, f"{settings.kafka.topic_prefix}.hub")
    ingress = app.topic(names.ingress, key_type=bytes, value_type=bytes,
                        key_serializer="raw", value_serializer="raw")
    holder: dict[str, HubRunning] = {}
    metrics = hub_metrics(settings)

    def health() -> tuple[str, str]:
        if "hub" not in holder:
            return "starting", "loading keys and connecting to PostgreSQL"
        return holder["hub"].health()

    @app.task
    async def _start_service() -> None:
        await hub_metrics_server(settings, metrics, health,
                                 lambda: holder["hub"].service if "hub" in holder else None).start()
        holder["hub"] = await start_hub(settings, metrics)
        log.info("hub ready: consuming %s", names.ingress)

    @app.agent(ingress)
    async def gateway(stream: Any) -> None:
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            while "hub" not in holder:
                await asyncio.sleep(0.05)
            started = time.monotonic()
            batch = [Inbound(e.message.value, e.message.partition, e.message.offset, e.message.key,
                             record_headers(e.message.headers)) for e in events]
            stats = await holder["hub"].service.process(batch)
            last: dict[Any, int] = {}
            for e in events:
                last[e.message.tp] = max(last.get(e.message.tp, -1), e.message.offset)
            observe_batch(metrics, stats, started, app.consumer, last)

    # No shutdown hook is needed for correctness: every produced message is acknowledged by the
    # broker before its batch is acked, and PostgreSQL transactions are committed or rolled back.
    return app


async def _checkpoints(settings: Settings, service: HubService, producer: Any, metrics: Any) -> None:
    """Signed checkpoints of the provision-record chain heads on the checkpoint topic (infra.records.checkpoint_builder)."""
    from infra.platform.metrics import Counter
    from infra.records.checkpoint_builder import run_checkpoints

    made = metrics.register(Counter("renkei_checkpoints_total", "Hub: provision checkpoints made"))
    left_out = metrics.register(Counter("renkei_checkpoint_heads_left_out_total",
                                        "Hub: moved chain heads left out of a checkpoint as tampered",
                                        labels={"reason": None}))
    refused = metrics.register(Counter("renkei_checkpoints_refused_total",
                                       "Hub: checkpoint rounds refused because the stored state was altered"))

    def on_made(result: Any) -> None:
        if result.checkpoint is not None:
            made.inc()
        for reason, n in result.left_out.items():
            left_out.inc(n, reason=reason)

    await run_checkpoints(settings, service.pool, producer, service.records_key, on_made=on_made,
                          on_refused=lambda _: refused.inc())


def observe_batch(metrics: Any, stats: BatchStats, started: float, consumer: Any, last: dict[Any, int]) -> None:
    """Feed one batch's figures to the worker's metrics (every message finished with the batch);
    ``last``: the batch's last offset per topic-partition."""
    metrics.batch_done(stats.received, started)
    metrics.by_participant(stats.by_sender, stats.by_recipient, started)
    metrics.messages_out.inc(stats.forwarded)
    for reason, n in stats.by_reason.items():
        metrics.reject(reason, n)
    metrics.duplicates.inc(stats.redelivered)
    metrics.provision_records.inc(stats.records)
    metrics.provision_write_seconds.observe(stats.provision_write_s)
    metrics.record_lag(consumer, last)
    if stats.rejected:
        log.info("batch of %d: %d forwarded, %d rejected %s", stats.received, stats.forwarded,
                 stats.rejected, stats.by_reason)
