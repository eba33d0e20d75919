"""``renkei connector dlq list|redrive`` as a real process, against connectors on the real broker and PostgreSQL.

Three connectors, each in its own schema under its own role (the command names the connector's
participant with ``--participant-id``): a bank's HTTP channel (sink re-drive), an agency outbox (source
re-drive) and a bank's file channel (whose file rejects refuse re-drive: the bank resubmits).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from connectors.agency import AgencyConnector
from connectors.bankfiles import bank_file_connector, render_file, write_atomically
from connectors.bankhttp import BankHttpConnector
from connectors.runtime import RetryPolicy
from connectors.sdk import AgencyClient, InquiryFailed
from infra.core.settings import Settings
from infra.domain.policy import BASIS_REGISTRATION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.ops import high_watermarks, partitions_of, read_range, scan_consumer
from infra.platform.pgdsn import component_dsn
from infra.platform.stack import settings_env
from infra.platform.topics import TopicNames
from infra.tools.harness import eventually
from schemas import types as msg
from streams.client import BusClient
from tests.integration.test_connectors_support import (
    BankEndpoint,
    my_number,
    own_database,
    platform,  # noqa: F401 - the module's fixture
)

pytestmark = pytest.mark.integration

BANK, CODE = "bank-9002", "9002"
FILE_BANK, FILE_CODE = "bank-9001", "9001"
AGENCY = "agency-nta"


class BankSystem:
    """The bank's existence-check logic: refuses with 400 until the bank fixes it (then: its customer holds it)."""

    def __init__(self) -> None:
        self.fixed = False
        self.calls: list[tuple[str, int]] = []  # (Idempotency-Key, HTTP status answered)
        self.endpoint: BankEndpoint | None = None

    async def check(self, body: dict) -> web.Response:
        assert self.endpoint is not None
        status = 200 if self.fixed else 400
        self.calls.append((self.endpoint.calls[-1][0], status))
        if status == 400:
            return web.json_response({"error": "unknown field layout"}, status=400)
        return web.json_response({"result": "CONFIRMED", "holder": True})


@pytest.fixture(scope="module")
async def connectors(platform, tmp_path_factory):
    """The three connectors, each in its own schema of one namespace; yields (settings, bank system, runtimes,
    files root)."""
    settings = await own_database(platform.settings, "ops")
    system = BankSystem()
    async with BankEndpoint(settings, BANK, system.check) as endpoint:
        system.endpoint = endpoint
        http = BankHttpConnector(settings, BANK, CODE, endpoint.url, timeout_s=3.0, bank_ca=endpoint.ca_file)
        http.adapter.retry = RetryPolicy(max_attempts=3, base_s=0.2, cap_s=1.0)
        root = tmp_path_factory.mktemp("bank-9001")
        async with http, AgencyConnector(settings, [AGENCY]) as agency, \
                bank_file_connector(settings, FILE_BANK, FILE_CODE, root) as files:
            yield settings, system, {"bank-http": http.runtime, "agency": agency, "bank-files": files}, root


