"""The connector runtime: one runner for every channel bridge (agency, bank files, bank HTTP, portal).

Why this file is long: the one runner every channel bridge shares (outbox, retries, dead letters, redrive,
health); :class:`ConnectorRuntime` is one state machine and reads best whole.

In the spirit of Kafka Connect, offsets, retries, dead letters, health and
metrics belong here; a channel adapter (:class:`ChannelAdapter`) is only the
channel.  It is built ON :class:`streams.participant.ParticipantRuntime`, which
already owns the inbox → open → claim + effect + outbox → relay path:

Source side (channel → bus)
    An adapter reads its channel and calls :meth:`ConnectorRuntime.publish`
    inside ONE PostgreSQL transaction that also records the channel position
    (an outbox row marked, a file's digest, an idempotency key).  ``publish``
    claims the item's *source key* in ``connector_source_log`` and seals the
    messages into the participant outbox: a source item is published once,
    and its position is committed only with the durable outbox row.  The
    participant runtime's relay sends the outbox to the broker when it is
    reachable; while it is not, rows wait (``sent_at IS NULL``).

Sink side (bus → channel)
    A handler (run by the participant runtime in the message's claim
    transaction) either makes its effect in PostgreSQL directly, or calls
    :meth:`ConnectorRuntime.enqueue` to store a *delivery*.  The Kafka offset
    is committed by the participant runtime only after that transaction, so
    the delivery is durable before the offset moves.  A delivery loop per
    adapter hands due deliveries to :meth:`ChannelAdapter.deliver`, with
    bounded retries and exponential backoff; a permanent failure or the last
    attempt dead-letters it (``connector_dead_letters``, with its reason).
    A delivery that is a question to the channel (an existence check) stays
    ``DELIVERED`` until :meth:`ConnectorRuntime.answer` sends the reply.

Health (``/health``) and Prometheus metrics (``/metrics``) are the platform's
one system (:mod:`infra.platform.metrics`): the connector's series
(:class:`ConnectorMetrics`) are registered in the participant runtime's
``WorkerMetrics`` and served, with the common ``renkei_*`` worker series, by a
``MetricsServer`` (on the settings' ``ops_host``/``ops_port`` unless the caller
names its own; port 0: a free one; the endpoint is published under the state folder).  Nothing personal is ever
logged, counted or put in a dead letter's detail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from infra.core.errors import Reason, Rejection
from infra.core.retry import Backoff
from infra.core.settings import Settings
from infra.crypto.envelope import Message, Opened
from infra.crypto.sealing import RowSealer, UnsealError
from infra.platform.keystore import KeyStore
from infra.platform.metrics import REASON_CODES, Counter, Gauge, WorkerMetrics
from infra.platform.metrics_server import MetricsServer
from schemas.types import MESSAGE_TYPES
from streams.client import obtain_token
from streams.participant import Context, Handler, ParticipantRuntime

log = logging.getLogger("renkei.connector")

CONNECTOR_MIGRATIONS = [
    """
    CREATE TABLE connector_source_log (
        connector   text NOT NULL,
        source_key  text NOT NULL,
        message_ids uuid[] NOT NULL,
        at          timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (connector, source_key)
    );
    CREATE TABLE connector_deliveries (
        id             bigserial PRIMARY KEY,
        connector      text NOT NULL,
        participant    text NOT NULL,
        message_id     uuid NOT NULL,
        correlation_id uuid NOT NULL,
        type           text NOT NULL,
        reply_to       text NOT NULL,
        subject        text NOT NULL,
        data_item      text NOT NULL,
        basis          text NOT NULL,
        payload        jsonb NOT NULL,
        status         text NOT NULL DEFAULT 'PENDING'
                       CHECK (status IN ('PENDING', 'DELIVERED', 'ANSWERED', 'DEAD')),
        attempts       integer NOT NULL DEFAULT 0,
        next_attempt_at timestamptz NOT NULL DEFAULT now(),
        last_error     text,
        created_at     timestamptz NOT NULL DEFAULT now(),
        delivered_at   timestamptz,
        UNIQUE (connector, message_id)
    );
    CREATE INDEX connector_deliveries_due ON connector_deliveries (connector, next_attempt_at)
        WHERE status = 'PENDING';
    CREATE TABLE connector_dead_letters (
        id          bigserial PRIMARY KEY,
        connector   text NOT NULL,
        direction   text NOT NULL CHECK (direction IN ('source', 'sink')),
        ref         text NOT NULL,
        reason      text NOT NULL,
        detail      text NOT NULL,
        at          timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE connector_person_tokens (
        participant text NOT NULL,
        local_id    text NOT NULL,
        token       text NOT NULL,
        enrolled_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (participant, local_id)
    );
    """,
    # Re-drive (renkei connector dlq): a dead letter names its delivery, is closed when re-driven, and
    # every re-drive is kept (who, when, why, the ops audit event) — the history is never overwritten.
    """
    ALTER TABLE connector_dead_letters ADD COLUMN delivery_id bigint REFERENCES connector_deliveries (id),
        ADD COLUMN redriven_at timestamptz;
    CREATE INDEX connector_dead_letters_open ON connector_dead_letters (connector, id) WHERE redriven_at IS NULL;
    CREATE TABLE connector_redrives (
        id             bigserial PRIMARY KEY,
        dead_letter_id bigint NOT NULL REFERENCES connector_dead_letters (id),
        connector      text NOT NULL,
        who            text NOT NULL,
        reason         text NOT NULL,
        ops_event      uuid NOT NULL,
        outcome        text NOT NULL,
        at             timestamptz NOT NULL DEFAULT now()
    );
    """,
    # Personal data at rest: a delivery's payload (an account, a holder's name, the person's local id) is
    # sealed under its participant's data key, bound to the row (infra.crypto.sealing), in payload_ct; the plain
    # column keeps only rows written before, until the runtime's start seals them (seal_legacy_deliveries).
    """
    ALTER TABLE connector_deliveries ALTER COLUMN payload DROP NOT NULL, ADD COLUMN payload_ct bytea;
    """,
]


class NotRedrivable(Exception):
    """A dead letter that cannot be re-driven; the message says why and what to do (safe to print)."""


class TransientError(Exception):
    """The channel is unavailable for now (timeout, 5xx, disk full): retry with backoff.

    The message must be safe to log: no personal data.
    """


@dataclass(frozen=True)
class Answered:
    """A delivery outcome for synchronous channels: delivered, and the channel already answered."""

    type: str
    body: dict = field(repr=False)


@dataclass(frozen=True)
class RetryPolicy(Backoff):
    """Bounded retries with backoff and jitter: attempt n waits up to min(base * 2**(n-1), cap) seconds."""

    base_s: float = 0.5
    cap_s: float = 30.0
    max_attempts: int = 5


@dataclass(frozen=True)
class Delivery:
    """A message waiting to be handed to the channel (one row of ``connector_deliveries``)."""

    id: int
    participant: str
    message_id: str
    correlation_id: str
    type: str
    reply_to: str
    subject: str = field(repr=False)
    data_item: str
    basis: str
    payload: dict = field(repr=False)
    attempts: int


class ChannelAdapter:
    """Base of a channel adapter: override what the channel needs, nothing else.

    - ``name``: stable connector name (metrics label, dead letters, source log).
    - :meth:`handlers`: message type → handler for messages arriving in the inbox.
    - :meth:`poll`: one source pass (read the channel, :meth:`ConnectorRuntime.publish`).
    - :meth:`deliver`: hand deliveries to the channel; return ``{id: None | error}``.
    - :meth:`start` / :meth:`stop`: open and close the channel (servers, folders).
    - :meth:`redrive_source`: put a dead-lettered source item back (``renkei connector dlq redrive``).
    """

    name: str = "adapter"
    migrations: list[str] = []
    poll_interval_s: float = 0.5
    retry: RetryPolicy = RetryPolicy()

    def handlers(self) -> dict[str, Handler]:
        return {}

    async def start(self, runtime: ConnectorRuntime) -> None:
        self.runtime = runtime

    async def stop(self) -> None:
        return None

    async def poll(self) -> None:
        return None

    async def deliver(self, deliveries: Sequence[Delivery]) -> dict[int, Exception | Answered | None]:
        raise NotImplementedError(f"{self.name} has no sink side")

    @classmethod
    async def redrive_source(cls, conn: asyncpg.Connection, ref: str) -> None:
        """Make the source item ``ref`` of a source-side dead letter pending again, in ``conn``'s transaction.

        Called by the ops tool, not by a running adapter (the next source pass takes the item).
        Raise :class:`NotRedrivable` saying what to do instead when the channel cannot take it back.
        """
        raise NotRedrivable(f"{cls.name} has no re-drive for source items")

    @property
    def has_source(self) -> bool:
        return type(self).poll is not ChannelAdapter.poll

    @property
    def has_sink(self) -> bool:
        return type(self).deliver is not ChannelAdapter.deliver


CONNECTOR_REASONS = frozenset({
    "CHANNEL_UNAVAILABLE", "CHANNEL_ERROR",  # sink: the channel did not take a delivery
    "NOT_ENROLLED", "UNSUPPORTED_ITEM",  # agency outbox rows
    "COUNT_MISMATCH", "NOT_THIS_BANK", "UNKNOWN_KIND", "UNKNOWN_REFERENCE", "DUPLICATE",  # bank files
})
"""Connector reason codes besides the platform's (``infra.core.errors.Reason``); others are counted as OTHER."""

OUTBOX_STUCK_S = 30.0
"""Health fails when the oldest sealed message has waited longer than this for the broker."""


class ConnectorMetrics:
    """The connector runtime's series, registered in the participant runtime's :class:`WorkerMetrics`.

    Labels take closed sets only: the runtime's adapter names, the catalogue's message types,
    reason codes, ``source``/``sink``; the lag gauge's topic and partition come from the
    consumer's own assignment.  Names are listed in docs/connectors.md (alerts use them).
    """

    def __init__(self, worker: WorkerMetrics, connectors: Iterable[str]) -> None:
        c = {"connector": frozenset(connectors)}
        ct = {**c, "type": MESSAGE_TYPES}
        add = worker.register
        self.up = add(Gauge("renkei_connector_up", "1 when the runtime is healthy, 0 when failing or stopping"))
        self.outbox_pending = add(Gauge("renkei_connector_outbox_pending", "Sealed messages waiting for the broker"))
        self.outbox_oldest = add(Gauge("renkei_connector_outbox_oldest_seconds",
                                       "Age of the oldest message waiting for the broker"))
        self.consumer_lag = add(Gauge("renkei_connector_consumer_lag",
                                      "Inbox records not yet consumed (fetch high watermark - position), at scrape",
                                      labels={"topic": None, "partition": None}))
        self.deliveries_pending = add(Gauge("renkei_connector_deliveries_pending",
                                            "Deliveries waiting for the channel", labels=c))
        self.dead_letters_open = add(Gauge("renkei_connector_dead_letters_open",
                                           "Dead letters not re-driven (renkei connector dlq)", labels=c))
        self.inbox_processed = add(Counter("renkei_connector_inbox_processed_total",
                                           "Inbox messages handled by the participant runtime"))
        self.published = add(Counter("renkei_connector_published_total", "Messages published from the channel",
                                     labels=ct))
        self.received = add(Counter("renkei_connector_received_total",
                                    "Messages received from the bus and handled", labels=ct))
        self.delivered = add(Counter("renkei_connector_delivered_total", "Deliveries handed to the channel",
                                     labels=ct))
        self.retries = add(Counter("renkei_connector_retries_total",
                                   "Delivery attempts that failed and will be retried", labels=ct))
        self.answered = add(Counter("renkei_connector_answered_total", "Channel answers sent back to the bus",
                                    labels=ct))
        self.dead_letters = add(Counter(
            "renkei_connector_dead_letters_total", "Items dead-lettered, by reason",
            labels={**c, "direction": frozenset({"source", "sink"}), "reason": REASON_CODES | CONNECTOR_REASONS}))
        self.source_errors = add(Counter("renkei_connector_source_errors_total", "Failed source passes (retried)",
                                         labels=c))
        self.source_duplicates = add(Counter("renkei_connector_source_duplicates_total",
                                             "Source items seen again and not published twice", labels=c))
        # Passes of the adapter loops, empty ones included: "nothing was read" is a claim only once they moved on.
        self.source_passes = add(Counter("renkei_connector_source_passes_total",
                                         "Source passes finished (empty and failed ones included)", labels=c))
        self.sink_passes = add(Counter("renkei_connector_sink_passes_total",
                                       "Sink passes finished (empty and failed ones included)", labels=c))
        self.unanswered = add(Counter("renkei_connector_unanswered_total",
                                      "Items reported without an answer because their deadline passed", labels=c))
        self.late_answers = add(Counter("renkei_connector_late_answers_total",
                                        "Answers that came after their deadline (reported separately)", labels=c))


class ConnectorRuntime:
    """Runs channel adapters for one or more participant identities. See the module docstring."""

    def __init__(self, settings: Settings, identities: Iterable[str], adapters: Sequence[ChannelAdapter], *,
                 group: str, ops_port: int | None = None, ops_host: str | None = None,
                 worker: str | None = None) -> None:
        """``ops_host``/``ops_port``: where ``/health`` and ``/metrics`` listen (None: the settings'
        ``ops_host``/``ops_port``; port 0: a free one);
        ``worker``: the ``worker`` label of every series (default ``connector-<adapter names>``)."""
        self.settings = settings
        self.adapters = list(adapters)
        handlers: dict[str, Handler] = {}
        migrations: dict[str, list[str]] = {"connector-runtime": CONNECTOR_MIGRATIONS}
        for adapter in self.adapters:
            for type_, handler in adapter.handlers().items():
                if type_ in handlers:
                    raise ValueError(f"two adapters handle {type_}")
                handlers[type_] = self._counted(adapter.name, type_, handler)
            if adapter.migrations:
                migrations[f"connector-{adapter.name}"] = adapter.migrations
        worker = worker or "connector-" + "-".join(a.name for a in self.adapters)
        self.runtime = ParticipantRuntime(settings, identities, handlers, group=group, migrations=migrations,
                                          worker=worker)
        self.metrics = ConnectorMetrics(self.runtime.metrics, (a.name for a in self.adapters))
        self.ops = MetricsServer(self.runtime.metrics, self._health, state_dir=settings.state_dir,
                                 host=ops_host or settings.ops_host,
                                 port=settings.ops_port if ops_port is None else ops_port,
                                 collect=self._collect, details=self._details)
        self._figures: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = asyncio.Event()
        self._wakeups: dict[str, asyncio.Event] = {a.name: asyncio.Event() for a in self.adapters}
        self.started_at = time.time()
        self.sealer = RowSealer(KeyStore.for_settings(settings).data_key, "connector_deliveries")

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.runtime.start()
        await self.seal_legacy_deliveries()
        for adapter in self.adapters:
            await adapter.start(self)
        for adapter in self.adapters:
            if adapter.has_source:
                self._tasks.append(asyncio.create_task(self._source_loop(adapter), name=f"{adapter.name}-source"))
            if adapter.has_sink:
                self._tasks.append(asyncio.create_task(self._sink_loop(adapter), name=f"{adapter.name}-sink"))
        await self.ops.start()

    async def stop(self, *, drain_timeout_s: float = 5.0) -> None:
        """Graceful: finish the pass in flight, flush the outbox (bounded), then close everything."""
        self._stopping.set()
        for event in self._wakeups.values():
            event.set()
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=drain_timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()
        for adapter in reversed(self.adapters):
            try:
                await adapter.stop()
            except Exception:  # noqa: BLE001 - one adapter failing to close must not keep the others open
                log.exception("%s: stop failed", adapter.name)
        try:
            await asyncio.wait_for(self.flush(), drain_timeout_s)
        except (asyncio.TimeoutError, Exception) as exc:  # broker away: the rows stay for the next start
            log.warning("outbox not flushed on stop (%s); rows wait for the next start", type(exc).__name__)
        await self.ops.stop()
        await self.runtime.stop()

    async def __aenter__(self) -> ConnectorRuntime:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @property
    def ops_url(self) -> str | None:
        """Base URL of ``/health`` and ``/metrics`` once started."""
        return self.ops.endpoint or None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self.runtime.pool is not None, "start the connector runtime first"
        return self.runtime.pool

    def wake(self, adapter_name: str) -> None:
        """Run the adapter's source and sink passes now instead of at the next interval."""
        self._wakeups[adapter_name].set()

    async def flush(self) -> int:
        """Relay every pending outbox row now (used by graceful stop and by tests)."""
        total = 0
        while (n := await self.runtime.relay_once()) > 0:
            total += n
        return total

    # -- source side ------------------------------------------------------------------------------
    async def publish(self, conn: asyncpg.Connection, adapter: ChannelAdapter, sender: str, source_key: str,
                      messages: Sequence[Message]) -> list[str] | None:
        """Publish ``messages`` for one source item, at most once per ``source_key``.

        Must run in the caller's transaction, which also commits the channel position.
        Returns the message ids, or ``None`` when the item was published before.
        """
        if not conn.is_in_transaction():
            raise RuntimeError("publish must run inside the caller's transaction")
        claimed = await conn.fetchval(
            "INSERT INTO connector_source_log (connector, source_key, message_ids) VALUES ($1, $2, '{}') "
            "ON CONFLICT DO NOTHING RETURNING source_key", adapter.name, source_key)
        if claimed is None:
            self.metrics.source_duplicates.inc(connector=adapter.name)
            return None
        ids = await self.runtime.send(sender, list(messages), conn=conn) if messages else []
        await conn.execute("UPDATE connector_source_log SET message_ids = $3::uuid[] WHERE connector = $1 "
                           "AND source_key = $2", adapter.name, source_key, ids)
        for m in messages:
            self.metrics.published.inc(connector=adapter.name, type=m.type)
        return ids

    async def dead_letter(self, adapter: ChannelAdapter, direction: str, ref: str, reason: str, detail: str,
                          conn: asyncpg.Connection | None = None, *, delivery_id: int | None = None) -> None:
        """Keep a refused item with its reason. ``ref`` and ``detail`` must not carry personal data."""
        log.warning("%s: %s item %s dead-lettered: %s", adapter.name, direction, ref, reason)
        await (conn or self.pool).execute(
            "INSERT INTO connector_dead_letters (connector, direction, ref, reason, detail, delivery_id) "
            "VALUES ($1, $2, $3, $4, $5, $6)", adapter.name, direction, ref, reason, detail, delivery_id)
        self.metrics.dead_letters.inc(connector=adapter.name, direction=direction, reason=reason)

    async def _source_loop(self, adapter: ChannelAdapter) -> None:
        failures = 0
        wakeup = self._wakeups[adapter.name]
        while not self._stopping.is_set():
            try:
                await adapter.poll()
                failures = 0
                delay = adapter.poll_interval_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # channel or database away: the item stays where it is
                failures += 1
                delay = adapter.retry.delay(failures)
                log.warning("%s: source pass failed (%s); retrying in %.1f s", adapter.name, type(exc).__name__, delay)
                self.metrics.source_errors.inc(connector=adapter.name)
            self.metrics.source_passes.inc(connector=adapter.name)
            try:
                await asyncio.wait_for(wakeup.wait(), delay)
            except asyncio.TimeoutError:
                pass
            wakeup.clear()

    # -- sink side --------------------------------------------------------------------------------
    def _delivery(self, r: asyncpg.Record, *, payload: bool = True) -> Delivery:
        """A row as a :class:`Delivery`, its payload opened (``payload=False``: the routing columns only)."""
        value: dict = {}
        if payload and r["payload_ct"] is not None:
            value = self.sealer.open(r["participant"], delivery_row_id(r["connector"], str(r["message_id"])),
                                     r["subject"], r["payload_ct"])
        elif payload and r["payload"] is not None:  # written before payloads were sealed, not yet sealed
            value = json.loads(r["payload"]) if isinstance(r["payload"], str) else dict(r["payload"])
        return Delivery(id=r["id"], participant=r["participant"], message_id=str(r["message_id"]),
                        correlation_id=str(r["correlation_id"]), type=r["type"], reply_to=r["reply_to"],
                        subject=r["subject"], data_item=r["data_item"], basis=r["basis"], payload=value,
                        attempts=r["attempts"])

    async def seal_legacy_deliveries(self) -> int:
        """Seal the plain payloads of this runtime's rows written before sealing existed (run at start); how many.

        A cleared payload (``{}``, an answered row) becomes NULL; the re-drive check reads both as cleared."""
        sealed = 0
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, connector, participant, message_id, subject, payload FROM connector_deliveries "
                "WHERE payload IS NOT NULL AND participant = ANY($1::text[]) FOR UPDATE",
                list(self.runtime.identities))
            for r in rows:
                value = json.loads(r["payload"]) if isinstance(r["payload"], str) else dict(r["payload"])
                ct = self.sealer.seal(r["participant"], delivery_row_id(r["connector"], str(r["message_id"])),
                                      r["subject"], value) if value else None
                await conn.execute("UPDATE connector_deliveries SET payload = NULL, payload_ct = $2 WHERE id = $1",
                                   r["id"], ct)
                sealed += ct is not None
        if sealed:
            log.info("sealed %d delivery payloads written before sealing", sealed)
        return sealed

    async def enqueue(self, ctx: Context, adapter: ChannelAdapter, payload: dict) -> None:
        """Store a delivery for ``ctx``'s message, in the handler's transaction (called from a handler)."""
        m = ctx.meta
        await ctx.conn.execute(
            "INSERT INTO connector_deliveries (connector, participant, message_id, correlation_id, type, reply_to, "
            "subject, data_item, basis, payload_ct) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
            "ON CONFLICT (connector, message_id) DO NOTHING",
            adapter.name, ctx.me, uuid.UUID(m.message_id), uuid.UUID(m.correlation_id), m.type, m.sender,
            m.subject, m.data_item, m.legal_basis,
            self.sealer.seal(ctx.me, delivery_row_id(adapter.name, m.message_id), m.subject, payload))
        self._wakeups[adapter.name].set()

    async def deliver_once(self, adapter: ChannelAdapter, limit: int = 200) -> int:
        """One sink pass: hand due deliveries to the channel; retry, back off or dead-letter each.

        Only this runtime's identities' deliveries: connectors of the same channel kind for different
        participants (two file banks) may share a database."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT * FROM connector_deliveries WHERE connector = $1 AND participant = ANY($3::text[]) "
                "AND status = 'PENDING' AND next_attempt_at <= now() ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
                adapter.name, limit, list(self.runtime.identities))
            if not rows:
                return 0
            batch, unreadable = [], []
            for r in rows:
                try:
                    batch.append(self._delivery(r))
                except UnsealError:  # moved from another row or altered at rest: never handed over, never blocks
                    unreadable.append(self._delivery(r, payload=False))
            for d in unreadable:
                await self._settle(conn, adapter, d, Rejection(
                    Reason.UNDECRYPTABLE, "its stored payload does not open for this row (moved or altered at rest)"))
            try:
                outcomes = await adapter.deliver(batch) if batch else {}
            except Exception as exc:  # the whole pass failed: every item counts one attempt
                outcomes = {d.id: exc for d in batch}
            for d in batch:
                await self._settle(conn, adapter, d, outcomes.get(d.id, TransientError("no outcome reported")))
            return len(rows)

    async def _settle(self, conn: asyncpg.Connection, adapter: ChannelAdapter, d: Delivery,
                      error: Exception | Answered | None) -> None:
        labels = {"connector": adapter.name, "type": d.type}
        if error is None or isinstance(error, Answered):
            # Handed over: nothing reads the payload again (an answer needs only the routing columns).
            await conn.execute("UPDATE connector_deliveries SET status = 'DELIVERED', attempts = attempts + 1, "
                               "delivered_at = now(), last_error = NULL, payload = NULL, payload_ct = NULL "
                               "WHERE id = $1", d.id)
            self.metrics.delivered.inc(**labels)
            if isinstance(error, Answered):  # synchronous channel: reply in the same transaction
                await self.answer(conn, adapter, d.correlation_id, type=error.type, body=error.body)
            return
        attempts = d.attempts + 1
        if isinstance(error, Rejection):
            reason, detail = error.code, error.message
        elif isinstance(error, TransientError):
            reason, detail = "CHANNEL_UNAVAILABLE", str(error)
        else:
            reason, detail = "CHANNEL_ERROR", type(error).__name__
        if isinstance(error, Rejection) or attempts >= adapter.retry.max_attempts:
            if not isinstance(error, Rejection):
                detail = f"gave up after {attempts} attempts: {detail}"
            # The payload stays (this database only, never shown) so that an operator can re-drive it.
            await conn.execute("UPDATE connector_deliveries SET status = 'DEAD', attempts = $2, last_error = $3 "
                               "WHERE id = $1", d.id, attempts, f"{reason}: {detail}")
            await self.dead_letter(adapter, "sink", f"{d.type}/{d.message_id}", reason, detail, conn,
                                   delivery_id=d.id)
            return
        delay = adapter.retry.delay(attempts)
        await conn.execute("UPDATE connector_deliveries SET attempts = $2, last_error = $3, "
                           "next_attempt_at = now() + make_interval(secs => $4) WHERE id = $1",
                           d.id, attempts, f"{reason}: {detail}", delay)
        self.metrics.retries.inc(**labels)

    async def answer(self, conn: asyncpg.Connection, adapter: ChannelAdapter, correlation_id: str, *, type: str,
                     body: dict) -> bool:
        """Reply to a delivered question (e.g. an existence check) once the channel answered.

        Runs in the caller's transaction; sends at most one reply per question (False if the
        delivery is unknown or already answered).  A question asked again under the same
        correlation (a lookup's reminder) is answered with it: every open delivery of the
        correlation is closed, those not yet handed to the channel too.
        """
        rows = await conn.fetch(
            "SELECT * FROM connector_deliveries WHERE connector = $1 AND correlation_id = $2 "
            "AND status IN ('DELIVERED', 'PENDING') ORDER BY id FOR UPDATE", adapter.name, uuid.UUID(str(correlation_id)))
        delivered = [r for r in rows if r["status"] == "DELIVERED"]
        if not delivered:
            return False
        d = self._delivery(delivered[0], payload=False)
        await self.runtime.send(d.participant, [Message(
            body=body, type=type, to=d.reply_to, subject=d.subject, data_item=d.data_item, basis=d.basis,
            correlation_id=d.correlation_id)], conn=conn)
        await conn.execute("UPDATE connector_deliveries SET status = 'ANSWERED', payload = NULL, payload_ct = NULL "
                           "WHERE id = ANY($1::bigint[])", [r["id"] for r in rows if r["type"] == d.type])
        self.metrics.answered.inc(connector=adapter.name, type=type)
        return True

    async def _sink_loop(self, adapter: ChannelAdapter) -> None:
        wakeup = self._wakeups[adapter.name]
        while not self._stopping.is_set():
            try:
                while await self.deliver_once(adapter) > 0 and not self._stopping.is_set():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database away: deliveries wait in their table
                log.warning("%s: sink pass failed (%s)", adapter.name, type(exc).__name__)
            self.metrics.sink_passes.inc(connector=adapter.name)
            try:
                await asyncio.wait_for(wakeup.wait(), adapter.poll_interval_s)
            except asyncio.TimeoutError:
                pass
            wakeup.clear()

    def _counted(self, connector: str, type_: str, handler: Handler) -> Handler:
        async def counted(ctx: Context) -> None:
            await handler(ctx)
            self.metrics.received.inc(connector=connector, type=type_)
        return counted

    # -- tokens (符号) ----------------------------------------------------------------------------
    async def request(self, sender: str, *, type: str, to: str, subject: str, body: dict, data_item: str,
                      basis: str, timeout: float = 30.0) -> Opened:
        """Send one message and await the answer (same signature as ``BusClient.request``)."""
        message = Message(body=body, type=type, to=to, subject=subject, data_item=data_item, basis=basis,
                          correlation_id=str(uuid.uuid4()))
        return await self.runtime.request(sender, message, timeout=timeout)

    async def token_for(self, participant: str, my_number: str, *, timeout: float = 30.0) -> str:
        """The token-issuance exchange of ``BusClient.token_for``, on this runtime's own identities."""
        return await obtain_token(self, participant, my_number, timeout=timeout)

    async def enrol(self, participant: str, local_id: str, my_number: str, *, timeout: float = 30.0) -> str:
        """Map a local person id to ``participant``'s token (中間サーバー style). The My Number is not kept."""
        token = await self.token_for(participant, my_number, timeout=timeout)
        await self.pool.execute(
            "INSERT INTO connector_person_tokens (participant, local_id, token) VALUES ($1, $2, $3) "
            "ON CONFLICT (participant, local_id) DO UPDATE SET token = $3, enrolled_at = now()",
            participant, local_id, token)
        return token

    @staticmethod
    async def token_of(conn: asyncpg.Connection | asyncpg.Pool, participant: str, local_id: str) -> str | None:
        return await conn.fetchval("SELECT token FROM connector_person_tokens WHERE participant = $1 "
                                   "AND local_id = $2", participant, local_id)

    @staticmethod
    async def local_id_of(conn: asyncpg.Connection | asyncpg.Pool, participant: str, token: str) -> str | None:
        """The local person id enrolled last for ``token`` (None: the person was never enrolled here)."""
        return await conn.fetchval("SELECT local_id FROM connector_person_tokens WHERE participant = $1 "
                                   "AND token = $2 ORDER BY enrolled_at DESC LIMIT 1", participant, token)

    # -- health, lag and metrics ------------------------------------------------------------------
    async def lag(self) -> dict[tuple[str, int], int]:
        """Inbox records not yet consumed, per (topic, partition) (high watermark from fetches, not end_offsets)."""
        consumer = self.runtime.consumer
        out: dict[tuple[str, int], int] = {}
        if consumer is None:
            return out
        for tp in sorted(consumer.assignment(), key=lambda t: (t.topic, t.partition)):
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = await consumer.position(tp)
            except Exception:  # noqa: BLE001 - not yet positioned after a rebalance
                continue
            out[(tp.topic, tp.partition)] = max(0, high - position)
        return out

    async def _collect(self) -> None:
        """Read the backlog figures (database, consumer) into the gauges; the ops server calls it per request."""
        m = self.metrics
        m.inbox_processed.inc(max(0, self.runtime.processed - m.inbox_processed.value()))
        if self.runtime.pool is None:  # not started (or stopped): nothing to read
            m.up.set(0)
            return
        try:
            outbox = await self.pool.fetchrow(
                "SELECT count(*) AS n, EXTRACT(EPOCH FROM now() - min(created_at)) AS oldest "
                "FROM participant_outbox WHERE sent_at IS NULL AND sender = ANY($1::text[])",
                list(self.runtime.identities))
            deliveries = {r["connector"]: r for r in await self.pool.fetch(
                "SELECT connector, count(*) AS n, max(attempts) AS attempts FROM connector_deliveries "
                "WHERE status = 'PENDING' GROUP BY connector")}
            dead = {r["connector"]: r["n"] for r in await self.pool.fetch(
                "SELECT connector, count(*) AS n FROM connector_dead_letters WHERE redriven_at IS NULL "
                "GROUP BY connector")}
            lag = await self.lag()
        except Exception:
            m.up.set(0)
            raise
        adapters = []
        for a in self.adapters:
            d = deliveries.get(a.name)
            adapters.append({"name": a.name, "deliveries_pending": int(d["n"]) if d else 0,
                             "max_attempts_pending": int(d["attempts"]) if d else 0,
                             "dead_letters": int(dead.get(a.name, 0))})
            m.deliveries_pending.set(adapters[-1]["deliveries_pending"], connector=a.name)
            m.dead_letters_open.set(adapters[-1]["dead_letters"], connector=a.name)
        oldest = float(outbox["oldest"] or 0.0)
        m.outbox_pending.set(int(outbox["n"]))
        m.outbox_oldest.set(round(oldest, 1))
        m.consumer_lag.clear()
        for (topic, partition), n in lag.items():
            m.consumer_lag.set(n, topic=topic, partition=partition)
        self._figures = {"outbox_pending": int(outbox["n"]), "outbox_oldest_s": round(oldest, 1),
                         "inbox_lag": {f"{t}[{p}]": n for (t, p), n in lag.items()}, "adapters": adapters,
                         "checked_at": datetime.now(UTC).isoformat()}
        m.up.set(1 if self._health()[0] == "ok" else 0)

    def _health(self) -> tuple[str, str]:
        if self._stopping.is_set():
            return "failing", "stopping"
        status, detail = self.runtime.health()
        if status != "ok":
            return status, detail
        stopped = [t.get_name() for t in self._tasks if t.done()]
        if stopped:
            return "failing", f"stopped: {', '.join(stopped)}"
        oldest = self._figures.get("outbox_oldest_s", 0.0)
        if oldest > OUTBOX_STUCK_S:
            return "failing", f"the oldest outbox message has waited {oldest:.0f} s: the broker is not taking messages"
        return "ok", ""

    def _details(self) -> dict[str, Any]:
        return {"identities": list(self.runtime.identities), **self._figures}

    async def health(self) -> dict[str, Any]:
        """The ``/health`` report: ``status`` (ok | starting | failing), ``detail``, the worker headline
        (processed, out, rejected, duplicates, lag) and the connector's backlog (identities,
        ``outbox_pending``, ``outbox_oldest_s``, ``inbox_lag``, per adapter ``deliveries_pending``,
        ``max_attempts_pending``, ``dead_letters``)."""
        return await self.ops.report()

    async def metrics_text(self) -> str:
        """The ``/metrics`` exposition (Prometheus text 0.0.4)."""
        return await self.ops.render()

    def ops_routes(self) -> list[Any]:
        """``/health`` and ``/metrics`` for a connector's own API server (portal, bank HTTP)."""
        return self.ops.routes()


async def start_site(app: Any, host: str, port: int, *, ssl_context: Any = None) -> tuple[Any, str]:
    """Start an aiohttp app (over TLS with ``ssl_context``); returns (runner, base URL) with the port bound."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"{'https' if ssl_context is not None else 'http'}://{host}:{bound}"


def delivery_row_id(connector: str, message_id: str) -> str:
    """A delivery's identity in its sealed payload's associated data (unique per connector and message)."""
    return f"{connector}/{message_id}"


__all__ = [
    "Answered", "ChannelAdapter", "ConnectorMetrics", "ConnectorRuntime", "Delivery", "NotRedrivable", "RetryPolicy",
    "TransientError",
    "delivery_row_id", "start_site",
]
