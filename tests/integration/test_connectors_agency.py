"""Agency connector: transactional outbox → hub → registry → agency_inbox, on the real broker and PostgreSQL."""

from __future__ import annotations

import aiohttp
import asyncpg
import pytest

from connectors.agency import AgencyConnector
from connectors.sdk import AgencyClient, InquiryFailed
from infra.platform.kafka import producer
from infra.platform.metrics_server import parse_text
from infra.platform.pgdsn import component_dsn
from infra.tools.harness import eventually
from streams.participant import RELAY_INTERVAL_S
from tests.integration.test_connectors_support import (
    account,
    my_number,
    own_database,
    register_through_portal,
)
from tests.integration.waits import dead_letters, hub_barrier, moved_on, replayed

pytestmark = pytest.mark.integration

AGENCY = "agency-nta"
PROCEDURE = "income-tax-refund"  # AGENCY is entitled to it (infra/domain/procedures.toml)


@pytest.fixture(scope="module")
async def agency_settings(running_platform):
    return await own_database(running_platform.settings, "agency")


@pytest.fixture(scope="module")
async def connector(agency_settings):
    async with AgencyConnector(agency_settings, [AGENCY], ops_port=0) as c:
        yield c


@pytest.fixture(scope="module")
async def sdk(agency_settings, connector):
    async with AgencyClient(component_dsn(agency_settings, AGENCY), AGENCY, poll_interval_s=0.5) as client:
        yield client


async def test_inquiry_returns_the_registered_account(running_platform, pg, connector, sdk):
    mn, acct = my_number(), account()
    await register_through_portal(running_platform.settings, pg, mn, acct)
    await connector.enrol(AGENCY, "resident-1", mn)

    answer = await sdk.inquire("resident-1", procedure=PROCEDURE, timeout=60)

    assert answer.status == "REGISTERED"
    assert answer.account["account_number"] == acct["account_number"]
    row = await connector.runtime.pool.fetchrow(
        "SELECT status, message_id, sent_at FROM agency_outbox WHERE inquiry_id = $1::uuid", answer.inquiry_id)
    assert row["status"] == "ANSWERED" and row["message_id"] is not None and row["sent_at"] is not None


async def test_unregistered_person_and_unenrolled_local_id(connector, sdk):
    await connector.enrol(AGENCY, "resident-2", my_number())
    assert (await sdk.inquire("resident-2", procedure=PROCEDURE, timeout=60)).status == "NOT_REGISTERED"

    with pytest.raises(InquiryFailed, match="NOT_ENROLLED"):
        await sdk.inquire("nobody-we-know", procedure=PROCEDURE, timeout=30)
    dead = await connector.runtime.pool.fetchval(
        "SELECT count(*) FROM connector_dead_letters WHERE connector = 'agency' AND reason = 'NOT_ENROLLED'")
    assert dead >= 1


async def test_outbox_row_commits_or_rolls_back_with_the_business_transaction(agency_settings, connector, sdk):
    await connector.enrol(AGENCY, "resident-3", my_number())
    conn = await asyncpg.connect(component_dsn(agency_settings, AGENCY))  # the agency's own business code
    try:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await sdk.submit("resident-3", procedure=PROCEDURE, conn=conn)
                raise RuntimeError("business change failed")
        assert await conn.fetchval("SELECT count(*) FROM agency_outbox WHERE person_local_id = 'resident-3'") == 0
        async with conn.transaction():
            inquiry = await sdk.submit("resident-3", procedure=PROCEDURE, conn=conn)
    finally:
        await conn.close()
    assert (await sdk.answer(inquiry, timeout=60)).status == "NOT_REGISTERED"


