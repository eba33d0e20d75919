"""The agency connector (行政機関等): a transactional outbox from the agency's own database to the bus.

The agency's system writes an inquiry row into ``agency_outbox`` in the SAME
transaction as its business change (see :mod:`connectors.sdk`).  This
connector, a channel adapter of :class:`connectors.runtime.ConnectorRuntime`:

- picks up ``PENDING`` rows (``FOR UPDATE SKIP LOCKED``), converts the local
  person id to the agency's token with its own local-id ↔ token mapping
  (``connector_person_tokens``, filled by :meth:`AgencyConnector.enrol` through
  the token-issuance exchange — the 中間サーバー role), seals a
  ``provision.inquiry`` to the registry and marks the row ``SEALED`` — all in one
  transaction, keyed by the inquiry id, so a row is published exactly once.
  The row's procedure code (a public-benefit procedure of
  ``infra/domain/procedures.toml``) goes into the envelope's signed metadata, where
  the hub checks the agency's entitlement, and into the body as before;
- the participant runtime relays sealed messages to the broker when it is
  reachable (``SENT`` afterwards); while it is not, they wait;
- answers (``provision.response``, or the hub's ``rejection.notice``) land in
  ``agency_inbox`` in the claim transaction, the row becomes ``ANSWERED`` and a
  ``NOTIFY agency_inbox`` wakes waiting SDK callers.

Row states: PENDING → SEALED → SENT → ANSWERED, or FAILED (not enrolled,
unsupported item) with the reason in ``failure`` and a dead letter.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from connectors.runtime import ChannelAdapter, ConnectorRuntime, NotRedrivable
from infra.core.settings import Settings
from infra.crypto.envelope import Message
from infra.domain.policy import BASIS_PROVISION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.platform.pgnotify import Listener, notify
from schemas import types as msg
from streams.participant import Context

log = logging.getLogger("renkei.connector.agency")

NOTIFY_CHANNEL = "agency_inbox"
PENDING_CHANNEL = "agency_outbox"
"""Notified (payload: the agency) when an outbox row becomes PENDING: the connector seals it at once."""
SUPPORTED_ITEMS = {DATA_PUBLIC_FUNDS_ACCOUNT: (msg.PROVISION_INQUIRY, BASIS_PROVISION)}
"""Data item an agency may ask for → (message type, legal basis)."""

AGENCY_MIGRATIONS = [
    """
    CREATE TABLE agency_outbox (
        id              bigserial PRIMARY KEY,
        agency          text NOT NULL,
        inquiry_id      uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
        person_local_id text NOT NULL,
        data_item       text NOT NULL,
        procedure_code  text NOT NULL,
        status          text NOT NULL DEFAULT 'PENDING'
                        CHECK (status IN ('PENDING', 'SEALED', 'SENT', 'ANSWERED', 'FAILED')),
        message_id      uuid,
        failure         text,
        created_at      timestamptz NOT NULL DEFAULT now(),
        sealed_at       timestamptz,
        sent_at         timestamptz,
        answered_at     timestamptz
    );
    CREATE INDEX agency_outbox_pending ON agency_outbox (id) WHERE status IN ('PENDING', 'SEALED');
    CREATE TABLE agency_inbox (
        message_id   uuid PRIMARY KEY,
        agency       text NOT NULL,
        inquiry_id   uuid NOT NULL,
        type         text NOT NULL,
        status       text NOT NULL,
        account      jsonb,
        detail       text,
        received_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX agency_inbox_inquiry ON agency_inbox (inquiry_id);
    """,
    # Bulk inquiries (一括照会, connectors.sdk AgencyClient.inquire_batch): a row per (batch, line), never two,
    # so a batch resumed after a crash queues only the lines it had not queued.
    """
    ALTER TABLE agency_outbox ADD COLUMN batch_id text, ADD COLUMN batch_line integer;
    CREATE UNIQUE INDEX agency_outbox_batch_line ON agency_outbox (agency, batch_id, batch_line)
        WHERE batch_id IS NOT NULL;
    """,
    # A row becoming PENDING (written by the SDK or by the agency's own SQL, or re-driven) notifies the
    # connector at its commit, so it is sealed then and not at the next poll (infra.platform.pgnotify).
    f"""
    CREATE FUNCTION agency_outbox_pending_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('{PENDING_CHANNEL}', NEW.agency);
        RETURN NULL;
    END $$;
    CREATE TRIGGER agency_outbox_pending_notify AFTER INSERT OR UPDATE OF status ON agency_outbox
        FOR EACH ROW WHEN (NEW.status = 'PENDING') EXECUTE FUNCTION agency_outbox_pending_notify();
    """,
]
"""The agency-side tables (component ``connector-agency``); the SDK applies them too."""


class AgencyOutbox(ChannelAdapter):
    """Channel: the agency's ``agency_outbox`` / ``agency_inbox`` tables."""

    name = "agency"
    migrations = AGENCY_MIGRATIONS
    poll_interval_s = 0.5

    def __init__(self, agencies: list[str], *, batch: int = 200) -> None:
        self.agencies = agencies
        self.batch = batch
        self._pending: Listener | None = None

    async def start(self, runtime: ConnectorRuntime) -> None:
        await super().start(runtime)
        self._pending = Listener(runtime.runtime.dsn, PENDING_CHANNEL, self._notified)
        await self._pending.start()

    async def stop(self) -> None:
        if self._pending is not None:
            await self._pending.stop()

    def _notified(self, agency: str | None) -> None:
        if agency is None or agency in self.agencies:  # None: reconnected, a row may have come meanwhile
            self.runtime.wake(self.name)

    def handlers(self) -> dict:
        return {msg.PROVISION_RESPONSE: self.on_answer, msg.REJECTION_NOTICE: self.on_answer}

    async def poll(self) -> None:
        rt = self.runtime
        async with rt.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, agency, inquiry_id, person_local_id, data_item, procedure_code, created_at "
                "FROM agency_outbox WHERE status = 'PENDING' AND agency = ANY($1::text[]) ORDER BY id LIMIT $2 "
                "FOR UPDATE SKIP LOCKED", self.agencies, self.batch)
            for row in rows:
                ref = f"inquiry/{row['inquiry_id']}"
                route = SUPPORTED_ITEMS.get(row["data_item"])
                token = await rt.token_of(conn, row["agency"], row["person_local_id"])
                if route is None or token is None:
                    reason = "UNSUPPORTED_ITEM" if route is None else "NOT_ENROLLED"
                    detail = ("no inquiry is defined for this data item" if route is None else
                              "the local person id has no token yet: enrol the person first")
                    await conn.execute("UPDATE agency_outbox SET status = 'FAILED', failure = $2 WHERE id = $1",
                                       row["id"], f"{reason}: {detail}")
                    await rt.dead_letter(self, "source", ref, reason, detail, conn)
                    continue
                type_, basis = route
                message = Message(
                    body={"procedure_code": row["procedure_code"], "requested_at": row["created_at"]},
                    type=type_, to="registry", subject=token, data_item=row["data_item"], basis=basis,
                    correlation_id=str(row["inquiry_id"]), procedure=row["procedure_code"])
                ids = await rt.publish(conn, self, row["agency"], ref, [message])
                if ids is None:  # published before a crash lost the mark: find its message id
                    ids = [str(m) for m in await conn.fetchval(
                        "SELECT message_ids FROM connector_source_log WHERE connector = $1 AND source_key = $2",
                        self.name, ref)]
                await conn.execute("UPDATE agency_outbox SET status = 'SEALED', sealed_at = now(), message_id = $2 "
                                   "WHERE id = $1", row["id"], ids[0] if ids else None)
            # The relay marks participant_outbox rows sent after the broker's ack; mirror that here.
            await conn.execute(
                "UPDATE agency_outbox a SET status = 'SENT', sent_at = p.sent_at FROM participant_outbox p "
                "WHERE a.status = 'SEALED' AND a.agency = ANY($1::text[]) AND p.message_id = a.message_id "
                "AND p.sent_at IS NOT NULL", self.agencies)

    @classmethod
    async def redrive_source(cls, conn: Any, ref: str) -> None:
        """``renkei connector dlq redrive``: a FAILED row (e.g. enrolled since) becomes PENDING again."""
        inquiry = ref.removeprefix("inquiry/")
        status = await conn.fetchval("UPDATE agency_outbox SET status = 'PENDING', failure = NULL "
                                     "WHERE inquiry_id::text = $1 AND status = 'FAILED' RETURNING status", inquiry)
        if status is None:
            raise NotRedrivable("the outbox row is gone or no longer FAILED")

    async def on_answer(self, ctx: Context) -> None:
        body = ctx.body
        if ctx.meta.type == msg.PROVISION_RESPONSE:
            status, account, detail = body["status"], body.get("account"), None
        else:
            status, account, detail = f"REJECTED:{body['reason_code']}", None, body["message"]
        inquiry = await ctx.conn.fetchval("SELECT inquiry_id FROM agency_outbox WHERE inquiry_id = $1::uuid",
                                          ctx.meta.correlation_id)
        if inquiry is None:
            return  # not an inquiry of ours (e.g. a refused token request): nothing to record
        await ctx.conn.execute(
            "INSERT INTO agency_inbox (message_id, agency, inquiry_id, type, status, account, detail) "
            "VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7) ON CONFLICT DO NOTHING",
            ctx.meta.message_id, ctx.me, inquiry, ctx.meta.type, status,
            None if account is None else json.dumps(account), detail)
        await ctx.conn.execute(
            "UPDATE agency_outbox a SET status = 'ANSWERED', answered_at = now(), "
            "sent_at = coalesce(a.sent_at, (SELECT p.sent_at FROM participant_outbox p WHERE p.message_id = a.message_id), now()) "
            "WHERE inquiry_id = $1", inquiry)
        await notify(ctx.conn, NOTIFY_CHANNEL, str(inquiry))


