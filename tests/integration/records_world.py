"""A records world for integration tests: the provision store, the checkpoint builder and a verifier.

Everything real: PostgreSQL (the test's schema), the broker (the test's topic prefix, with the checkpoint
and ops audit topics declared as ``renkei topics apply`` declares them) and a records key.  ``attacker``
is a plain asyncpg connection as the database's administrator (the superuser), the hub's schema first on
its search path: what an insider with database access does, done with SQL. The store works as the hub's role.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from infra.core.settings import Settings
from infra.crypto.records_keys import RecordsKey
from infra.platform.kafka import admin_client
from infra.platform.kafka import producer as make_producer
from infra.platform.pgdsn import component_dsn, observer_dsn
from infra.platform.storage import create_pool
from infra.platform.topics import TopicNames, layout
from infra.records.checkpoint_builder import BuildResult, CheckpointBuilder
from infra.records.checkpoint_log import CheckpointLog
from infra.records.provisions import ProvisionRecord, ProvisionStore, RecordDraft, canonical_bytes, chain_hash
from infra.records.records_verify import RecordsVerdict, RecordsVerifier

__all__ = ["RecordsWorld", "draft", "overwrite", "records_world", "rehash_from", "token"]


def token() -> str:
    return base64.urlsafe_b64encode(os.urandom(24)).decode("ascii")


def draft(person: str, *, requester: str = "agency-city-minato", provider: str = "registry",
          **over: Any) -> RecordDraft:
    fields: dict[str, Any] = dict(
        message_id=uuid.uuid4(), correlation_id=uuid.uuid4(), person_token=person, requester=requester,
        provider=provider, data_item="public_funds_account", legal_basis="account-registration-act/art9",
        requested_at=datetime.now(UTC))
    fields.update(over)
    return RecordDraft(**fields)


@dataclass
class RecordsWorld:
    settings: Settings
    pool: asyncpg.Pool
    key: RecordsKey
    store: ProvisionStore
    builder: CheckpointBuilder
    verifier: RecordsVerifier
    producer: Any
    attacker: asyncpg.Connection

    @property
    def topic(self) -> str:
        return TopicNames(self.settings.kafka.topic_prefix).checkpoints

    async def append(self, drafts: list[RecordDraft]) -> list[ProvisionRecord]:
        async with self.pool.acquire() as conn, conn.transaction():
            return await self.store.append(conn, drafts)

    async def chain(self, n: int, **over: Any) -> str:
        person = token()
        await self.append([draft(person, **over) for _ in range(n)])
        return person

    async def checkpoint(self) -> BuildResult:
        """What the hub's checkpoint task does in one round: make the next checkpoint and publish it."""
        result = await self.builder.build()
        assert result is not None
        await self.builder.publish(self.producer, self.topic)
        return result

    async def verify(self, person: str) -> RecordsVerdict:
        return await self.verifier.verify(person)

    async def records(self, person: str) -> list[ProvisionRecord]:
        return await self.store.for_person(person, include_not_disclosed=True)


def rehash_from(records: list[ProvisionRecord], start: int = 1) -> list[ProvisionRecord]:
    """The chain an attacker computes after editing or removing records: renumbered and re-hashed from
    ``start`` (the hash algorithm is public; what the attacker lacks is the records key)."""
    out = list(records[:start - 1])
    prev = out[-1].hash if out else bytes(32)
    for seq, r in enumerate(records[start - 1:], start=start):
        r = dataclasses.replace(r, seq=seq, prev_hash=prev)
        r = dataclasses.replace(r, hash=chain_hash(prev, canonical_bytes(r)))
        out.append(r)
        prev = r.hash
    return out


_COLUMNS = ("record_id", "message_id", "correlation_id", "person_token", "requester", "provider", "data_item",
            "legal_basis", "requested_at", "provided_at", "status", "not_disclosed", "seq", "prev_hash", "hash",
            "person", "procedure")


async def overwrite(attacker: asyncpg.Connection, person: str, records: list[ProvisionRecord], *,
                    move_head: bool = True) -> None:
    """The database superuser replaces a person's chain with ``records`` (and moves the head to its end)."""
    async with attacker.transaction():
        await attacker.execute("DELETE FROM provision_records WHERE person_token = $1", person)
        await attacker.executemany(
            f"INSERT INTO provision_records ({', '.join(_COLUMNS)}) VALUES "
            f"({', '.join(f'${i}' for i in range(1, len(_COLUMNS) + 1))})",
            [(r.record_id, r.message_id, r.correlation_id, r.person_token, r.requester, r.provider, r.data_item,
              r.legal_basis, r.requested_at, r.provided_at, r.status.value, r.not_disclosed, r.seq, r.prev_hash,
              r.hash, r.person, r.procedure) for r in records])
        if move_head:
            last = records[-1] if records else None
            await attacker.execute("UPDATE provision_chain_heads SET seq = $2, last_hash = $3 WHERE person_token = $1",
                                   person, last.seq if last else 0, last.hash if last else bytes(32))


@asynccontextmanager
async def records_world(settings: Settings, key: RecordsKey | None = None) -> AsyncIterator[RecordsWorld]:
    names = TopicNames(settings.kafka.topic_prefix)
    from aiokafka.admin import NewTopic

    admin = admin_client(settings)
    await admin.start()
    try:
        specs = [s for s in layout(names, []) if s.name in (names.checkpoints, names.ops_audit)]
        await admin.create_topics([NewTopic(s.name, s.partitions, 1, topic_configs=s.configs) for s in specs])
    finally:
        await admin.close()
    pool = await create_pool(component_dsn(settings, "hub"), min_size=1, max_size=8)
    key = key or RecordsKey.generate()
    store = ProvisionStore(pool, key)
    await store.migrate()
    producer = make_producer(settings)
    await producer.start()
    builder = CheckpointBuilder(pool, key, CheckpointLog(settings, key.public()))
    verifier = RecordsVerifier(pool, key.public(), CheckpointLog(settings, key.public()))
    attacker = await asyncpg.connect(observer_dsn(settings))
    try:
        yield RecordsWorld(settings, pool, key, store, builder, verifier, producer, attacker)
    finally:
        await attacker.close()
        await verifier.close()
        await builder.published.close()
        await producer.stop()
        await pool.close()
