"""The participant runtime's outbox relay wakes when a row is committed, not on a timer.

A row stored in the caller's own transaction (``ParticipantRuntime.send(..., conn=)``: the agency
connector's publish, DICJ's sweeps, the bank simulator's delayed answers) becomes visible only at the
caller's commit; the runtime NOTIFYs in that transaction (``infra.platform.pgnotify``) and the relay
sends the row then. The relay's safety timer is set far beyond the test's wait here, so only the
notification can explain a row that is sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from infra.crypto.envelope import Message
from infra.domain.policy import BASIS_PROVISION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.domain.validation import generate_my_number
from infra.platform.keystore import KeyStore
from infra.platform.stack import Platform
from infra.tools.bench import PROCEDURE
from infra.tools.harness import eventually
from schemas import types as msg
from streams.participant import ParticipantRuntime
from tests.integration.platform_fixtures import isolated_platform

pytestmark = pytest.mark.integration

NO_TIMER_S = 3600.0  # the relay's safety pass, out of the test's reach


@pytest.fixture(scope="module")
async def platform(endpoints, database, tmp_path_factory) -> AsyncIterator[Platform]:
    async with isolated_platform(endpoints, database, tmp_path_factory.mktemp("relay"), workers=[]) as p:
        yield p


@pytest.fixture
async def agency(platform: Platform) -> AsyncIterator[tuple[ParticipantRuntime, str]]:
    agency_id = next(p.id for p in platform.participants if p.kind.value == "agency")
    runtime = ParticipantRuntime(platform.settings, [agency_id], {}, group=f"{platform.settings.kafka.topic_prefix}.r")
    runtime.relay_interval_s = NO_TIMER_S
    await runtime.start(consume=False)
    try:
        yield runtime, agency_id
    finally:
        await runtime.stop()


def _inquiry(platform: Platform, agency_id: str, n: int) -> Message:
    import random

    token = KeyStore.for_settings(platform.settings).token_authority().token_for(
        generate_my_number(random.Random(n)), agency_id)
    return Message(body={"procedure_code": PROCEDURE, "purpose": None, "requested_at": datetime.now(UTC)},
                   type=msg.PROVISION_INQUIRY, to="registry", subject=token, data_item=DATA_PUBLIC_FUNDS_ACCOUNT,
                   basis=BASIS_PROVISION, procedure=PROCEDURE)


async def _sent(runtime: ParticipantRuntime, ids: list[str]) -> bool:
    assert runtime.pool is not None
    rows = await runtime.pool.fetch("SELECT sent_at FROM participant_outbox WHERE message_id = ANY($1::uuid[])", ids)
    return len(rows) == len(ids) and all(r["sent_at"] is not None for r in rows)


async def test_a_row_stored_in_the_callers_transaction_is_relayed_at_its_commit(platform, agency):
    runtime, agency_id = agency
    assert runtime.pool is not None
    for n in range(3):  # several commits in a row, each relayed without a timer pass
        async with runtime.pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            ids = await runtime.send(agency_id, [_inquiry(platform, agency_id, n)], conn=conn)
            passes = runtime.relay_passes.value()
            await tx.commit()
        await eventually(lambda ids=ids: _sent(runtime, ids), timeout=20, interval=0.05,
                         what="the committed row to be relayed")
        assert runtime.relay_passes.value() > passes


async def test_a_rolled_back_row_is_never_sent_and_wakes_nothing(platform, agency):
    runtime, agency_id = agency
    assert runtime.pool is not None
    passes = runtime.relay_passes.value()
    async with runtime.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        ids = await runtime.send(agency_id, [_inquiry(platform, agency_id, 99)], conn=conn)
        await tx.rollback()
    # Then a committed one: once it is relayed, the rolled-back one had every chance to be too.
    committed = await runtime.send(agency_id, [_inquiry(platform, agency_id, 100)])
    await eventually(lambda: _sent(runtime, committed), timeout=20, interval=0.05, what="the committed row")
    check: asyncpg.Record | None = await runtime.pool.fetchrow(
        "SELECT count(*) AS n FROM participant_outbox WHERE message_id = ANY($1::uuid[])", ids)
    assert check is not None and check["n"] == 0
    assert runtime.relay_passes.value() == passes + 1  # the committed send's wake-up alone: no pass for the rollback