class AgencyConnector:
    """The agency connector process: the runtime with the outbox adapter, for one or more agencies."""

    def __init__(self, settings: Settings, agencies: list[str], *, ops_port: int | None = None,
                 ops_host: str | None = None) -> None:
        self.adapter = AgencyOutbox(agencies)
        # One agency's connector is its own consumer group, which only its principal may join (infra.platform.acls); a
        # process serving several agencies (one operator, no ACLs between them) shares one.
        group = f"{settings.kafka.topic_prefix}.connector.{agencies[0] if len(agencies) == 1 else 'agency'}"
        self.runtime = ConnectorRuntime(settings, agencies, [self.adapter], group=group, ops_port=ops_port,
                                        ops_host=ops_host)

    async def __aenter__(self) -> AgencyConnector:
        await self.runtime.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.runtime.stop()

    async def enrol(self, agency: str, person_local_id: str, my_number: str) -> str:
        """Obtain the agency's token for a person and map the local id to it. The My Number is not stored."""
        return await self.runtime.enrol(agency, person_local_id, my_number)


async def serve(settings: Settings, agencies: list[str], ops_port: int | None, *, ops_host: str | None = None,
                ready: Callable[[AgencyConnector], None] | None = None, stop: asyncio.Event | None = None) -> None:
    """Run the connector until ``stop`` is set (or the task is cancelled); ``ready`` is called once it serves."""
    async with AgencyConnector(settings, agencies, ops_port=ops_port, ops_host=ops_host) as connector:
        log.info("agency connector for %s; ops at %s", ", ".join(agencies), connector.runtime.ops_url)
        if ready is not None:
            ready(connector)
        await (stop or asyncio.Event()).wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m connectors.agency --participant-id agency-nta [--ops-host H] [--ops-port 9101]``."""
    from infra.core.arguments import worker_settings
    from streams.app import serve_until_signal

    settings = worker_settings(argv, participant_id="agency-city-minato")
    serve_until_signal(serve(settings, settings.participant_id.split(","), None), settings.log_level,
                       settings.log_format, "agency")


if __name__ == "__main__":
    main()
