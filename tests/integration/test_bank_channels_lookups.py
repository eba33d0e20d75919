"""Real banks in every flow (issue 16.9, 16.11, 16.12): numbering and lookups through a bank's files and HTTP channels.

The platform runs the hub, DICJ's desk and the bank simulator as real processes; bank 9001 is connected
through its batch-file channel and bank 9002 through its HTTP channel, each connector in this process
holding its bank's channel lease against the platform's database, as ``renkei bank serve`` does next to
``renkei up`` (the simulator then never acts for these two banks).  Each bank's own system is a small
stand-in here: a back office answering the connector's LKP / NRQ files, and a TLS endpoint answering
the connector's signed calls, both from "their own data" (which accounts are numbered to whom).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from connectors.bank_sim import apply_lookup_at_counter, lookup_notifications, simulator_group
from connectors.bankfiles import bank_file_connector, render_file, write_atomically
from connectors.bankhttp import BankHttpConnector
from connectors.bankhttp_bank import BankChannelClient
from connectors.dicj import ANSWERS_TABLE, answer_row_id
from connectors.jlis_sim import record_death
from connectors.runtime import RetryPolicy
from connectors.serve import BankChannelLease, keep_lease, start_where_the_simulator_is
from infra.crypto.sealing import RowSealer
from infra.domain.disasters import Disaster, declare, today_jst
from infra.domain.policy import BASIS_NUMBERING, DATA_DEPOSIT_ACCOUNT_NUMBERING
from infra.domain.validation import generate_my_number
from infra.platform.keystore import KeyStore
from infra.platform.pgdsn import component_dsn, observer_dsn
from infra.platform.stack import Platform
from infra.tools.harness import eventually
from schemas import types as msg
from streams.client import BusClient
from streams.participant import ParticipantRuntime
from tests.integration.platform_fixtures import correlation_seen_by, isolated_platform
from tests.integration.test_connectors_support import BankEndpoint
from tests.integration.test_lookups import bank_token, customer, number_via_portal

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FILES_BANK, FILES_CODE = "bank-9001", "9001"
HTTP_BANK, HTTP_CODE = "bank-9002", "9002"
REMINDER_S = 5
DEADLINE_S = 90
DIED_ON = datetime(2025, 10, 1).date()
_rng = random.Random(169)


def records(path: Path) -> list[list[str]]:
    return [r for r in csv.reader(path.read_text(encoding="utf-8").splitlines()) if r and r[0] == "2"]


def account(code: str, number: str) -> dict:
    return {"bank_code": code, "branch_code": "110", "account_type": "ORDINARY", "account_number": number,
            "holder_kana": "コバヤシ ミキ"}


class BackOffice:
    """Bank 9001's batch back office: answers LKP (lookups) and NRQ (numbering requests) files from its own data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.numbered: dict[str, list[dict]] = {}  # the bank's token → its numbered accounts
        self.customers: dict[str, int] = {}  # token → accounts it would link on a numbering request
        self.next_morning: set[str] = set()  # tokens whose lookups are answered only once reminded
        self.seen: set[str] = set()
        self.answered: set[str] = set()

    def once(self) -> None:
        for question in sorted((self.root / "outbound").glob("*_*.csv")):
            if question.name in self.seen or question.name[:3] not in ("LKP", "NRQ"):
                continue
            self.seen.add(question.name)
            answers = []
            for r in records(question):
                ref, token = r[1], r[4] if question.name.startswith("LKP") else r[3]
                if ref in self.answered:
                    continue
                if question.name.startswith("LKP"):
                    if token in self.next_morning and r[5] == "0":
                        continue  # tonight's batch missed it; the reminder is answered tomorrow
                    held = self.numbered.get(token, [])
                    answers += [[ref, a["branch_code"], "1", a["account_number"], "ｺﾊﾞﾔｼ ﾐｷ"] for a in held] or \
                        [[ref, "", "", "", ""]]
                else:
                    n = self.customers.get(token, 0)
                    answers.append([ref, "LINKED" if n else "NO_ACCOUNT", str(n)])
                self.answered.add(ref)
            if answers:
                kind = "LAN" if question.name.startswith("LKP") else "NAK"
                write_atomically(self.root / "inbound" / f"{kind}_{question.stem[4:]}.csv",
                                 render_file(kind, FILES_CODE, question.stem, answers))

    async def run(self) -> None:
        while True:
            self.once()
            await asyncio.sleep(0.3)


