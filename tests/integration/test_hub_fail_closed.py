"""The hub fails closed: while PostgreSQL refuses its provision records, nothing is forwarded.

A real outage, not a mock.  The hub's batch step (``HubService.process`` from streams/hub.py, what the
faust worker runs for every batch) runs in this process against the real broker and PostgreSQL,
connected as a PostgreSQL role of its own; the test revokes that role's right to write provision
records, so every commit of the batch fails in the database itself.  While that lasts, not one
record may leave the hub — no forward, no audit record, no dead letter.  Once the right is granted
back, the same batch goes out: every inquiry forwarded once, with its provision record.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid

import asyncpg
import pytest

from infra.crypto.envelope import peek
from infra.platform.kafka import consumer, producer
from infra.platform.metrics import WorkerMetrics
from infra.platform.metrics_hub import HubFigures
from infra.platform.metrics_server import parse_text
from infra.platform.pgdsn import admin_dsn, layout_for, observer_dsn, with_search_path
from infra.platform.storage import create_pool
from infra.platform.topics import TopicNames
from infra.tools.bench import seal_inquiries
from infra.tools.harness import read_topic
from streams.gateway import Inbound
from streams.hub import HubService
from tests.integration.platform_fixtures import hub_pseudonyms, isolated_platform

pytestmark = pytest.mark.integration

INQUIRIES = 20
OUTAGE_RETRIES = 3  # failed commits seen before the right comes back


async def _ingress_batch(settings, envelopes: list[tuple[bytes, bytes]]) -> list[Inbound]:
    """Produce ``envelopes`` to ingress and read them back as the hub would get them (real partitions, offsets)."""
    from aiokafka import TopicPartition

    names = TopicNames(settings.kafka.topic_prefix)
    prod = producer(settings)
    await prod.start()
    try:
        for key, value in envelopes:
            await prod.send_and_wait(names.ingress, value, key=key)
        partitions = sorted(await prod.partitions_for(names.ingress))
    finally:
        await prod.stop()
    cons = consumer(settings, group_id=None, fetch_max_wait_ms=50)
    await cons.start()
    try:
        tps = [TopicPartition(names.ingress, p) for p in partitions]
        cons.assign(tps)
        for tp in tps:
            cons.seek(tp, 0)
        batch: list[Inbound] = []
        while len(batch) < len(envelopes):
            got = await cons.getmany(timeout_ms=500)
            batch += [Inbound(r.value, r.partition, r.offset, r.key) for rs in got.values() for r in rs]
        return batch
    finally:
        await cons.stop()


async def _hub_as_its_own_role(settings, admin: asyncpg.Connection) -> tuple[HubService, str, object]:
    """A HubService whose pool logs in as a fresh role with every right on the platform's tables."""
    built = await HubService.create(settings, None)  # migrates as the owner, loads keys and the directory
    await built.close()
    schema = layout_for(settings).schema("hub")  # the hub's tables, owned by the hub's role
    role, password = f"hub_{uuid.uuid4().hex[:10]}", secrets.token_hex(16)
    await admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
    await admin.execute(f'GRANT CONNECT ON DATABASE "{await admin.fetchval("SELECT current_database()")}" TO "{role}"')
    await admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"; '
                        f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"; '
                        f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{role}"')
    prod = producer(settings, linger_ms=2)
    await prod.start()
    pool = await create_pool(with_search_path(admin_dsn(settings), [schema]), user=role, password=password,
                             min_size=1, max_size=2)
    service = HubService(settings, built.core, built.sealer, pool, prod, built.directory, records_key=built.records_key)
    return service, role, prod


async def test_nothing_is_forwarded_until_the_records_commit_then_everything_once(endpoints, database, tmp_path,
                                                                                  caplog):
    async with isolated_platform(endpoints, database, tmp_path / "state", workers=[]) as platform:  # no hub worker
        s = platform.settings
        names = TopicNames(s.kafka.topic_prefix)
        envelopes = seal_inquiries(s, INQUIRIES, per_message=False, people=INQUIRIES)
        sent_ids = {peek(v).message_id for _, v in envelopes}
        batch = await _ingress_batch(s, envelopes)
        admin = await asyncpg.connect(observer_dsn(s))  # the database's administrator
        service, role, prod = await _hub_as_its_own_role(s, admin)
        step: asyncio.Task | None = None
        try:
            await admin.execute(f'REVOKE INSERT ON provision_records FROM "{role}"')  # the outage
            caplog.set_level(logging.ERROR, logger="renkei.hub")

            def failed_commits() -> int:
                return sum("provision records could not be written" in r.getMessage() for r in caplog.records)

            step = asyncio.create_task(service.process(batch))
            while failed_commits() < OUTAGE_RETRIES:
                assert not step.done(), "the batch step returned while its records could not be written"
                await asyncio.sleep(0.05)

            # Several commits failed: nothing of the batch may have left the hub, nothing was kept.
            assert not step.done()
            for topic in (names.inbox("registry"), names.audit, names.rejected):
                assert await read_topic(s, topic) == [], f"{topic} got records while the records were refused"
            assert await admin.fetchval("SELECT count(*) FROM provision_records") == 0
            assert await admin.fetchval("SELECT count(*) FROM hub_messages") == 0  # the claims rolled back too
            # What ops see meanwhile: the failed writes counted on the hub's /metrics (alert RenkeiProvisionRecordsFailing).
            metrics = WorkerMetrics("hub")
            await HubFigures(metrics).collector(lambda: service)()
            failures = parse_text(metrics.render())['renkei_provision_write_failures_total{worker="hub"}']
            assert failures >= OUTAGE_RETRIES and failures == service.write_failures

            await admin.execute(f'GRANT INSERT ON provision_records TO "{role}"')  # the database is back
            stats = await asyncio.wait_for(step, 60)
            assert failed_commits() >= OUTAGE_RETRIES
        finally:
            if step is not None and not step.done():
                step.cancel()
            await service.close()
            await prod.stop()
            await admin.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')
            await admin.close()

        # Everything, once: each inquiry forwarded to the registry once, with one provision record.
        assert (stats.received, stats.forwarded, stats.rejected, stats.redelivered) == (INQUIRIES, INQUIRIES, 0, 0)
        legs = hub_pseudonyms(s)  # each leg and record carries the hub's id for the message, not the agency's
        forwarded = [peek(r.value).message_id for r in await read_topic(s, names.inbox("registry"))]
        assert sorted(forwarded) == sorted(legs.leg_message_id(m, "registry") for m in sent_ids)
        conn = await asyncpg.connect(observer_dsn(s))
        try:
            recorded = [r["message_id"] for r in await conn.fetch("SELECT message_id FROM provision_records")]
        finally:
            await conn.close()
        assert sorted(recorded) == sorted(legs.record_message_id(m) for m in sent_ids)
        assert len(await read_topic(s, names.audit)) == INQUIRIES
        assert await read_topic(s, names.rejected) == []
