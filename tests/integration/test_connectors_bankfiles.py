"""Bank batch-file channel on the real broker and PostgreSQL: files in, results/rejects/checks out.

The bank's batch back office runs beside the connector (:class:`BackOffice`): it answers the existence
checks (CHK files) about its own customers — those the REG files enrolled — from its customer data, with
the holder flag, as a bank's overnight job would.  STEP3 registrations go through that check.
"""

from __future__ import annotations

import asyncio
import csv
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.bankfiles import bank_file_connector, parse_file, render_file, write_atomically
from infra.domain.policy import BASIS_REGISTRATION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.platform.metrics_server import fetch_metrics, parse_text, read_endpoint
from infra.platform.stack import WORKERS
from infra.tools.harness import eventually
from schemas import types as msg
from streams.client import BusClient
from tests.integration.test_connectors_support import (
    my_number,
    own_database,
    platform,  # noqa: F401 - the module's fixture
)
from tests.integration.waits import moved_on

pytestmark = pytest.mark.integration

BANK, CODE = "bank-9001", "9001"
CONSENT = ["PERSON", "SIGNED_FORM_AT_COUNTER", "2025-04-01T10:15:00+09:00", "FORM-0001"]


class BackOffice:
    """The bank's side of the file channel: answers CHK files about its customers (``holdings``: customer
    reference → account numbers) with ANS files; checks about people it has no reference for are left to
    the test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.holdings: dict[str, set[str]] = {}
        self.done: set[str] = set()
        self.answered: list[list[str]] = []

    def hold(self, customer_ref: str, number: str) -> None:
        self.holdings.setdefault(customer_ref, set()).add(number)

    def answer_once(self) -> None:
        for check in sorted((self.root / "outbound").glob("CHK_*.csv")):
            if check.name in self.done:
                continue
            self.done.add(check.name)
            answers = []
            for line in read_records(check):
                _, ref, _, _, number, _, customer_ref, _ = line
                if not customer_ref:
                    continue
                exists = any(number in held for held in self.holdings.values())
                answers.append([ref, "CONFIRMED" if exists else "ACCOUNT_NOT_FOUND",
                                "Y" if number in self.holdings.get(customer_ref, ()) else "N"])
            if answers:
                self.answered.extend(answers)
                write_atomically(self.root / "inbound" / f"ANS_{check.stem[4:]}.csv",
                                 render_file("ANS", CODE, check.stem, answers))

    async def run(self) -> None:
        while True:
            self.answer_once()
            await asyncio.sleep(0.3)


@pytest.fixture(scope="module")
async def bank(platform, tmp_path_factory):
    settings = await own_database(platform.settings, "bank")
    root = tmp_path_factory.mktemp("bank-9001")
    runtime = bank_file_connector(settings, BANK, CODE, root)
    async with runtime:
        yield runtime, root


@pytest.fixture(scope="module")
async def office(bank):
    back = BackOffice(bank[1])
    task = asyncio.create_task(back.run())
    yield back
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def drop(root: Path, name: str, text: str) -> Path:
    """The bank's side of the convention: write NAME.csv.part, then rename to NAME.csv."""
    part = root / "inbound" / f"{name}.part"
    part.write_text(text, encoding="utf-8", newline="")
    final = root / "inbound" / name
    os.replace(part, final)
    return final


def read_records(path: Path) -> list[list[str]]:
    return [r for r in csv.reader(path.read_text(encoding="utf-8").splitlines()) if r and r[0] == "2"]


def reg_file(records: list[list[str]], count: int | None = None) -> str:
    return render_file("REG", CODE, "0001", records) if count is None else (
        render_file("REG", CODE, "0001", records).replace(f"\r\n8,{len(records)}\r\n", f"\r\n8,{count}\r\n"))


async def test_registration_file_results_rejects_and_no_my_number_in_outputs(bank, office):
    runtime, root = bank
    numbers = [my_number() for _ in range(4)]
    records = [[str(n + 1), "R", f"cust-{n}", mn, "101", "1", f"{n + 1:07d}", "ﾔﾏﾀﾞ ﾀﾛｳ", *CONSENT]
               for n, mn in enumerate(numbers)]
    for n in range(3):
        office.hold(f"cust-{n}", f"{n + 1:07d}")
    office.hold("cust-0", "0000004")  # record 4: cust-3 files cust-0's account
    records[3][6] = "0000004"
    records.insert(1, ["9", "R", "cust-x", "123456789012", "101", "1", "7654321", "ﾔﾏﾀﾞ", *CONSENT])  # check digit
    records.append(["10", "R", "cust-y", numbers[0], "101", "1", "7654321", "山田", *CONSENT])  # kanji holder
    records.append(["11", "R", "cust-z", numbers[1], "101", "1", "7654321", "ﾔﾏﾀﾞ", "", "", "", ""])  # no consent
    drop(root, "REG_20250401_0001.csv", reg_file(records))

    result = await eventually(lambda: _exists(root / "outbound" / "RES_REG_20250401_0001.csv"), timeout=90)
    assert [(r[1], r[2]) for r in read_records(result)] == [("1", "DONE"), ("2", "DONE"), ("3", "DONE"),
                                                            ("4", "NOT_HOLDER")]
    rejects = read_records(root / "outbound" / "REJ_REG_20250401_0001.csv")
    assert [(r[1], r[2]) for r in rejects] == [("3", "INVALID_FIELD"), ("7", "INVALID_FIELD"), ("8", "INVALID_FIELD")]
    assert "my_number" in rejects[0][3] and "holder_kana" in rejects[1][3] and "consent" in rejects[2][3]
    assert (root / "archive" / "REG_20250401_0001.csv").exists()
    for out in (root / "outbound").iterdir():
        text = out.read_text(encoding="utf-8")
        assert not any(mn in text for mn in numbers + ["123456789012"]), out.name


