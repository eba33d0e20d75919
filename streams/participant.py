"""The participant runtime: how a registry, a bank, an agency or the portal joins the bus.

Why this file is long: one runtime class (:class:`ParticipantRuntime`): consume, apply in one transaction with
the idempotency claim, outbox relay — the three share its state.

One runtime serves one or many participant identities (a bank process can
serve 1,000 banks), each with its own keys, inbox topic and token space.
For every message in an identity's inbox it:

1. opens the envelope (``Opener.receive``: verify hub countersignature and origin
   signature, freshness — a ``VerifiedEnvelope`` —, then recipient, who may send this type to this participant —
   ``infra.domain.senders``, so a message "from the hub" that the hub does not
   originate is refused —, decrypt) — a message that does not open is kept in
   ``participant_dead_letters`` with its reason, never dropped;
2. in ONE PostgreSQL transaction per poll: claims the message ids
   (``infra.platform.storage.claim``), runs each handler's effect under its own savepoint,
   and stores every reply sealed in the outbox (one batch signature per identity);
3. after commit, relays the outbox to the ingress topic and marks rows sent.

A redelivered message finds its id claimed and is skipped: redelivery and
replay never duplicate an effect.  Replies wait in the outbox while the
broker is away and go out when it returns (transactional outbox).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from infra.core.errors import Rejection
from infra.core.logs import log_context
from infra.core.retry import Backoff
from infra.core.settings import Settings
from infra.core.tracing import TraceContext, hop, incoming, stored_headers
from infra.crypto.envelope import Message, Opened, Opener, Sealer, peek
from infra.crypto.keys import KeyDirectory
from infra.domain.participants import Participants, participants_of
from infra.platform.keystore import KeyStore, follow_directory, load_directory
from infra.platform.metrics import Counter, WorkerMetrics
from infra.platform.metrics_server import MetricsServer
from infra.platform.pgdsn import participants_dsn
from infra.platform.pgnotify import Listener, notify
from infra.platform.storage import claim_each, create_pool, migrate, migrate_idempotency
from infra.platform.topics import TopicNames
from streams.coalesce import SendCoalescer

log = logging.getLogger("renkei.participant")
# How long stop() lets the consume loop finish its batch and commit before cancelling it.
CONSUME_DRAIN_S = 10.0
DATABASE_RETRY = Backoff(base_s=0.2, cap_s=5.0)  # batch apply and outbox relay wait out a database or broker outage
RELAY_INTERVAL_S = 1.0
"""The outbox relay's pass when nothing woke it: rows of a process that did not notify, a notification missed."""
OUTBOX_CHANNEL = "renkei_outbox"
"""The NOTIFY channel of rows stored in a caller's transaction (payload: the sender); their relays wake at its commit."""

RUNTIME_MIGRATIONS = [
    """
    CREATE TABLE participant_outbox (
        id          bigserial PRIMARY KEY,
        sender      text NOT NULL,
        message_id  uuid NOT NULL UNIQUE,
        type        text NOT NULL,
        kafka_key   bytea,
        envelope    bytea NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now(),
        sent_at     timestamptz
    );
    CREATE INDEX participant_outbox_pending ON participant_outbox (id) WHERE sent_at IS NULL;
    CREATE TABLE participant_dead_letters (
        id          bigserial PRIMARY KEY,
        participant text NOT NULL,
        reason      text NOT NULL,
        detail      text NOT NULL,
        src_topic   text NOT NULL,
        src_partition integer NOT NULL,
        src_offset  bigint NOT NULL,
        envelope    bytea NOT NULL,
        at          timestamptz NOT NULL DEFAULT now(),
        UNIQUE (src_topic, src_partition, src_offset)
    );
    """,
    # The W3C traceparent the row goes out with (infra.core.tracing): transport metadata, never sealed or signed.
    "ALTER TABLE participant_outbox ADD COLUMN traceparent text",
]