@dataclass
class HttpBank:
    """Bank 9002's own system behind its HTTP channel: answers lookups and numbering requests, takes notices."""

    numbered: dict[str, list[dict]] = field(default_factory=dict)  # token → numbered accounts
    customers: dict[str, int] = field(default_factory=dict)
    later: bool = False  # accept lookups with 202 and answer them through POST /v1/lookup-answers
    accepted: list[str] = field(default_factory=list)  # references of lookups accepted for later
    notices: list[tuple[str, dict]] = field(default_factory=list)

    async def lookup(self, body: dict) -> web.Response:
        if self.later:
            self.accepted.append(body["reference"])
            return web.Response(status=202)
        held = self.numbered.get(body["person"]["token"], [])
        return web.json_response({"accounts": [{k: v for k, v in a.items() if k != "bank_code"} for a in held]})

    async def numbering(self, body: dict) -> web.Response:
        n = self.customers.get(body["person"]["token"], 0)
        return web.json_response({"status": "LINKED" if n else "NO_ACCOUNT", "accounts_linked": n})

    def notice(self, kind: str) -> Any:
        async def take(body: dict) -> web.Response:
            self.notices.append((kind, body))
            return web.Response(status=204)
        return take


@dataclass
class World:
    platform: Platform
    files: Any
    root: Path
    office: BackOffice
    http: BankHttpConnector
    bank: HttpBank
    client: BankChannelClient
    portal: BusClient
    counters: ParticipantRuntime

    def token(self, mn: str, code: str) -> str:
        return bank_token(self.platform, mn, code)


@contextlib.asynccontextmanager
async def leased(platform: Platform, bank: str, channel: str, runtime: Any, start: Any) -> AsyncIterator[None]:
    """Take the bank over from the simulator as `renkei bank serve` does: lease, offsets, divert, drain."""
    types = sorted(t for adapter in runtime.adapters for t in adapter.handlers())
    lease = BankChannelLease(component_dsn(platform.settings, bank), bank, channel, types)  # as `renkei bank serve`
    await lease.open()
    await lease.acquire(standby=False, stop=asyncio.Event())
    runtime.runtime.divert = lease.divert(runtime.runtime.metrics)
    await start_where_the_simulator_is(platform.settings, runtime.runtime.group, simulator_group(platform.settings),
                                       runtime.runtime.names.inbox(bank))
    lost, stopping = asyncio.Event(), asyncio.Event()
    await start()
    keeper = asyncio.create_task(keep_lease(lease, runtime.runtime, lost, stopping))
    try:
        yield
    finally:
        stopping.set()
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        await lease.release()
        await lease.close()