async def test_bulk_inquiry_through_the_outbox_resumes_without_asking_twice(running_platform, pg, connector, sdk):
    """一括照会 through the SDK: one answer per line; a batch cut short (two lines queued, then the caller
    died) and called again queues only the rest — each line reached the hub once."""
    mn, acct = my_number(), account()
    await register_through_portal(running_platform.settings, pg, mn, acct)
    await connector.enrol(AGENCY, "bulk-registered", mn)
    people = ["bulk-registered", "bulk-unregistered", "bulk-not-enrolled", "bulk-other"]
    for local_id in ("bulk-unregistered", "bulk-other"):
        await connector.enrol(AGENCY, local_id, my_number())
    batch = f"bulk-{running_platform.settings.kafka.topic_prefix}"
    first = [await sdk.submit_line(batch, line, people[line - 1], procedure=PROCEDURE) for line in (1, 2)]
    assert first == [await sdk.submit_line(batch, 1, people[0], procedure=PROCEDURE),
                     await sdk.submit_line(batch, 2, people[1], procedure=PROCEDURE)]  # queued once

    seen = []
    answers = await sdk.inquire_batch(batch, people, procedure=PROCEDURE, window=2, timeout=90,
                                      progress=seen.append)

    assert [a.status for a in answers] == ["REGISTERED", "NOT_REGISTERED", "FAILED", "NOT_REGISTERED"]
    assert answers[0].account["account_number"] == acct["account_number"]
    assert "NOT_ENROLLED" in answers[2].detail
    assert [a.inquiry_id for a in answers[:2]] == first and len(seen) == 4
    rows = await connector.runtime.pool.fetch(
        "SELECT batch_line, message_id FROM agency_outbox WHERE batch_id = $1 ORDER BY batch_line", batch)
    assert [r["batch_line"] for r in rows] == [1, 2, 3, 4]  # one row per line, never two
    sent = [r["message_id"] for r in rows if r["message_id"] is not None]
    assert len(sent) == 3
    assert await pg.fetchval("SELECT count(*) FROM hub_messages WHERE message_id = ANY($1::uuid[])", sent) == 3
    again = await sdk.inquire_batch(batch, people, procedure=PROCEDURE, timeout=30)
    assert [a.inquiry_id for a in again] == [a.inquiry_id for a in answers]
    assert await connector.runtime.pool.fetchval("SELECT count(*) FROM agency_outbox WHERE batch_id = $1",
                                                 batch) == 4


async def test_broker_unreachable_rows_wait_then_go_out_exactly_once(running_platform, pg, connector, sdk):
    """What this proves: while the connector cannot produce, inquiries are sealed and WAIT (nothing lost),
    and once it can, each goes out exactly once and is answered once.

    How "broker unreachable" is simulated: the relay's producer is closed (every send fails at once, as
    with a dead connection) and later replaced by a fresh one.  The broker itself is not restarted: the
    embedded broker loses every topic on restart, which would prove nothing about this connector.
    """
    runtime = connector.runtime.runtime
    local_ids = [f"outage-{n}" for n in range(5)]
    for local_id in local_ids:
        await connector.enrol(AGENCY, local_id, my_number())

    async with runtime._relay_lock:  # noqa: SLF001 - swap between relay passes, never during one
        healthy = runtime.producer
        await healthy.stop()
    inquiries = [await sdk.submit(local_id, procedure=PROCEDURE) for local_id in local_ids]

    async def all_sealed():
        return await connector.runtime.pool.fetchval(
            "SELECT count(*) = $2 FROM agency_outbox WHERE inquiry_id = ANY($1::uuid[]) AND status = 'SEALED'",
            inquiries, len(inquiries))

    await eventually(all_sealed)
    await moved_on(runtime.relay_passes.value, what="the outbox relay")  # two relay passes failed meanwhile
    pending = await connector.runtime.pool.fetchval(
        "SELECT count(*) FROM participant_outbox p JOIN agency_outbox a ON a.message_id = p.message_id "
        "WHERE a.inquiry_id = ANY($1::uuid[]) AND p.sent_at IS NULL", inquiries)
    assert pending == len(inquiries)
    health = await connector.runtime.health()
    assert health["outbox_pending"] >= len(inquiries)

    fresh = producer(connector.runtime.settings, linger_ms=2)
    await fresh.start()
    async with runtime._relay_lock:  # noqa: SLF001
        runtime.producer = fresh

    answers = [await sdk.answer(i, timeout=60) for i in inquiries]
    assert {a.status for a in answers} == {"NOT_REGISTERED"}
    # exactly once: one message per inquiry reached the hub, each accepted ...
    message_ids = [r["message_id"] for r in await connector.runtime.pool.fetch(
        "SELECT message_id FROM agency_outbox WHERE inquiry_id = ANY($1::uuid[])", inquiries)]
    assert len(message_ids) == len(inquiries) and None not in message_ids
    hub = await pg.fetch("SELECT message_id, accepted FROM hub_messages WHERE message_id = ANY($1::uuid[])",
                         message_ids)
    assert len(hub) == len(inquiries) and all(r["accepted"] for r in hub)
    inbox = await connector.runtime.pool.fetchval(
        "SELECT count(*) FROM agency_inbox WHERE inquiry_id = ANY($1::uuid[])", inquiries)
    assert inbox == len(inquiries)
    # ... and sent only once: the relay marked every row sent, and after two more relay passes and the
    # hub's barrier, no copy of any of them came back as a REPLAYED dead letter (a relay that re-sends
    # what it already sent would leave one per copy; the primary keys above cannot see that).
    unsent = await connector.runtime.pool.fetchval(
        "SELECT count(*) FROM participant_outbox WHERE message_id = ANY($1::uuid[]) AND sent_at IS NULL", message_ids)
    assert unsent == 0
    await moved_on(runtime.relay_passes.value, what="the outbox relay")
    await hub_barrier(running_platform.settings)
    assert replayed(await dead_letters(running_platform.settings), message_ids) == []


