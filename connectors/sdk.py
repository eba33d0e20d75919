"""The agency SDK: ask the bus from the agency's own code, through its own database.

    async with AgencyClient(dsn, "agency-nta") as client:
        answer = await client.inquire("resident-00042", procedure="income-tax-refund")
        if answer.status == "REGISTERED":
            pay_into(answer.account)

A municipality's bulk inquiry (一括照会) is :meth:`AgencyClient.inquire_batch`: one answer per person,
resumable after a crash without asking anyone twice (a row per batch line, never two).

``procedure`` is the public-benefit procedure the account is needed for, a
code of ``infra/domain/procedures.toml`` the agency is entitled to; the hub refuses
anything else (``REJECTED:UNKNOWN_PROCEDURE`` / ``REJECTED:PROCEDURE_NOT_ALLOWED``).

The SDK never talks to Kafka.  :meth:`AgencyClient.submit` writes an inquiry
row into ``agency_outbox`` — pass ``conn=`` to write it inside the agency's own
business transaction (the transactional-outbox pattern) — and the agency
connector (:mod:`connectors.agency`) relays it.  :meth:`AgencyClient.answer`
waits for the row in ``agency_inbox`` (``LISTEN agency_inbox`` plus a slow
poll, so a missed notification only costs latency).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from connectors.agency import AGENCY_MIGRATIONS, NOTIFY_CHANNEL, SUPPORTED_ITEMS
from infra.domain.policy import DATA_PUBLIC_FUNDS_ACCOUNT
from infra.platform.pgnotify import Listener
from infra.platform.storage import create_pool, migrate


@dataclass(frozen=True)
class InquiryAnswer:
    """The answer to one inquiry. ``status``: REGISTERED / NOT_REGISTERED / BLOCKED / REJECTED:<reason>."""

    inquiry_id: str
    status: str
    account: dict | None = field(default=None, repr=False)
    detail: str | None = None


class InquiryFailed(Exception):
    """The connector could not send the inquiry (e.g. the person is not enrolled); see ``failure``."""

    def __init__(self, inquiry_id: str, failure: str) -> None:
        super().__init__(f"inquiry {inquiry_id} failed: {failure}")
        self.inquiry_id = inquiry_id
        self.failure = failure


class AgencyClient:
    """One agency's handle on its outbox and inbox tables."""

    def __init__(self, dsn: str, agency: str, *, poll_interval_s: float = 1.0) -> None:
        self.dsn = dsn
        self.agency = agency
        self.poll_interval_s = poll_interval_s
        self.pool: asyncpg.Pool | None = None
        self._listener: Listener | None = None
        self._waiting: dict[str, asyncio.Event] = {}

    async def __aenter__(self) -> AgencyClient:
        self.pool = await create_pool(self.dsn, min_size=1, max_size=4)
        await migrate(self.pool, "connector-agency", AGENCY_MIGRATIONS)
        self._listener = Listener(self.dsn, NOTIFY_CHANNEL, self._notified)
        await self._listener.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._listener is not None:
            await self._listener.stop()
        if self.pool is not None:
            await self.pool.close()

    def _notified(self, inquiry_id: str | None) -> None:
        # None: the listener connected again and may have missed answers; every waiter reads its row once more.
        events = self._waiting.values() if inquiry_id is None else [self._waiting.get(inquiry_id)]
        for event in events:
            if event is not None:
                event.set()

    async def submit(self, person_local_id: str, *, procedure: str, item: str = DATA_PUBLIC_FUNDS_ACCOUNT,
                     conn: asyncpg.Connection | None = None) -> str:
        """Queue an inquiry; returns its id. With ``conn``, it commits or rolls back with the caller's work."""
        self._check(person_local_id, procedure, item)
        assert self.pool is not None, "use AgencyClient as an async context manager"
        return str(await (conn or self.pool).fetchval(
            "INSERT INTO agency_outbox (agency, person_local_id, data_item, procedure_code) VALUES ($1, $2, $3, $4) "
            "RETURNING inquiry_id", self.agency, person_local_id, item, procedure))

    async def answer(self, inquiry_id: str, *, timeout: float = 30.0) -> InquiryAnswer:
        """Wait for the answer to ``inquiry_id``; TimeoutError if none arrives in time."""
        assert self.pool is not None
        event = self._waiting.setdefault(inquiry_id, asyncio.Event())
        try:
            async with asyncio.timeout(timeout):
                while True:
                    found = await self._lookup(inquiry_id)
                    if found is not None:
                        return found
                    try:
                        await asyncio.wait_for(event.wait(), self.poll_interval_s)
                    except TimeoutError:
                        pass
                    event.clear()
        finally:
            self._waiting.pop(inquiry_id, None)

    async def inquire(self, person_local_id: str, *, procedure: str, item: str = DATA_PUBLIC_FUNDS_ACCOUNT,
                      timeout: float = 30.0) -> InquiryAnswer:
        """Submit an inquiry for ``procedure`` and await its answer."""
        return await self.answer(await self.submit(person_local_id, procedure=procedure, item=item),
                                 timeout=timeout)

    async def submit_line(self, batch_id: str, line: int, person_local_id: str, *, procedure: str,
                          item: str = DATA_PUBLIC_FUNDS_ACCOUNT) -> str:
        """Queue line ``line`` of bulk inquiry ``batch_id``, once: a line queued before (the batch resumed
        after a crash) keeps its inquiry and nothing is queued again. Returns the line's inquiry id."""
        if not batch_id:
            raise ValueError("batch_id must name the batch")
        self._check(person_local_id, procedure, item)
        assert self.pool is not None, "use AgencyClient as an async context manager"
        async with self.pool.acquire() as conn:
            inquiry = await conn.fetchval(
                "INSERT INTO agency_outbox (agency, person_local_id, data_item, procedure_code, batch_id, batch_line) "
                "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (agency, batch_id, batch_line) "
                "WHERE batch_id IS NOT NULL DO NOTHING RETURNING inquiry_id",
                self.agency, person_local_id, item, procedure, batch_id, line)
            if inquiry is None:
                inquiry = await conn.fetchval("SELECT inquiry_id FROM agency_outbox WHERE agency = $1 AND "
                                              "batch_id = $2 AND batch_line = $3", self.agency, batch_id, line)
        return str(inquiry)

    async def inquire_batch(self, batch_id: str, people: Sequence[str], *, procedure: str, window: int = 200,
                            timeout: float = 120.0,
                            progress: Callable[[InquiryAnswer], None] | None = None) -> list[InquiryAnswer]:
        """Bulk inquiry (一括照会): one answer per person of ``people`` (local ids; line = index + 1), in order.

        Resumable: called again with the same ``batch_id`` after a crash, it queues only the lines never
        queued and waits for the others' answers — nobody is asked about twice.  At most ``window`` lines
        are in flight.  A line the connector could not send answers ``FAILED`` (``detail``: why); one without
        an answer in ``timeout`` answers ``TIMEOUT`` (call again to keep waiting).  ``progress`` is called
        with each answer as it arrives.
        """
        if window < 1:
            raise ValueError("window must be at least 1")
        gate = asyncio.Semaphore(window)

        async def one(line: int, local_id: str) -> InquiryAnswer:
            async with gate:
                inquiry = await self.submit_line(batch_id, line, local_id, procedure=procedure)
                try:
                    found = await self.answer(inquiry, timeout=timeout)
                except InquiryFailed as exc:
                    found = InquiryAnswer(inquiry, "FAILED", detail=exc.failure)
                except TimeoutError:
                    found = InquiryAnswer(inquiry, "TIMEOUT", detail="no answer in time; call again to wait")
            if progress is not None:
                progress(found)
            return found

        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(people, start=1))))

    @staticmethod
    def _check(person_local_id: str, procedure: str, item: str) -> None:
        if item not in SUPPORTED_ITEMS:
            raise ValueError(f"no inquiry is defined for data item {item!r}; supported: {', '.join(SUPPORTED_ITEMS)}")
        if not person_local_id:
            raise ValueError("person_local_id must not be empty")
        if not procedure:
            raise ValueError("procedure must name the public-benefit procedure (infra/domain/procedures.toml)")

    async def _lookup(self, inquiry_id: str) -> InquiryAnswer | None:
        assert self.pool is not None
        row = await self.pool.fetchrow(
            "SELECT o.status AS state, o.failure, i.status, i.account, i.detail FROM agency_outbox o "
            "LEFT JOIN agency_inbox i ON i.inquiry_id = o.inquiry_id WHERE o.inquiry_id = $1 "
            "ORDER BY i.received_at LIMIT 1", uuid.UUID(inquiry_id))
        if row is None:
            raise KeyError(f"no inquiry {inquiry_id} in agency_outbox")
        if row["state"] == "FAILED":
            raise InquiryFailed(inquiry_id, row["failure"])
        if row["status"] is None:
            return None
        account = row["account"]
        return InquiryAnswer(inquiry_id, row["status"],
                             json.loads(account) if isinstance(account, str) else account, row["detail"])