@pytest.fixture(scope="module")
async def world(endpoints, database, tmp_path_factory) -> AsyncIterator[World]:
    async with isolated_platform(endpoints, database, tmp_path_factory.mktemp("channels"), workers=["hub", "banks", "dicj"],
                                 prefix_letter="k", lookup_deadline_inheritance_s=DEADLINE_S,
                                 lookup_deadline_disaster_s=DEADLINE_S, lookup_reminder_interval_s=REMINDER_S,
                                 numbering_deadline_s=DEADLINE_S) as platform:
        settings = platform.settings
        root = tmp_path_factory.mktemp("bank-9001")
        files = bank_file_connector(settings, FILES_BANK, FILES_CODE, root)
        office = BackOffice(root)
        bank = HttpBank()
        endpoint = BankEndpoint(settings, HTTP_BANK, bank.lookup, more={
            "/v1/lookups": bank.lookup, "/v1/numbering-requests": bank.numbering,
            "/v1/numbering-results": bank.notice("numbering-result"),
            "/v1/lookup-notifications": bank.notice("lookup-notification")})
        async with endpoint:
            http = BankHttpConnector(settings, HTTP_BANK, HTTP_CODE, endpoint.url, timeout_s=5.0,
                                     bank_ca=endpoint.ca_file, token_timeout_s=30.0)
            http.adapter.retry = RetryPolicy(max_attempts=6, base_s=0.2, cap_s=2.0)
            async with leased(platform, FILES_BANK, "bank-files", files, files.start), \
                    leased(platform, HTTP_BANK, "bank-http", http.runtime, http.__aenter__):
                task = asyncio.create_task(office.run())
                counters = ParticipantRuntime(settings, ["bank-9003"], {}, group=f"{uuid.uuid4().hex}.counters")
                await counters.start(consume=False)
                try:
                    async with BankChannelClient(http.url, endpoint.keys, ca_file=endpoint.ca_file) as client, \
                            BusClient(settings, ["portal"], group=f"{settings.kafka.topic_prefix}.portal") as portal:
                        yield World(platform, files, root, office, http, bank, client, portal, counters)
                finally:
                    await counters.stop()
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    await http.__aexit__()
                    await files.stop()


@pytest.fixture
async def pg(world: World) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(observer_dsn(world.platform.settings))  # the operator: every component schema
    yield conn
    await conn.close()


async def newest(folder: Path, prefix: str, contains: str) -> Path | None:
    for path in sorted(folder.glob(f"{prefix}_*.csv"), reverse=True):
        if contains in path.read_text(encoding="utf-8"):
            return path
    return None


# ---- lookups ------------------------------------------------------------------------------------------


async def test_an_heirs_lookup_reaches_both_channels_and_a_next_morning_answer_counts(world, pg):
    w = world
    mn = generate_my_number(_rng)
    await customer(pg, w.platform, mn, {"9000": 1})
    assert (await number_via_portal(w.portal, mn, "9000"))["status"] == "LINKED"
    w.office.numbered[w.token(mn, FILES_CODE)] = [account(FILES_CODE, "0101010")]
    w.office.next_morning.add(w.token(mn, FILES_CODE))
    w.bank.numbered[w.token(mn, HTTP_CODE)] = [account(HTTP_CODE, "0202020")]
    await record_death(pg, KeyStore.for_settings(w.platform.settings).token_authority().token_for(mn, "dicj"),
                       DIED_ON)
    cid = await apply_lookup_at_counter(w.counters, "bank-9003", w.token(mn, "9003"), "INHERITANCE", {
        "application_ref": "CH-HEIR-1", "relationship": "SPOUSE", "date_of_death": DIED_ON,
        "evidence": [{"kind": "RESIDENT_RECORD_REMOVAL", "reference": "RR-1"}]})
    await eventually(lambda: pg.fetchval("SELECT count(*) > 0 FROM bank_lookup_notifications WHERE participant = "
                                         "'bank-9003' AND correlation_id = $1", uuid.UUID(cid)),
                     timeout=DEADLINE_S, what="the notification", interval=0.1)
    [note] = await lookup_notifications(pg, "bank-9003", cid)
    assert (note["status"], note["banks_with_accounts"]) == ("ANSWERED", ["9000", "9001", "9002"])
    assert not note["is_supplement"] and note["banks_not_answered"] == []
    # the file bank got the lookup, missed it, got the reminder the next "morning", answered it: on time
    token = w.token(mn, FILES_CODE)
    asked = [r for f in sorted((w.root / "outbound").glob("LKP_*.csv")) for r in records(f) if r[4] == token]
    assert [r[5] for r in asked][:2] == ["0", "1"] and len({r[1] for r in asked}) == 1  # one reference, two rounds
    assert asked[0][2] == "I" and asked[0][7] == "9003"  # an inheritance lookup; the heir applied at 9003
    lookup = await pg.fetchval("SELECT lookup_correlation FROM dicj_applications WHERE application_ref = 'CH-HEIR-1'")
    late = await pg.fetchval("SELECT late FROM hub_lookup_banks WHERE correlation_id = $1 AND bank_id = $2",
                             lookup, FILES_BANK)
    assert late is False
    # the simulator never answered for the two connected banks
    for bank in (FILES_BANK, HTTP_BANK):  # each bank was shown the lookup under a correlation id of its own
        assert not await pg.fetchval("SELECT count(*) FROM bank_lookups_received WHERE correlation_id = $1 AND "
                                     "participant = $2", correlation_seen_by(w.platform.settings, lookup, "dicj", bank),
                                     bank)
    # an answer to no open lookup is refused line by line; a second answer (to a reminder still in flight)
    # changes nothing: the first one counts
    write_atomically(w.root / "inbound" / "LAN_again.csv", render_file("LAN", FILES_CODE, "again", [
        [str(uuid.uuid4()), "", "", "", ""], [asked[0][1], "", "", "", ""]]))
    rejects = await eventually(lambda: _exists(w.root / "outbound" / "REJ_LAN_again.csv"), timeout=30)
    assert records(rejects)[0][2] == "UNKNOWN_REFERENCE"
    kept = await pg.fetchval("SELECT accounts_ct FROM dicj_lookup_answers WHERE correlation_id = $1 AND bank_code = $2",
                             lookup, FILES_CODE)  # sealed under DICJ's data key: opened as DICJ's desk opens it
    sealer = RowSealer(KeyStore.for_settings(w.platform.settings).data_key, ANSWERS_TABLE)
    assert "0101010" in json.dumps(sealer.open("dicj", answer_row_id(str(lookup), FILES_CODE), "", kept))