async def renkei(settings: Settings, participant: str, *argv: str) -> tuple[int, Any, str]:
    """Run ``renkei …`` in a fresh process against the test's broker, prefix and the database of the connector
    serving ``participant`` (its role and schema; PostgreSQL from the environment, as a worker gets it)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "infra.cli", *argv, "--participant-id", participant,
        "--kafka-bootstrap", settings.kafka.bootstrap, "--topic-prefix", settings.kafka.topic_prefix,
        "--state-dir", str(settings.state_dir), env={**os.environ, **settings_env(settings)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=Path(__file__).parents[2])
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    try:
        return proc.returncode, json.loads(text), err.decode()
    except json.JSONDecodeError:
        return proc.returncode, text, err.decode()


async def test_a_dead_delivery_redriven_after_the_bank_fixed_its_endpoint_is_delivered_once(platform, connectors):
    settings, system, runtimes, _ = connectors
    runtime = runtimes["bank-http"]
    account = {"bank_code": CODE, "branch_code": "404", "account_type": "ORDINARY", "account_number": "0004040",
               "holder_kana": "ワタナベ ケン"}
    mn = my_number()
    group = f"{platform.settings.kafka.topic_prefix}.portal-o"
    async with BusClient(platform.settings, ["portal"], group=group) as portal:
        token = await portal.token_for("portal", mn)
        pending = asyncio.create_task(portal.request(
            "portal", type=msg.REGISTRATION_REQUEST, to="registry", subject=token,
            body={"operation": "REGISTER", "account": account, "channel": "PORTAL", "requested_at": datetime.now(UTC)},
            data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION, timeout=180))

        async def dead():
            return await runtime.pool.fetchval("SELECT id FROM connector_dead_letters WHERE connector = 'bank-http'")
        await eventually(dead, timeout=90)

        code, listed, err = await renkei(settings, BANK, "connector", "dlq", "list", "--connector", "bank-http", "--json")
        assert code == 0, err
        [letter] = listed["dead_letters"]
        assert letter["reason"] == "INVALID_FIELD" and letter["direction"] == "sink"
        assert letter["delivery"]["status"] == "DEAD" and letter["delivery"]["attempts"] == 1
        assert letter["ref"].startswith("existence.check/") and letter["redriven_at"] is None
        assert listed["open"]["bank-http"] == 1 and listed["by_reason"] == {"INVALID_FIELD": 1}
        code, table, _ = await renkei(settings, BANK, "connector", "dlq", "list")
        for shown in (json.dumps(listed), table):  # metadata only: no account, holder, token or My Number
            assert not any(v in shown for v in ("0004040", "ワタナベ", "ﾜﾀﾅﾍﾞ", token, mn)), shown

        system.fixed = True
        code, dry, err = await renkei(settings, BANK, "connector", "dlq", "redrive", "--connector", "bank-http",
                                      "--id", str(letter["id"]), "--reason-text", "INC-7 bank fixed its endpoint",
                                      "--dry-run", "--json")
        assert code == 0, err
        assert (dry["dry_run"], dry["matched"], dry["redriven"], dry["refused"]) == (True, 1, 1, 0)
        await asyncio.sleep(1.0)
        assert await runtime.pool.fetchval("SELECT status FROM connector_deliveries WHERE connector = 'bank-http'") \
            == "DEAD"  # a dry run changes nothing
        assert len(system.calls) == 1

        code, done, err = await renkei(settings, BANK, "connector", "dlq", "redrive", "--connector", "bank-http",
                                       "--id", str(letter["id"]), "--reason-text", "INC-7 bank fixed its endpoint",
                                       "--json")
        assert code == 0, err
        assert (done["matched"], done["redriven"], done["items"][0]["outcome"]) == (1, 1, "redriven")
        answer = await pending
    assert answer.body["status"] == "DONE"
    # delivered once after the fix, with the same idempotency key (the message id) as the refused call
    assert [s for _, s in system.calls] == [400, 200] and system.calls[0][0] == system.calls[1][0]
    row = await runtime.pool.fetchrow("SELECT status, attempts FROM connector_deliveries WHERE connector = 'bank-http'")
    assert (row["status"], row["attempts"]) == ("ANSWERED", 1)
    trail = await runtime.pool.fetch("SELECT who, reason, outcome, ops_event FROM connector_redrives "
                                     "WHERE dead_letter_id = $1", letter["id"])
    assert [(t["reason"], t["outcome"]) for t in trail] == [("INC-7 bank fixed its endpoint", "redriven")]
    assert trail[0]["who"] and str(trail[0]["ops_event"]) == done["audit"]["id"]
    events = await ops_events(settings)
    assert [e["dry_run"] for e in events if e["id"] in (dry["audit"]["id"], done["audit"]["id"])] == [True, False]
    event = next(e for e in events if e["id"] == done["audit"]["id"])
    assert event["what"] == "redrive" and event["counts"]["redriven"] == 1 and event["reason"].startswith("INC-7")

    # the history stays: listed with --all, refused when re-driven twice
    code, again, _ = await renkei(settings, BANK, "connector", "dlq", "redrive", "--connector", "bank-http",
                                  "--id", str(letter["id"]), "--reason-text", "twice", "--json")
    [item] = again["items"]
    assert code == 1 and item["outcome"] == "refused" and "already re-driven" in item["message"]
    code, listed, _ = await renkei(settings, BANK, "connector", "dlq", "list", "--connector", "bank-http", "--json")
    assert listed["dead_letters"] == []
    code, listed, _ = await renkei(settings, BANK, "connector", "dlq", "list", "--connector", "bank-http", "--all", "--json")
    assert [d["id"] for d in listed["dead_letters"]] == [letter["id"]] and listed["dead_letters"][0]["redriven_at"]


async def test_an_agency_row_not_enrolled_is_redriven_once_the_person_is_enrolled(connectors):
    settings, _, runtimes, _ = connectors
    agency = runtimes["agency"]
    async with AgencyClient(component_dsn(settings, AGENCY), AGENCY, poll_interval_s=0.5) as sdk:
        inquiry = await sdk.submit("resident-late", procedure="income-tax-refund")

        async def failed():
            try:
                await sdk.answer(inquiry, timeout=1)
            except InquiryFailed:
                return True
            except TimeoutError:
                return False
        await eventually(failed, timeout=30)
        await agency.enrol(AGENCY, "resident-late", my_number())
        code, report, err = await renkei(settings, AGENCY, "connector", "dlq", "redrive", "--connector", "agency",
                                         "--reason", "NOT_ENROLLED", "--reason-text", "enrolled since", "--json")
        assert code == 0, err
        assert report["redriven"] == 1 and report["items"][0]["ref"] == f"inquiry/{inquiry}"
        assert (await sdk.answer(inquiry, timeout=90)).status == "NOT_REGISTERED"
    assert await agency.runtime.pool.fetchval(
        "SELECT count(*) FROM connector_source_log WHERE source_key = $1", f"inquiry/{inquiry}") == 1


async def test_a_file_rejected_whole_refuses_redrive_and_says_what_to_do(connectors):
    settings, _, runtimes, root = connectors
    text = render_file("REG", FILE_CODE, "0001", [["1", "R", "cust-1", my_number(), "101", "1", "1234567", "ｱ",
                                                   "PERSON", "ONLINE_BANKING", "2025-04-01T10:15:00+09:00", "OB-1"]])
    write_atomically(root / "inbound" / "REG_short.csv", text.replace("\r\n8,1\r\n", "\r\n8,2\r\n"))

    async def dead():
        return await runtimes["bank-files"].pool.fetchval(
            "SELECT id FROM connector_dead_letters WHERE connector = 'bank-files' AND reason = 'COUNT_MISMATCH'")
    letter = await eventually(dead, timeout=30)
    code, report, err = await renkei(settings, FILE_BANK, "connector", "dlq", "redrive", "--connector", "bank-files",
                                     "--id", str(letter), "--reason-text", "try", "--json")
    assert code == 1, err
    assert report["items"][0]["outcome"] == "refused" and "REJ_<name>.csv" in report["items"][0]["message"]
    code, listed, _ = await renkei(settings, FILE_BANK, "connector", "dlq", "list", "--reason", "COUNT_MISMATCH", "--json")
    assert [d["id"] for d in listed["dead_letters"]] == [letter]  # still open: nothing was changed


async def test_usage_errors_exit_2(connectors):
    settings = connectors[0]
    code, _, err = await renkei(settings, BANK, "connector", "dlq", "redrive", "--connector", "bank-http", "--reason", "X")
    assert code == 2 and "--reason-text" in err
    code, _, err = await renkei(settings, BANK, "connector", "dlq", "redrive", "--connector", "no-such", "--reason", "X",
                                "--reason-text", "why")
    assert code == 2 and "no connector named" in err


async def ops_events(settings: Settings) -> list[dict]:
    from aiokafka import TopicPartition

    topic = TopicNames(settings.kafka.topic_prefix).ops_audit
    consumer = scan_consumer(settings)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await partitions_of(consumer, topic)]
        marks = await high_watermarks(consumer, tps)
        return [json.loads(r.value) for tp in tps async for r in read_range(consumer, tp, 0, marks[tp])]
    finally:
        await consumer.stop()