class ClaimedInTransaction:
    """The opener's replay guard: the real check is the PostgreSQL claim in the effect's transaction."""

    def check_and_remember(self, message_id: str) -> bool:
        return True


@dataclass
class Context:
    """What a handler sees: the opened message, its transaction, and a way to send replies."""

    me: str
    opened: Opened
    conn: asyncpg.Connection
    participants: Participants
    outgoing: list[Message] = field(default_factory=list)
    trace: TraceContext | None = None  # the trace the opened message came with; replies continue it

    @property
    def meta(self):  # noqa: ANN201 - EnvelopeMeta
        return self.opened.meta

    @property
    def body(self) -> dict:
        return self.opened.body

    def send(self, *, type: str, to: str, subject: str, body: dict, data_item: str | None = None,
             basis: str | None = None, correlation_id: str | None = None, ttl_s: int = 3600,
             procedure: str | None = None, outcome: str | None = None) -> None:
        """Queue a message; it is sealed into the outbox in this handler's transaction."""
        self.outgoing.append(Message(
            body=body, type=type, to=to, subject=subject,
            data_item=data_item or self.meta.data_item, basis=basis or self.meta.legal_basis,
            correlation_id=correlation_id or self.meta.correlation_id, ttl_s=ttl_s,
            procedure=procedure, outcome=outcome,
        ))

    def reply(self, *, type: str, body: dict, **kw: Any) -> None:
        """Answer the sender about the same person, in the same correlation, for the same procedure."""
        kw.setdefault("procedure", self.meta.procedure)
        self.send(type=type, to=self.meta.sender, subject=self.meta.subject, body=body, **kw)


Handler = Callable[[Context], Awaitable[None]]
BatchHandler = Callable[[list[Context]], Awaitable[None]]
"""Several messages of one type at once, under one savepoint: exactly the effects and replies of the type's
:data:`Handler` run on each in turn (the bank simulator answers a poll's lookup legs in a few statements, not a
few per leg). Should it raise, each message is handled alone by the single handler."""
Divert = Callable[[asyncpg.Connection, "list[_Item]"], Awaitable[set[int]]]
"""Called in each batch transaction before the claims; returns the indices of the messages this runtime
must leave alone: not claimed, no effect (another consumer of the same inbox handles them)."""


@dataclass
class Identity:
    participant_id: str
    sealer: Sealer
    opener: Opener
    inbox: str


@dataclass
class _Item:
    """An opened inbox record waiting for its transaction."""

    ident: Identity
    topic: str
    value: bytes
    partition: int
    offset: int
    opened: Opened
    trace: TraceContext | None = None


@dataclass
class _DeadLetter:
    ident: Identity
    topic: str
    partition: int
    offset: int
    value: bytes
    reason: str
    detail: str


class _SealFailed(Exception):
    """A reply of the batch could not be sealed; the batch is redone sealing each message's replies alone."""


def _collect(ctx: Context, outgoing: dict[str, list[Message]], traces: dict[str, list[TraceContext | None]]) -> None:
    """File a handled message's replies under its identity, for the poll's one batch signature per identity."""
    outgoing.setdefault(ctx.me, []).extend(ctx.outgoing)
    traces.setdefault(ctx.me, []).extend([ctx.trace] * len(ctx.outgoing))