async def test_a_lookup_the_http_bank_answers_later_counts(world, pg):
    w = world
    mn = generate_my_number(_rng)
    w.bank.later = True
    try:
        cid = await apply_lookup_at_counter(w.counters, "bank-9003", w.token(mn, "9003"), "DISASTER", {
            "application_ref": "CH-DIS-1", "disaster_id": (await _disaster(pg)), "area_code": "17",
            "designated_bank_codes": [HTTP_CODE, FILES_CODE]})
        reference = await eventually(lambda: _first(w.bank.accepted), timeout=60)
    finally:
        w.bank.later = False
    status, answer = await w.client.answer_lookup(reference, [{"branch_code": "120", "account_type": "ORDINARY",
                                                               "account_number": "0303030",
                                                               "holder_kana": "ｺﾊﾞﾔｼ ﾐｷ"}])
    assert (status, answer["status"]) == (200, "ANSWERED")
    status, again = await w.client.answer_lookup(reference, [])
    assert (status, again["reason"]) == (404, "UNKNOWN_REFERENCE")  # answered once
    status, bad = await w.client.answer_lookup(str(uuid.uuid4()), [{"bank_code": "9000", "branch_code": "1"}])
    assert (status, bad["reason"]) == (400, "INVALID_FIELD")
    await eventually(lambda: pg.fetchval("SELECT count(*) > 0 FROM bank_lookup_notifications WHERE participant = "
                                         "'bank-9003' AND correlation_id = $1", uuid.UUID(cid)),
                     timeout=DEADLINE_S, what="the notification", interval=0.1)
    [note] = await lookup_notifications(pg, "bank-9003", cid)
    assert note["banks_with_accounts"] == [HTTP_CODE] and note["banks_not_answered"] == []


# ---- numbering -------------------------------------------------------------------------------------------