async def test_half_written_file_is_never_read(bank, office):
    runtime, root = bank
    office.hold("cust-h", "1111111")
    text = reg_file([["1", "R", "cust-h", my_number(), "102", "1", "1111111", "ｽｽﾞｷ ﾊﾅｺ", *CONSENT]])
    for suffix in (".part", ".tmp"):
        (root / "inbound" / f"REG_half.csv{suffix}").write_text(text[: len(text) // 2], encoding="utf-8")
    # two whole source passes after the files were there: each would have read a finished file
    await moved_on(lambda: runtime.metrics.source_passes.value(connector="bank-files"), what="the file channel")
    assert sorted(p.name for p in (root / "inbound").iterdir()) == ["REG_half.csv.part", "REG_half.csv.tmp"]
    assert not (root / "outbound" / "REJ_REG_half.csv").exists()
    (root / "inbound" / "REG_half.csv.tmp").unlink()
    part = root / "inbound" / "REG_half.csv.part"
    part.write_text(text, encoding="utf-8", newline="")
    os.replace(part, root / "inbound" / "REG_half.csv")
    result = await eventually(lambda: _exists(root / "outbound" / "RES_REG_half.csv"), timeout=60)
    assert [r[2] for r in read_records(result)] == ["DONE"]


async def test_dropping_the_same_file_twice_publishes_nothing_twice(bank, office):
    runtime, root = bank
    office.hold("cust-d", "2222222")
    text = reg_file([["1", "R", "cust-d", my_number(), "103", "1", "2222222", "ｻﾄｳ ｼﾞﾛｳ", *CONSENT]])
    drop(root, "REG_dup.csv", text)
    await eventually(lambda: _exists(root / "outbound" / "RES_REG_dup.csv"), timeout=90)
    before = await runtime.pool.fetchval("SELECT count(*) FROM participant_outbox")
    drop(root, "REG_dup.csv", text)  # the bank re-sends the same file

    async def taken_again() -> bool:
        return not (root / "inbound" / "REG_dup.csv").exists()

    await eventually(taken_again)
    await moved_on(lambda: runtime.metrics.source_passes.value(connector="bank-files"), what="the file channel")
    assert await runtime.pool.fetchval("SELECT count(*) FROM participant_outbox") == before


async def test_trailer_count_mismatch_rejects_the_file_whole(bank):
    runtime, root = bank
    drop(root, "REG_short.csv", reg_file([["1", "R", "cust-s", my_number(), "104", "1", "3333333", "ｱ", *CONSENT]],
                                         count=2))
    rejects = await eventually(lambda: _exists(root / "outbound" / "REJ_REG_short.csv"), timeout=30)
    assert read_records(rejects)[0][2] == "COUNT_MISMATCH"
    assert not (root / "outbound" / "RES_REG_short.csv").exists()
    assert await runtime.pool.fetchval("SELECT count(*) FROM connector_dead_letters WHERE reason = 'COUNT_MISMATCH'") == 1


async def test_existence_check_goes_out_as_a_file_and_the_answer_file_comes_back(platform, bank):
    """STEP1 with this bank: registry → CHK file → the bank's ANS file → registry → portal gets DONE."""
    runtime, root = bank
    account = {"bank_code": CODE, "branch_code": "201", "account_type": "ORDINARY", "account_number": "0012345",
               "holder_kana": "タナカ イチロウ"}
    async with BusClient(platform.settings, ["portal"], group=f"{platform.settings.kafka.topic_prefix}.portal-t") as portal:
        token = await portal.token_for("portal", my_number())
        pending = asyncio.create_task(portal.request(
            "portal", type=msg.REGISTRATION_REQUEST, to="registry", subject=token,
            body={"operation": "REGISTER", "account": account, "channel": "PORTAL", "requested_at": datetime.now(UTC)},
            data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION, timeout=90))
        check = await eventually(lambda: _check_for(root, "201", "0012345"), timeout=60)
        parsed = parse_file(check.read_text(encoding="utf-8").replace("1,CHK,", "1,ANS,", 1).replace("\r\n", "\n"),
                            "ANS", CODE)  # only to reuse the structural checks on the CHK layout
        assert parsed.fatal is None
        [line] = read_records(check)
        assert line[2:6] == ["201", "1", "0012345", "ﾀﾅｶ ｲﾁﾛｳ"]
        assert line[6] == "" and len(line[7]) == 64  # not a customer the connector knows; the bank's token
        write_atomically(root / "inbound" / "ANS_0001.csv",
                         render_file("ANS", CODE, "0001", [[line[1], "CONFIRMED", "Y"]]))
        answer = await pending
    assert answer.meta.type == msg.REGISTRATION_RESULT and answer.body["status"] == "DONE"
    # answering the same check again is refused line by line, not sent twice
    write_atomically(root / "inbound" / "ANS_0002.csv",
                     render_file("ANS", CODE, "0002", [[line[1], "CONFIRMED", "Y"]]))
    rejects = await eventually(lambda: _exists(root / "outbound" / "REJ_ANS_0002.csv"), timeout=30)
    assert read_records(rejects)[0][2] == "UNKNOWN_REFERENCE"
    assert uuid.UUID(line[1])


async def test_health_and_metrics_are_the_platform_ones(platform, bank):
    """One metrics system: the connector's series are served with the worker series by infra.platform.metrics,
    whose endpoint file under the state folder is what `renkei status` reads."""
    runtime, _ = bank
    health = await runtime.health()
    assert health["status"] == "ok" and health["worker"] == "connector-bank-files"
    assert [a["name"] for a in health["adapters"]] == ["bank-files"]
    assert health["identities"] == [BANK] and health["processed"] >= 1
    found = read_endpoint(platform.settings.state_dir, os.getpid())
    assert found is not None and found.endpoint == runtime.ops_url and found.worker == "connector-bank-files"
    values = await fetch_metrics(found.metrics)
    w = 'worker="connector-bank-files"'
    assert values[f'renkei_connector_published_total{{{w},connector="bank-files",type="registration.request"}}'] >= 3
    assert values[f'renkei_connector_up{{{w}}}'] == 1
    assert values[f'renkei_connector_dead_letters_total{{{w},connector="bank-files",direction="source",'
                  f'reason="COUNT_MISMATCH"}}'] == 1
    assert values[f'renkei_messages_in_total{{{w}}}'] >= 1  # the participant runtime's series, same exposition


async def test_result_deadline_reports_no_answer_then_the_late_answers(platform, bank, office):
    """The registry is stopped: the RES_ file goes out at the deadline with NO_ANSWER, and the answers
    that come once the registry is back go out in LATE_ files, each record reported once."""
    runtime, root = bank
    adapter = runtime.adapters[0]
    adapter.result_deadline_s = 3.0
    records = [[ref, "R", f"cust-{ref}", my_number(), "105", "1", f"{n:07d}", "ｷﾑﾗ ﾀｸﾔ", *CONSENT]
               for n, ref in enumerate(["late-1", "late-2"], start=1)]
    for n, ref in enumerate(["late-1", "late-2"], start=1):
        office.hold(f"cust-{ref}", f"{n:07d}")
    await platform.stop_worker("registry")
    try:
        drop(root, "REG_deadline.csv", reg_file(records))
        result = await eventually(lambda: _exists(root / "outbound" / "RES_REG_deadline.csv"), timeout=60)
        rows = read_records(result)
        assert [(r[1], r[2]) for r in rows] == [("late-1", "NO_ANSWER"), ("late-2", "NO_ANSWER")]
        assert "LATE_REG_deadline_<n>.csv" in rows[0][3]
    finally:
        platform.start_worker(next(w for w in WORKERS if w.name == "registry"))
        adapter.result_deadline_s = 300.0

    async def late_answers():
        found = {r[1]: r[2] for f in sorted((root / "outbound").glob("LATE_REG_deadline_*.csv"))
                 for r in read_records(f)}
        return found if len(found) == 2 else None

    assert await eventually(late_answers, timeout=180) == {"late-1": "DONE", "late-2": "DONE"}
    late_files = sorted((root / "outbound").glob("LATE_REG_deadline_*.csv"))
    assert sum(len(read_records(f)) for f in late_files) == 2  # each late record reported once
    assert read_records(result) == rows  # RES_ was not rewritten
    values = parse_text(await runtime.metrics_text())
    w = 'worker="connector-bank-files",connector="bank-files"'
    assert values[f"renkei_connector_unanswered_total{{{w}}}"] == 2
    assert values[f"renkei_connector_late_answers_total{{{w}}}"] == 2


async def _exists(path: Path) -> Path | None:
    return path if path.exists() else None


async def _check_for(root: Path, branch: str, number: str) -> Path | None:
    """The CHK file asking about this account (the file tests' STEP3 checks are in the same folder)."""
    for check in sorted((root / "outbound").glob("CHK_*.csv")):
        if any(r[2] == branch and r[4] == number for r in read_records(check)):
            return check
    return None
