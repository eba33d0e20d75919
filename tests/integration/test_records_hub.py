"""The running hub checkpoints provision records by itself; ``renkei portal records`` verifies against it.

Hub, registry and banks run as real processes (checkpoint interval 1 s) on the real broker and PostgreSQL.
A person registers and an agency asks for their account; the person's records go from PENDING to OK when
the hub's checkpoint covers them.  Then the insider attack of issue 13 — the agency's records deleted, the
rest re-hashed, the head moved, with SQL — and ``renkei portal records`` says TAMPERED (exit 1), while a
second person's traffic goes on and verifies.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from connectors.portal_cards import CardStore
from connectors.portal_schema import migrate_portal
from infra.cli import main
from infra.domain.policy import BASIS_PROVISION, BASIS_REGISTRATION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.platform.pgdsn import component_dsn, observer_dsn
from infra.platform.stack import settings_env
from infra.records.provisions import ProvisionStore
from schemas import types as msg
from streams.client import BusClient
from tests.integration.platform_fixtures import isolated_platform
from tests.integration.records_world import overwrite, rehash_from
from tests.integration.test_connectors_support import RNG, hold_account, my_number
from tests.unit.leakguard import no_personal_data, used  # noqa: F401 - fixture

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_personal_data")]

AGENCY = "agency-city-minato"
PROCEDURE = "child-allowance"  # AGENCY is entitled to it (infra/domain/procedures.toml)
PIN = "2580"
CARDS: dict[str, str] = {}
"""My Number → the person's portal card: `renkei portal records` takes the card and PIN, not a My Number."""


@pytest.fixture(scope="module")
async def platform(endpoints, database, tmp_path_factory):
    env = pytest.MonkeyPatch()
    env.setenv("RENKEI_RECORDS_CHECKPOINT_INTERVAL_S", "1")  # the hub worker reads it at start
    try:
        async with isolated_platform(endpoints, database, tmp_path_factory.mktemp("records")) as p:
            env.undo()
            yield p
    finally:
        env.undo()


@pytest.fixture(scope="module")
async def bus(platform):
    async with BusClient(platform.settings, ["portal", AGENCY],
                         group=f"{platform.settings.kafka.topic_prefix}.records-clients") as client:
        yield client


async def register_and_inquire(platform, bus: BusClient, mn: str) -> None:
    account = {"bank_code": "9000", "branch_code": "101", "account_type": "ORDINARY",
               "account_number": f"{RNG.randrange(10**7):07d}", "holder_kana": "ヤマダ タロウ"}
    conn = await asyncpg.connect(observer_dsn(platform.settings))  # the simulated bank's own data
    try:
        await hold_account(platform.settings, conn, mn, account)  # the person's own account at the bank
    finally:
        await conn.close()
    now = datetime.now(UTC)
    answer = await bus.request("portal", type=msg.REGISTRATION_REQUEST, to="registry",
                               subject=await bus.token_for("portal", mn), data_item=DATA_PUBLIC_FUNDS_ACCOUNT,
                               basis=BASIS_REGISTRATION, body={"operation": "REGISTER", "account": account,
                                                               "channel": "PORTAL", "requested_at": now})
    assert answer.body["status"] == "DONE"
    answer = await bus.request(AGENCY, type=msg.PROVISION_INQUIRY, to="registry",
                               subject=await bus.token_for(AGENCY, mn), data_item=DATA_PUBLIC_FUNDS_ACCOUNT,
                               basis=BASIS_PROVISION,
                               body={"procedure_code": PROCEDURE, "purpose": None, "requested_at": now},
                               procedure=PROCEDURE)
    assert answer.body["status"] == "REGISTERED"
    CARDS[mn] = f"card-{uuid.uuid4().hex[:10]}"  # the card issuer's work (renkei portal card issue)
    pool = await asyncpg.create_pool(component_dsn(platform.settings, "portal"), min_size=1, max_size=2)
    try:
        await migrate_portal(pool)
        await CardStore(pool).issue(CARDS[mn], await bus.token_for("portal", mn), PIN)
    finally:
        await pool.close()


async def portal_records(platform, capsys, mn: str) -> tuple[int, dict]:
    s = platform.settings
    flags = ["--kafka-bootstrap", s.kafka.bootstrap, "--state-dir", str(s.state_dir),
             "--topic-prefix", s.kafka.topic_prefix, "--participants-file", str(s.participants_file), "--json"]
    capsys.readouterr()
    stdin, sys.stdin = sys.stdin, io.StringIO(f"{PIN}\n")
    try:
        with pytest.MonkeyPatch.context() as env:  # PostgreSQL as a worker gets it: the environment
            for name, value in settings_env(s).items():
                env.setenv(name, value)
            code = await asyncio.to_thread(main, ["portal", "records", "--card", CARDS[mn], "--pin", "-",
                                                  "--timeout", "120", *flags])
    finally:
        sys.stdin = stdin
    out, _ = capsys.readouterr()
    assert mn not in out
    return code, json.loads(out)


async def until_ok(platform, capsys, mn: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        code, out = await portal_records(platform, capsys, mn)
        assert code == 0 and out["verdict"] in ("OK", "PENDING"), out
        if out["verdict"] == "OK":
            return out
        assert time.monotonic() < deadline, "the hub made no checkpoint covering the records"
        await asyncio.sleep(0.5)


async def test_the_hub_checkpoints_and_the_insider_attack_is_detected(platform, bus, capsys):
    alice, bob = used(my_number()), used(my_number())
    await register_and_inquire(platform, bus, alice)
    out = await until_ok(platform, capsys, alice)
    assert out["checkpoint"]["published"] and out["pending"] == 0 and out["problems"] == []
    assert {r["state"] for r in out["records"]} == {"CHECKPOINTED"}
    assert any(r["requester"] == AGENCY for r in out["records"])

    # the insider: delete the agency's records, re-hash the rest, move the head (plain SQL)
    token = await bus.token_for("portal", alice)
    pool = await asyncpg.create_pool(observer_dsn(platform.settings), min_size=1, max_size=2)
    attacker = await asyncpg.connect(observer_dsn(platform.settings))  # the database superuser
    try:
        store = ProvisionStore(pool)
        kept = [r for r in await store.for_person(token, include_not_disclosed=True) if r.requester != AGENCY]
        await overwrite(attacker, token, rehash_from(kept))
        assert (await store.verify_chain(token)).ok  # the database alone is fooled, as in issue 13
    finally:
        await attacker.close()
        await pool.close()
    code, out = await portal_records(platform, capsys, alice)
    assert code == 1 and out["status"] == "TAMPERED" and out["verdict"] == "TAMPERED"
    assert "the chain head is not signed by the records key (moved head)" in out["problems"]
    assert any("checkpoint #" in p for p in out["problems"])
    assert not any(r["requester"] == AGENCY for r in out["records"])

    # good traffic goes on: another person's exchange, checkpointed by the hub, verifies
    await register_and_inquire(platform, bus, bob)
    out = await until_ok(platform, capsys, bob)
    assert {r["state"] for r in out["records"]} == {"CHECKPOINTED"}
    assert platform.check_children() == []  # the hub (and its checkpoint task) still runs
    log = (platform.settings.state_dir / "logs" / "hub.log").read_text()
    # the hub saw the moved head too, and left it out of its checkpoints (it never launders a tampering)
    assert "1 moved head(s) left out of the checkpoint as tampered {'moved_back': 1}" in log
    assert "Traceback" not in log and token not in log