async def test_numbering_at_the_file_banks_counter_comes_back_as_one_result_file(world, pg):
    w = world
    mn, other = generate_my_number(_rng), generate_my_number(_rng)
    await customer(pg, w.platform, mn, {"9000": 1})
    w.bank.customers[w.token(mn, HTTP_CODE)] = 3
    num = render_file("NUM", FILES_CODE, "0001", [
        ["N-1", "cust-n1", mn, "9000 9001 9002", "LINKED", "2"],
        ["N-2", "cust-n2", other, "9000 9001", "", ""],  # this bank named: its own outcome is required
        ["N-3", "cust-n3", other, "9000", "", ""]])
    write_atomically(w.root / "inbound" / "NUM_0001.csv", num)
    result = await eventually(lambda: newest(w.root / "outbound", "NRS", ",N-1,"), timeout=DEADLINE_S)
    rows = {r[3]: (r[4], r[5]) for r in records(result) if r[2] == "N-1"}
    assert rows == {"9000": ("LINKED", "1"), "9001": ("LINKED", "2"), "9002": ("LINKED", "3")}
    assert [(r[1], r[2]) for r in records(w.root / "outbound" / "RES_NUM_0001.csv")] == [("N-1", "ACCEPTED"),
                                                                                       ("N-3", "ACCEPTED")]
    [reject] = records(w.root / "outbound" / "REJ_NUM_0001.csv")
    assert reject[2] == "INVALID_FIELD" and "own_status" in reject[3]
    assert mn not in result.read_text(encoding="utf-8")


async def test_numbering_from_the_portal_reaches_both_channels_and_one_result_comes_back(world, pg):
    w = world
    mn = generate_my_number(_rng)
    w.office.customers[w.token(mn, FILES_CODE)] = 1
    w.bank.customers[w.token(mn, HTTP_CODE)] = 2
    answer = await w.portal.request(
        "portal", type=msg.NUMBERING_REQUEST, to="dicj", subject=await w.portal.token_for("portal", mn),
        body={"bank_codes": [FILES_CODE, HTTP_CODE], "channel": "PORTAL", "receiving_bank_code": None,
              "requested_at": datetime.now(UTC)},
        data_item=DATA_DEPOSIT_ACCOUNT_NUMBERING, basis=BASIS_NUMBERING, timeout=DEADLINE_S)
    assert answer.meta.type == msg.NUMBERING_RESULT
    assert {o["bank_code"]: (o["status"], o["accounts_linked"]) for o in answer.body["outcomes"]} == {
        FILES_CODE: ("LINKED", 1), HTTP_CODE: ("LINKED", 2)}
    nrq = [r for f in sorted((w.root / "outbound").glob("NRQ_*.csv")) for r in records(f)
           if r[3] == w.token(mn, FILES_CODE)]
    assert [r[4] for r in nrq] == ["PORTAL"]


async def test_the_http_bank_files_numbering_and_an_application_and_is_told_the_results(world, pg):
    w = world
    mn, dead = generate_my_number(_rng), generate_my_number(_rng)
    await customer(pg, w.platform, mn, {"9000": 2})
    status, state = await w.client.file_numbering("h-num-1", {"customer_ref": "c-1", "my_number": mn,
                                                              "bank_codes": ["9000", HTTP_CODE],
                                                              "own_outcome": {"status": "LINKED",
                                                                              "accounts_linked": 1}})
    assert (status, state["status"], state["results"]) == (202, "SENT", [])
    status, bad = await w.client.file_numbering("h-num-2", {"customer_ref": "c-1", "my_number": mn,
                                                            "bank_codes": [HTTP_CODE]})
    assert (status, bad["reason"], bad["field"]) == (400, "INVALID_FIELD", "own_outcome")
    status, clash = await w.client.apply_lookup("h-num-1", {"customer_ref": "c-1", "my_number": mn})
    assert (status, clash["reason"]) == (409, "KEY_IN_USE")

    async def done(path: str, key: str) -> dict | None:
        status, state = await w.client.request_state(path, key)
        assert status == 200, state
        return state if state["status"] != "SENT" else None

    state = await eventually(lambda: done("numbering-requests", "h-num-1"), timeout=DEADLINE_S)
    [result] = state["results"]
    assert {o["bank_code"]: o["status"] for o in result["outcomes"]} == {"9000": "LINKED", HTTP_CODE: "LINKED"}
    posted = await eventually(lambda: _first([b for k, b in w.bank.notices if k == "numbering-result" and
                                              b["request_id"] == "h-num-1"]), timeout=30)
    assert posted["outcomes"] == result["outcomes"]
    # an heir's application at the HTTP bank: DICJ's notification is kept and posted
    await customer(pg, w.platform, dead, {"9000": 1})
    assert (await number_via_portal(w.portal, dead, "9000"))["status"] == "LINKED"
    await record_death(pg, KeyStore.for_settings(w.platform.settings).token_authority().token_for(dead, "dicj"),
                       DIED_ON)
    status, state = await w.client.apply_lookup("h-app-1", {
        "kind": "INHERITANCE", "customer_ref": "c-dead", "my_number": dead, "application_ref": "H-HEIR-1",
        "relationship": "CHILD", "date_of_death": DIED_ON.isoformat(),
        "evidence": [{"kind": "DEATH_CERTIFICATE", "reference": "DC-77"}]})
    assert status == 202, state
    state = await eventually(lambda: done("lookup-applications", "h-app-1"), timeout=DEADLINE_S)
    assert state["status"] == "ANSWERED" and state["results"][0]["banks_with_accounts"] == ["9000"]
    posted = await eventually(lambda: _first([b for k, b in w.bank.notices if k == "lookup-notification" and
                                              b["request_id"] == "h-app-1"]), timeout=30)
    assert posted["banks_with_accounts"] == ["9000"] and dead not in str(posted)


