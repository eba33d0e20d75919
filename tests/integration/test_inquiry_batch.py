"""Bulk inquiry (一括照会, ``renkei agency inquire-batch``) on a real running platform.

Each test writes a CSV of people, runs the command through ``infra.cli.main`` (or as a real process, killed
mid-batch), and checks the result file line by line and what reached the hub (``hub_messages``: one row per
inquiry the agency sent).  No My Number may appear in the output, the result file, a log or an exception.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from infra.platform.stack import settings_env
from infra.tools.harness import eventually
from tests.integration.test_connectors_support import account, register_through_portal
from tests.integration.test_participant_cli import flags, person, renkei  # noqa: F401 - fixtures
from tests.unit.leakguard import no_personal_data, used  # noqa: F401 - fixture

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_personal_data")]

AGENCY, PROCEDURE = "agency-city-minato", "child-allowance"  # entitled (infra/domain/procedures.toml)
INQUIRY = "provision.inquiry"


def write_people(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["ref", "my_number"])
        out.writerows(rows)
    return path


def read_results(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


async def inquiries_at_hub(pg, agency: str = AGENCY) -> int:
    return await pg.fetchval("SELECT count(*) FROM hub_messages WHERE sender = $1 AND type = $2", agency, INQUIRY)


def bad_check_digit(mn: str) -> str:
    return mn[:-1] + str((int(mn[-1]) + 1) % 10)


async def test_good_unregistered_and_malformed_lines(renkei, person, running_platform, pg, tmp_path):
    good, unregistered = person("good"), person("unregistered")
    malformed = used(bad_check_digit(person("malformed")))
    acct = account()
    await register_through_portal(running_platform.settings, pg, good, acct)
    people = write_people(tmp_path / "people.csv", [("r-good", good), ("r-none", unregistered),
                                                    ("r-bad", malformed), ("r-short", "1234")])
    out = tmp_path / "results.csv"
    before = await inquiries_at_hub(pg)

    code, report, err = await renkei("agency", "inquire-batch", "--agency", AGENCY, "--procedure", PROCEDURE,
                                     "--in", str(people), "--out", str(out))

    assert code == 0, (report, err)
    assert report["status"] == "DONE" and report["lines"] == 4 and report["sent"] == 2
    assert report["counts"] == {"NOT_REGISTERED": 1, "REGISTERED": 1, "REJECTED": 2}
    rows = read_results(out)
    assert [r["line"] for r in rows] == ["1", "2", "3", "4"]
    by_ref = {r["ref"]: r for r in rows}
    assert by_ref["r-good"]["status"] == "REGISTERED"
    assert by_ref["r-good"]["account_number"] == acct["account_number"]
    assert by_ref["r-good"]["bank_code"] == acct["bank_code"] and by_ref["r-good"]["request_id"]
    assert by_ref["r-none"]["status"] == "NOT_REGISTERED" and by_ref["r-none"]["account_number"] == ""
    for ref in ("r-bad", "r-short"):
        assert (by_ref[ref]["status"], by_ref[ref]["reason"]) == ("REJECTED", "INVALID_FIELD")
        assert by_ref[ref]["request_id"] == ""  # never asked
    text = out.read_text(encoding="utf-8")
    assert not any(n in text for n in (good, unregistered, malformed))
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert await inquiries_at_hub(pg) - before == 2  # the malformed lines never left the agency

    # The same command again: the batch is complete, nothing is asked again, the same results are written.
    code, again, _ = await renkei("agency", "inquire-batch", "--agency", AGENCY, "--procedure", PROCEDURE,
                                  "--in", str(people), "--out", str(out))
    assert code == 0 and again["resumed"] and again["sent"] == 0 and again["batch_id"] == report["batch_id"]
    assert read_results(out) == rows
    assert await inquiries_at_hub(pg) - before == 2


async def test_an_unentitled_procedure_refuses_the_whole_batch(renkei, person, pg, tmp_path):
    people = write_people(tmp_path / "people.csv", [(f"r{i}", person(f"p{i}")) for i in range(3)])
    out = tmp_path / "results.csv"
    before = await inquiries_at_hub(pg)
    for procedure, reason in (("income-tax-refund", "PROCEDURE_NOT_ALLOWED"),  # the tax agency's, not the city's
                              ("no-such-procedure", "UNKNOWN_PROCEDURE")):
        code, report, err = await renkei("agency", "inquire-batch", "--agency", AGENCY, "--procedure", procedure,
                                         "--in", str(people), "--out", str(out))
        assert code == 2 and (report["status"], report["reason"]) == ("REJECTED", reason), (report, err)
    assert not out.exists()
    assert await inquiries_at_hub(pg) == before  # not one inquiry sent


async def test_a_named_batch_resumed_with_another_file_is_refused(renkei, person, tmp_path):
    first = write_people(tmp_path / "a.csv", [("r1", "1234")])
    other = write_people(tmp_path / "b.csv", [("r1", "12345")])
    out = tmp_path / "results.csv"
    batch = f"named-{os.getpid()}-{tmp_path.name}"
    code, _, _ = await renkei("agency", "inquire-batch", "--agency", AGENCY, "--procedure", PROCEDURE,
                              "--in", str(first), "--out", str(out), "--batch", batch)
    assert code == 0
    code, report, _ = await renkei("agency", "inquire-batch", "--agency", AGENCY, "--procedure", PROCEDURE,
                                   "--in", str(other), "--out", str(out), "--batch", batch)
    assert code == 2 and report["reason"] == "BATCH_MISMATCH"


async def test_killed_mid_batch_then_resumed_answers_every_line_once(renkei, person, running_platform, pg,
                                                                     flags, tmp_path):  # noqa: F811
    registered = [person(f"reg{i}") for i in range(3)]
    accounts = [account() for _ in registered]
    for mn, acct in zip(registered, accounts, strict=True):
        await register_through_portal(running_platform.settings, pg, mn, acct)
    rows = [(f"r{i}", person(f"p{i}")) for i in range(60)]
    for i, mn in enumerate(registered):
        rows[i * 20] = (f"r{i * 20}", mn)
    rows[7] = ("r7", used(bad_check_digit(person("p7"))))
    people = write_people(tmp_path / "people.csv", rows)
    out = tmp_path / "results.csv"
    before = await inquiries_at_hub(pg)

    env = {**os.environ, **settings_env(running_platform.settings)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "infra.cli", "agency", "inquire-batch", "--agency", AGENCY, "--procedure", PROCEDURE,
        "--in", str(people), "--out", str(out), "--window", "4", "--json", *flags,
        env=env, cwd=Path(__file__).parents[2], stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

    async def sent_some() -> int:
        n = await pg.fetchval("SELECT count(*) FROM inquiry_batch_lines WHERE message_id IS NOT NULL "
                              "AND batch_id IN (SELECT batch_id FROM inquiry_batches WHERE lines = 60)")
        return n if n >= 8 else 0

    try:
        await eventually(sent_some, timeout=180, interval=0.05)
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no clean-up, no result file
        stdout, stderr = await proc.communicate()
    assert proc.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    assert not out.exists()
    sent_before_crash = await pg.fetchval("SELECT count(*) FROM inquiry_batch_lines WHERE message_id IS NOT NULL "
                                          "AND batch_id IN (SELECT batch_id FROM inquiry_batches WHERE lines = 60)")
    assert 8 <= sent_before_crash < 59, "the kill came too late to test a resume"

    code, report, err = await renkei("agency", "inquire-batch", "--agency", AGENCY, "--procedure", PROCEDURE,
                                     "--in", str(people), "--out", str(out))

    assert code == 0, (report, err)
    assert report["resumed"] and report["sent"] == 59 - sent_before_crash
    results = read_results(out)
    assert [int(r["line"]) for r in results] == list(range(1, 61))  # every line, once
    assert [r["ref"] for r in results] == [ref for ref, _ in rows]
    for i, acct in enumerate(accounts):
        r = results[i * 20]
        assert r["status"] == "REGISTERED" and r["account_number"] == acct["account_number"], r
    assert results[7]["reason"] == "INVALID_FIELD"
    assert sum(r["status"] == "NOT_REGISTERED" for r in results) == 56
    # Each valid line reached the hub exactly once across both runs: nobody was asked about twice.
    assert await inquiries_at_hub(pg) - before == 59
    ids = await pg.fetch("SELECT message_id FROM inquiry_batch_lines WHERE batch_id = $1 AND message_id IS NOT NULL",
                         report["batch_id"])
    assert len(ids) == 59
    at_hub = await pg.fetchval("SELECT count(*) FROM hub_messages WHERE message_id = ANY($1::uuid[])",
                               [r["message_id"] for r in ids])
    assert at_hub == 59
    text = out.read_text(encoding="utf-8") + stdout.decode() + stderr.decode() + json.dumps(report)
    assert not any(mn in text for _, mn in rows)