async def test_rows_written_while_the_connector_is_down_go_out_when_it_starts(running_platform):
    # its own agency, database and connectors: the module's connector keeps running for the other tests
    settings = await own_database(running_platform.settings, "agency-late")
    agency = "agency-city-minato"
    async with AgencyConnector(settings, [agency]) as first:
        await first.enrol(agency, "late-1", my_number())
    # stopped gracefully: the connector is gone, the agency keeps writing its outbox
    async with AgencyClient(component_dsn(settings, agency), agency, poll_interval_s=0.5) as sdk:
        inquiry = await sdk.submit("late-1", procedure="child-allowance")
        async with AgencyConnector(settings, [agency]) as again:
            assert (await sdk.answer(inquiry, timeout=90)).status == "NOT_REGISTERED"
            assert await again.runtime.pool.fetchval(
                "SELECT count(*) FROM connector_source_log WHERE source_key = $1", f"inquiry/{inquiry}") == 1


async def test_health_and_metrics_endpoints(running_platform):
    # a connector of its own, with its ops server on a free port
    settings = await own_database(running_platform.settings, "agency2")
    async with AgencyConnector(settings, ["agency-mhlw"], ops_port=0) as c, aiohttp.ClientSession() as http:
        async with http.get(f"{c.runtime.ops_url}/health") as resp:
            body = await resp.json()
            assert resp.status == 200 and body["status"] == "ok" and body["identities"] == ["agency-mhlw"]
        async with http.get(f"{c.runtime.ops_url}/metrics") as resp:
            text = await resp.text()
        assert resp.status == 200
        assert "# TYPE renkei_connector_outbox_pending gauge" in text
        assert parse_text(text)['renkei_connector_up{worker="connector-agency"}'] == 1


async def test_an_inquiry_goes_out_at_its_commit_not_at_a_timer(connector, sdk):
    """The outbox row's commit notifies the connector (a trigger on ``agency_outbox``), and the sealed
    message's commit notifies the relay (``ParticipantRuntime.send(..., conn=)``): with both timers set
    beyond the test's reach, the inquiry is still answered. Before, it waited for the connector's next
    poll (0.5 s) and then for the relay's next timer pass (1 s: it was woken before the row committed)."""
    runtime = connector.runtime.runtime
    await connector.enrol(AGENCY, "resident-prompt", my_number())

    def source_passes() -> float:
        return connector.runtime.metrics.source_passes.value(connector=connector.adapter.name)

    # The counts are read and the timers set in one step (no await between): a pass counted after it read
    # the new timer for its next wait (each loop reads its timer after the pass), so once both loops have
    # counted one more, neither has a timer that could still move the inquiry. (Waiting for one loop and
    # then for the other missed a relay pass made meanwhile, and waited for a second one for an hour.)
    sources, relays = source_passes(), runtime.relay_passes.value()
    connector.adapter.poll_interval_s = 3600.0
    runtime.relay_interval_s = 3600.0
    try:
        await eventually(lambda: source_passes() > sources and runtime.relay_passes.value() > relays,
                         timeout=60, what="a pass of the connector's source and of the outbox relay")
        answer = await sdk.inquire("resident-prompt", procedure=PROCEDURE, timeout=30)
        assert answer.status == "NOT_REGISTERED"
    finally:
        del connector.adapter.poll_interval_s  # the class's again
        runtime.relay_interval_s = RELAY_INTERVAL_S
        connector.runtime.wake(connector.adapter.name)
        runtime.wake_relay()