async def test_the_file_bank_files_applications_and_reads_dicjs_notifications(world, pg):
    w = world
    dead = generate_my_number(_rng)
    await customer(pg, w.platform, dead, {"9000": 1})
    assert (await number_via_portal(w.portal, dead, "9000"))["status"] == "LINKED"
    await record_death(pg, KeyStore.for_settings(w.platform.settings).token_authority().token_for(dead, "dicj"),
                       DIED_ON)
    lap = render_file("LAP", FILES_CODE, "0001", [
        ["L-1", "I", "c-dead", dead, "CHILD", "DEATH_CERTIFICATE:DC-1 FAMILY_REGISTER:FR-1", DIED_ON.isoformat(),
         "", "", ""],
        ["L-2", "D", "c-dead", dead, "", "", "", "2026-NOWHERE-01", "17", "9000"],
        ["L-3", "I", "c-dead", dead, "COUSIN", "DEATH_CERTIFICATE:DC-1", DIED_ON.isoformat(), "", "", ""]])
    write_atomically(w.root / "inbound" / "LAP_0001.csv", lap)
    first = await eventually(lambda: newest(w.root / "outbound", "LNT", ",L-1,"), timeout=DEADLINE_S)
    refused = await eventually(lambda: newest(w.root / "outbound", "LNT", ",L-2,"), timeout=DEADLINE_S)
    [l1] = [r for r in records(first) if r[2] == "L-1"]
    [l2] = [r for r in records(refused) if r[2] == "L-2"]
    assert (l1[3], l1[4], l1[6], l1[9]) == ("I", "ANSWERED", "9000", "N")
    assert (l2[3], l2[4], l2[5]) == ("D", "REFUSED", "UNKNOWN_DISASTER")
    [reject] = records(w.root / "outbound" / "REJ_LAP_0001.csv")
    assert reject[2] == "INVALID_FIELD" and "relationship" in reject[3]
    assert dead not in first.read_text(encoding="utf-8") + refused.read_text(encoding="utf-8")


# ---- helpers ----------------------------------------------------------------------------------------------


async def _exists(path: Path) -> Path | None:
    return path if path.exists() else None


async def _first(items: list) -> Any:
    return items[0] if items else None


async def _disaster(pg: asyncpg.Connection) -> str:
    today = today_jst()
    await declare(pg, Disaster("2026-CH-01", "channels test", ("17",), today - timedelta(days=1),
                               today + timedelta(days=10)), who="test", reason="test", audit_event=uuid.uuid4())
    return "2026-CH-01"