class ParticipantRuntime:
    """Inbox → open → (claim + effect + outbox) in one transaction → relay. See the module docstring."""

    def __init__(self, settings: Settings, identities: Iterable[str], handlers: dict[str, Handler], *,
                 group: str, migrations: dict[str, list[str]] | None = None, worker: str = "participant",
                 database: str | None = None, batch_handlers: dict[str, BatchHandler] | None = None) -> None:
        """``database``: the component whose role and schema it works in (infra.platform.pglayout; default: the one
        of the participants it serves, e.g. a bank's own connector; the bank simulator names ``banks``)."""
        self.settings = settings
        self.database = database
        self.identity_ids = list(identities)
        self.handlers = handlers
        self.batch_handlers = batch_handlers or {}  # by type; consecutive messages of it go through it together
        self.group = group
        self.migrations = migrations or {}
        self.names = TopicNames(settings.kafka.topic_prefix)
        self.identities: dict[str, Identity] = {}
        self.by_inbox: dict[str, Identity] = {}
        self.dsn = ""  # the component's, once started (a channel adapter LISTENs with it too)
        self.pool: asyncpg.Pool | None = None
        self.producer: Any = None
        self.consumer: Any = None
        self.directory: KeyDirectory | None = None
        self.participants: Participants = participants_of(settings)
        self._relay_lock = asyncio.Lock()
        self._relay_wakeup = asyncio.Event()
        self._outbox_listener: Listener | None = None
        self.relay_interval_s = RELAY_INTERVAL_S
        self._tasks: list[asyncio.Task[Any]] = []
        self._consume_task: asyncio.Task[Any] | None = None
        self.waiters: dict[tuple[str, str], asyncio.Future[Opened]] = {}
        self._coalescers: dict[str, SendCoalescer[Message, str]] = {}
        self.processed = 0
        self.divert: Divert | None = None  # e.g. the bank simulator parks what a channel connector holds
        self.metrics = WorkerMetrics(worker, group=group)
        # Passes of the two loops, empty ones included: "nothing happened" is a claim only once these
        # have moved on (a test waits for two more polls before checking that nothing arrived).
        self.polls = self.metrics.register(Counter(
            "renkei_consumer_polls_total", "Inbox polls finished by the runtime's own consumer, empty ones included"))
        self.relay_passes = self.metrics.register(Counter(
            "renkei_outbox_relay_passes_total", "Outbox relay passes finished (sent, nothing to send, or failed)"))
        self._metrics_server: MetricsServer | None = None
        self._started = False
        self._stopping = False

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self, *, consume: bool = True) -> None:
        from infra.platform.kafka import consumer, fetch_wait_ms, fetch_whole_assignment, producer

        store = KeyStore.for_settings(self.settings)
        self.directory = await load_directory(self.settings, store.root_public_key())
        self.metrics.directory_entries.set(len(self.directory))
        for pid in self.identity_ids:
            keyset = store.keyset(pid)
            ident = Identity(pid, Sealer(keyset, self.directory),
                             Opener(keyset, self.directory, ClaimedInTransaction(), participants=self.participants),
                             self.names.inbox(pid))
            self.identities[pid] = ident
            self.by_inbox[ident.inbox] = ident
        self.dsn = participants_dsn(self.settings, self.identity_ids, self.participants, self.database)
        self.pool = await create_pool(self.dsn)
        await migrate_idempotency(self.pool)
        await migrate(self.pool, "participant-runtime", RUNTIME_MIGRATIONS)
        for component, steps in self.migrations.items():
            await migrate(self.pool, component, steps)
        # A relay pass sends its rows without a pause in between, so they batch without lingering.
        self.producer = producer(self.settings, linger_ms=0)
        await self.producer.start()
        self._outbox_listener = Listener(self.dsn, OUTBOX_CHANNEL, self._outbox_notified)
        await self._outbox_listener.start()
        self._tasks.append(asyncio.create_task(self._relay_loop(), name=f"{self.group}-relay"))
        # Follow the keys topic: rotated keys work and revoked ones are refused without a restart.
        self._tasks.append(asyncio.create_task(
            follow_directory(self.settings, self.directory, on_change=self._directory_changed, keystore=store,
                             metrics=self.metrics),
            name=f"{self.group}-keys"))
        if consume:
            self.consumer = consumer(self.settings, *self.by_inbox, group_id=self.group,
                                     fetch_max_wait_ms=fetch_wait_ms(self.settings.kafka, len(self.by_inbox)))
            await self.consumer.start()
            fetch_whole_assignment(self.consumer)  # each poll takes every buffered record: no inbox waits out a fetch
            self._consume_task = asyncio.create_task(self._consume_loop(), name=f"{self.group}-consume")
            self._tasks.append(self._consume_task)
        self._started = True

    def _outbox_notified(self, sender: str | None) -> None:
        if sender is None or sender in self.identities:  # None: the listener reconnected, something may be waiting
            self._relay_wakeup.set()

    def _directory_changed(self, n: int) -> None:
        assert self.directory is not None
        self.metrics.directory_updates.inc(n)
        self.metrics.directory_entries.set(len(self.directory))

    async def serve_metrics(self) -> str:
        """Serve ``/metrics`` and ``/health`` on the settings' ``ops_host``/``ops_port`` (infra.platform.metrics); returns
        the URL."""
        self._metrics_server = MetricsServer(self.metrics, self.health, state_dir=self.settings.state_dir,
                                             host=self.settings.ops_host, port=self.settings.ops_port)
        return await self._metrics_server.start()

    def health(self) -> tuple[str, str]:
        if not self._started:
            return "starting", "loading keys and connecting"
        stopped = [t.get_name() for t in self._tasks if t.done()]
        if stopped:
            return "failing", f"stopped: {', '.join(stopped)}"
        return "ok", ""

    async def stop(self) -> None:
        # The flag, not only cancel(): asyncio.wait_for in 3.11 can swallow a cancellation that
        # races with its inner future, which would leave a loop running for ever.
        self._stopping = True
        self._relay_wakeup.set()
        # The consume loop ends on the flag after its batch: cancelled inside consumer.commit(), aiokafka's
        # shielded commit would run on alone and, failing once the consumer or the broker is gone, print
        # "Task exception was never retrieved". Cancelled only if the batch outlasts the wait.
        if self._consume_task is not None:
            await asyncio.wait([self._consume_task], timeout=CONSUME_DRAIN_S)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        self._tasks.clear()
        if self._metrics_server is not None:
            await self._metrics_server.stop()
        if self._outbox_listener is not None:
            await self._outbox_listener.stop()
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        if self.pool is not None:
            await self.pool.close()

    async def __aenter__(self) -> ParticipantRuntime:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # -- consuming ---------------------------------------------------------------------------------
    async def _consume_loop(self) -> None:
        while not self._stopping:
            batches = await self.consumer.getmany(timeout_ms=200, max_records=500)
            if batches:
                await self.handle_batch([(tp.topic, r.value, r.partition, r.offset, r.headers)
                                         for tp, records in batches.items() for r in records])
                await self.consumer.commit()  # only after every effect of the batch is committed
                self.metrics.record_lag(self.consumer, {tp: records[-1].offset for tp, records in batches.items()})
            self.polls.inc()  # counted once the poll's effects are committed

    async def handle_records(self, topic: str, records: list[tuple[Any, ...]]) -> None:
        """``(value, partition, offset[, headers])`` records of one inbox topic: see :meth:`handle_batch`."""
        await self.handle_batch([(topic, *record) for record in records])

    async def handle_batch(self, records: list[tuple[Any, ...]]) -> None:
        """Open every ``(topic, value, partition, offset[, headers])``, then apply them all in ONE transaction.

        The Kafka headers, where given, carry the record's trace context: replies continue its trace.

        One commit per poll, not one per message (a commit is an fsync): each message's effect
        still runs under its own savepoint, so a handler that refuses or fails dead-letters only
        its own message, and the claims, effects, replies and dead letters commit together.
        """
        started = time.monotonic()
        items: list[_Item] = []
        dead: list[_DeadLetter] = []
        for topic, value, partition, offset, *headers in records:
            ident = self.by_inbox[topic]
            try:
                items.append(_Item(ident, topic, value, partition, offset, ident.opener.receive(value),
                                   incoming(headers[0]) if headers else None))
            except Rejection as exc:
                dead.append(_DeadLetter(ident, topic, partition, offset, value, exc.code, exc.message))
        failures, seal_each = 0, False
        while True:
            try:
                await self._apply(items, dead, seal_each=seal_each)
                break
            except _SealFailed:  # sealing one reply failed: redo the batch sealing each message's replies alone
                seal_each = True
            except (asyncpg.PostgresConnectionError, OSError, asyncio.TimeoutError) as exc:
                failures += 1
                delay = DATABASE_RETRY.delay(failures)
                log.error("%s: database unavailable (%s); retrying in %.1f s", self.group, type(exc).__name__, delay)
                await asyncio.sleep(delay)
        self.processed += len(items)
        self.metrics.batch_done(len(records), started)
        for item in items:
            waiter = self.waiters.pop((item.ident.participant_id, item.opened.meta.correlation_id), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(item.opened)
        self._relay_wakeup.set()

    async def _apply(self, items: list[_Item], refused: list[_DeadLetter], *, seal_each: bool) -> None:
        assert self.pool is not None
        dead = list(refused)
        duplicates = 0
        async with self.pool.acquire() as conn, conn.transaction():
            if self.divert is not None and items:  # decided in the effect's transaction, before any claim
                diverted = await self.divert(conn, items)
                items = [item for n, item in enumerate(items) if n not in diverted]
            # Every identity's claims in one statement (a bank process serves 1,000 identities).
            fresh = await claim_each(conn, [(item.ident.participant_id, uuid.UUID(item.opened.meta.message_id))
                                            for item in items])
            outgoing: dict[str, list[Message]] = {}
            traces: dict[str, list[TraceContext | None]] = {}
            todo: list[_Item] = []
            for item in items:
                key = (item.ident.participant_id, uuid.UUID(item.opened.meta.message_id))
                if key not in fresh:
                    duplicates += 1
                    continue  # already processed (redelivery, replay, or twice in this poll): no second effect
                fresh.discard(key)
                todo.append(item)
            for run in self._runs(todo, seal_each):
                if len(run) > 1 and await self._apply_together(conn, run, outgoing, traces):
                    continue
                for item in run:
                    await self._apply_one(conn, item, seal_each, dead, outgoing, traces)
            try:  # one batch signature per identity per poll, every identity's rows in one insert
                await self._insert_outbox(conn, [row for pid, messages in outgoing.items()
                                                 for row in self._seal_rows(self.identities[pid], messages, traces[pid])])
            except (asyncpg.PostgresConnectionError, OSError, asyncio.TimeoutError):
                raise
            except Exception as exc:
                raise _SealFailed from exc
            if dead:
                await conn.executemany(
                    "INSERT INTO participant_dead_letters (participant, reason, detail, src_topic, src_partition, "
                    "src_offset, envelope) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                    [(d.ident.participant_id, d.reason, d.detail, d.topic, d.partition, d.offset, d.value)
                     for d in dead])
        self.metrics.duplicates.inc(duplicates)
        for d in dead:
            log.warning("%s: message at %s[%d]@%d refused: %s", d.ident.participant_id, d.topic, d.partition,
                        d.offset, d.reason, extra={"participant": d.ident.participant_id, "reason": d.reason})
            self.metrics.reject(d.reason)

    async def _apply_one(self, conn: asyncpg.Connection, item: _Item, seal_each: bool, dead: list[_DeadLetter],
                         outgoing: dict[str, list[Message]], traces: dict[str, list[TraceContext | None]]) -> None:
        """One message's effect under its own savepoint; a refusal or a handler bug dead-letters it alone."""
        ident, opened = item.ident, item.opened
        handler = self.handlers.get(opened.meta.type)
        ctx = Context(ident.participant_id, opened, conn, self.participants, trace=item.trace)
        try:
            async with conn.transaction():  # a savepoint: this message's effect alone
                if handler is not None:
                    with log_context(participant=ident.participant_id, message_id=opened.meta.message_id,
                                     correlation_id=opened.meta.correlation_id,
                                     trace_id=item.trace.trace_id if item.trace else ""):
                        await handler(ctx)
                if seal_each:
                    await self._store_outgoing(conn, ident, ctx.outgoing, [ctx.trace] * len(ctx.outgoing))
        except Rejection as exc:  # the handler refused the content: keep it, move on
            dead.append(_DeadLetter(ident, item.topic, item.partition, item.offset, item.value,
                                    exc.code, exc.message))
            return
        except (asyncpg.PostgresConnectionError, OSError, asyncio.TimeoutError):
            raise
        except Exception as exc:  # a handler bug must not stall the inbox: keep the message, move on
            log.exception("%s: handler for %s failed", ident.participant_id, opened.meta.type)
            dead.append(_DeadLetter(ident, item.topic, item.partition, item.offset, item.value,
                                    "INTERNAL_ERROR", f"handler raised {type(exc).__name__}"))
            return
        if not seal_each:
            _collect(ctx, outgoing, traces)

    def _runs(self, items: list[_Item], seal_each: bool) -> list[list[_Item]]:
        """Consecutive messages of one type with a batch handler go together (the order of effects is kept);
        every other message alone."""
        runs: list[list[_Item]] = []
        for item in items:
            type_ = item.opened.meta.type
            if not seal_each and type_ in self.batch_handlers and runs and runs[-1][0].opened.meta.type == type_:
                runs[-1].append(item)
            else:
                runs.append([item])
        return runs

    async def _apply_together(self, conn: asyncpg.Connection, run: list[_Item], outgoing: dict[str, list[Message]],
                              traces: dict[str, list[TraceContext | None]]) -> bool:
        """``run``'s effects by its type's batch handler under one savepoint; False, and none of them, if it raised
        (the caller then handles each message alone, so a refusal or a bug dead-letters only its own message)."""
        ctxs = [Context(i.ident.participant_id, i.opened, conn, self.participants, trace=i.trace) for i in run]
        try:
            async with conn.transaction():
                await self.batch_handlers[run[0].opened.meta.type](ctxs)
        except (asyncpg.PostgresConnectionError, OSError, asyncio.TimeoutError):
            raise
        except Rejection:  # one of them is refused: found, and dead-lettered, one by one
            return False
        except Exception as exc:  # a bug in the batch handler must not cost the messages their effects
            log.warning("%s: batch handler for %s failed (%s); handling each message alone", self.group,
                        run[0].opened.meta.type, type(exc).__name__)
            return False
        for ctx in ctxs:
            _collect(ctx, outgoing, traces)
        return True

    # -- sending -----------------------------------------------------------------------------------
    async def _store_outgoing(self, conn: asyncpg.Connection, ident: Identity, messages: list[Message],
                              traces: list[TraceContext | None] | None = None) -> list[str]:
        """Seal ``messages`` into the outbox; each continues its trace in ``traces`` (``None``: a new trace)."""
        rows = self._seal_rows(ident, messages, traces)
        await self._insert_outbox(conn, rows)
        return [str(r[1]) for r in rows]

    @staticmethod
    def _seal_rows(ident: Identity, messages: list[Message],
                   traces: list[TraceContext | None] | None = None) -> list[tuple[Any, ...]]:
        """``messages`` sealed by ``ident`` in one batch signature, as outbox rows."""
        if not messages:
            return []
        envelopes = ident.sealer.seal_batch(messages)
        rows = []
        for m, env, parent in zip(messages, envelopes, traces or [None] * len(messages), strict=True):
            meta = peek(env)
            trace = hop(parent, "renkei.participant.send", {"renkei.participant": ident.participant_id,
                                                            "renkei.type": m.type})
            rows.append((ident.participant_id, uuid.UUID(meta.message_id), m.type, m.subject.encode(), env,
                         trace.header))
        return rows

    @staticmethod
    async def _insert_outbox(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            await conn.executemany(
                "INSERT INTO participant_outbox (sender, message_id, type, kafka_key, envelope, traceparent) "
                "VALUES ($1, $2, $3, $4, $5, $6)", rows)

    async def send(self, sender: str, messages: list[Message], *, conn: asyncpg.Connection | None = None) -> list[str]:
        """Seal ``messages`` from ``sender`` into the outbox (in ``conn``'s transaction if given) and relay.

        Without ``conn``, sends of ``sender`` that overlap share one transaction and one batch signature
        (:class:`streams.coalesce.SendCoalescer`); each caller gets its own messages' ids."""
        assert self.pool is not None
        ident = self.identities[sender]
        if conn is not None:
            ids = await self._store_outgoing(conn, ident, messages)
            # Visible at the caller's commit, which only PostgreSQL sees: the relays wake then (a wake-up now
            # would find nothing and leave the rows to the next timer pass).
            await notify(conn, OUTBOX_CHANNEL, sender)
            return ids
        # Concurrent sends of one sender share a transaction and a batch signature (streams.coalesce).
        coalescer = self._coalescers.get(sender)
        if coalescer is None:
            # Bound to the sender, not to today's Identity: a rotated keyset seals the very next store.
            coalescer = self._coalescers[sender] = SendCoalescer(functools.partial(self._store_alone, sender))
        ids = await coalescer.submit(messages)
        self._relay_wakeup.set()  # committed: this process's relay sends them now
        return ids

    def wake_relay(self) -> None:
        """Run an outbox relay pass now (rows this process cannot know of: another writer's, after an outage)."""
        self._relay_wakeup.set()

    def send_stores(self, sender: str) -> int:
        """How many transactions ``send`` (without ``conn``) used for ``sender`` so far (benchmarks/client_send_bench.py)."""
        coalescer = self._coalescers.get(sender)
        return coalescer.stores if coalescer is not None else 0

    async def _store_alone(self, sender: str, messages: list[Message]) -> list[str]:
        assert self.pool is not None
        async with self.pool.acquire() as c, c.transaction():
            return await self._store_outgoing(c, self.identities[sender], messages)

    async def request(self, sender: str, message: Message, *, timeout: float = 30.0) -> Opened:
        """Send one message and wait for the first message in ``sender``'s inbox with the same correlation."""
        correlation = message.correlation_id or str(uuid.uuid4())
        message = dataclasses.replace(message, correlation_id=correlation)
        future: asyncio.Future[Opened] = asyncio.get_running_loop().create_future()
        self.waiters[(sender, correlation)] = future
        await self.send(sender, [message])
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self.waiters.pop((sender, correlation), None)

    async def relay_once(self, limit: int = 500) -> int:
        """Send this runtime's pending outbox rows to the ingress topic; mark them sent after the broker acks.

        Rows are locked (SKIP LOCKED) while in flight, so two relays of the same identities never
        send a row twice; a crash before the mark re-sends it (the hub then dead-letters the copy
        as REPLAYED — no effect is duplicated).
        """
        assert self.pool is not None
        async with self._relay_lock, self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, kafka_key, envelope, traceparent FROM participant_outbox WHERE sent_at IS NULL "
                "AND sender = ANY($2::text[]) ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                limit, list(self.identities))
            if not rows:
                return 0
            futures = [await self.producer.send(self.names.ingress, r["envelope"], key=r["kafka_key"],
                                                headers=stored_headers(r["traceparent"])) for r in rows]
            await asyncio.gather(*futures)
            await conn.execute("UPDATE participant_outbox SET sent_at = now() WHERE id = ANY($1::bigint[])",
                               [r["id"] for r in rows])
            self.metrics.messages_out.inc(len(rows))
            return len(rows)

    async def _relay_loop(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                await asyncio.wait_for(self._relay_wakeup.wait(), self.relay_interval_s)
            except asyncio.TimeoutError:
                pass
            if self._stopping:
                return
            self._relay_wakeup.clear()
            failed: Exception | None = None
            try:
                while await self.relay_once() > 0:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker or database away: rows wait in the outbox
                failed = exc
            self.relay_passes.inc()
            if failed is None:
                failures = 0
                continue
            failures += 1
            delay = DATABASE_RETRY.delay(failures)
            log.warning("outbox relay failed (%s); retrying in %.1f s", type(failed).__name__, delay)
            await asyncio.sleep(delay)

