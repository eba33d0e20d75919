"""The participants' CLI (``renkei bank|portal|agency|dicj …``) against a real running platform.

One platform for the module (hub, registry and simulated banks as real processes on the real broker and
PostgreSQL); every command runs through ``infra.cli.main`` exactly as typed, pointed at the platform with
the configuration flags, its stdout and stderr captured, secrets on its standard input.  Every My Number
used is registered and may appear in no output, log record or exception message.  Each test makes the
people, cards and accounts it needs (fixtures ``person``, ``registered``): the tests pass in any order.
The person's commands take their card and PIN (a My Number alone is refused); ``portal card …`` are the
card issuer's.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.commands import exit_code, normalise_my_number, split_codes, subcommand, worst
from infra.cli import build_parser, main
from infra.platform.pgdsn import public_dsn
from infra.platform.stack import settings_env
from infra.tools.harness import eventually
from tests.integration.test_connectors_support import RNG, my_number
from tests.unit.leakguard import no_personal_data, used  # noqa: F401 - fixture

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_personal_data")]


class People:
    """The My Numbers one test acts for, by name (registered with the leak guard), and their cards' PINs."""

    def __init__(self) -> None:
        self.numbers: dict[str, str] = {}
        self.pins: dict[str, str] = {}
        self.cards: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        if name not in self.numbers:
            self.numbers[name] = used(my_number())
        return self.numbers[name]


def account_args(bank: str = "9000", holder: str = "ヤマダ タロウ") -> list[str]:
    return ["--bank", bank, "--branch", f"{RNG.randrange(1, 1000):03d}", "--type", "ordinary",
            "--number", f"{RNG.randrange(10**7):07d}", "--holder", holder]


@pytest.fixture(scope="module")
def flags(running_platform) -> list[str]:
    s = running_platform.settings
    # PostgreSQL without any secret: where the server is (the passfile and prefixes come from the environment)
    return ["--kafka-bootstrap", s.kafka.bootstrap, "--pg-dsn", public_dsn(s.pg_dsn), "--state-dir", str(s.state_dir),
            "--topic-prefix", s.kafka.topic_prefix, "--participants-file", str(s.participants_file)]


@pytest.fixture
def person() -> People:
    return People()


@pytest.fixture
def renkei(capsys, flags, monkeypatch, person, running_platform):
    """``await renkei("portal", "register", …, stdin="1234\n")`` → (exit code, JSON object or the table text,
    stderr).

    After the test: none of the test's My Numbers appeared in anything the commands printed."""
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: no wrapped cells
    for name, value in settings_env(running_platform.settings).items():  # PostgreSQL, as a worker gets it
        monkeypatch.setenv(name, value)
    output: list[str] = []

    async def run(*argv: str, as_json: bool = True, stdin: str = "") -> tuple[int, object, str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        patience = [] if "--timeout" in argv else ["--timeout", "120"]  # a loaded CI machine: the CLI default is 30
        code = await asyncio.to_thread(main, [*argv, *patience, *flags, *(["--json"] if as_json else [])])
        out, err = capsys.readouterr()
        output.extend((out, err))
        return code, (json.loads(out) if as_json else out), err

    run.output = output  # type: ignore[attr-defined]
    yield run
    leaked = [name for name, mn in person.numbers.items() if any(mn in text for text in output)]
    assert not leaked, f"My Numbers of {leaked} appeared in the CLI's output"


async def card_of(renkei, person: People, name: str) -> str:
    """The person's portal card (issued once, as the card issuer does: My Number and PIN on stdin)."""
    if name not in person.cards:
        card, pin = f"card-{name}-{RNG.randrange(16**8):08x}", f"{RNG.randrange(10_000):04d}"
        code, out, _ = await renkei("portal", "card", "issue", "--card", card, "--my-number", "-", "--pin", "-",
                                    stdin=f"{person(name)}\n{pin}\n")
        assert code == 0 and out["state"] == "ACTIVE", out
        person.cards[name], person.pins[name] = card, pin
    return person.cards[name]


async def as_person(renkei, person: People, name: str, *argv: str, pin: str | None = None,
                    **kw) -> tuple[int, object, str]:
    """``renkei portal <argv> --card <their card> --pin -`` with the card's PIN (or ``pin``) on stdin."""
    card = await card_of(renkei, person, name)
    return await renkei("portal", *argv, "--card", card, "--pin", "-", stdin=f"{pin or person.pins[name]}\n", **kw)


@pytest.fixture
async def registered(renkei, person) -> str:
    """Person "a" with a seeded account at bank 9000, registered through the portal with their card; the
    account number."""
    acct = account_args("bank-9000")
    code, out, _ = await renkei("bank", "seed-account", *acct, "--my-number", person("a"))
    assert code == 0 and out["created"], out
    code, out, err = await as_person(renkei, person, "a", "register", *acct)
    assert code == 0 and out["status"] == "DONE", (out, err)
    return acct[acct.index("--number") + 1]


# --------------------------------------------------------------------------- pure logic


def test_exit_codes_and_parsing():
    assert exit_code("registration", "DONE") == 0
    assert exit_code("registration", "HOLDER_MISMATCH") == 2
    assert exit_code("registration", "NOT_REGISTERED") == 2  # CHANGE / DELETE with nothing registered
    assert exit_code("registration", "NOT_HOLDER") == 2 and exit_code("registration", "ACCOUNT_CLOSED") == 2
    assert exit_code("registration", "TIMEOUT") == 1  # the bank never answered the registry's check
    assert exit_code("inquiry", "NOT_REGISTERED") == 0  # an answer: the person has no account
    assert exit_code("inquiry", "BLOCKED") == 2
    assert exit_code("inquiry", "REJECTED") == 2
    assert exit_code("inquiry", "UNKNOWN") == 1
    assert exit_code("numbering", "NO_ACCOUNT") == 0
    assert worst([0, 2, 0]) == 2 and worst([2, 1]) == 1 and worst([]) == 0
    assert split_codes("9000, 9001 bank-9002,9000") == ["9000", "9001", "bank-9002"]
    mn = used(my_number())
    assert normalise_my_number(f" {mn[:4]}-{mn[4:8]} {mn[8:]} ") == mn


def test_other_modules_can_add_to_a_group():
    parser = build_parser()

    async def run(settings, args):
        return 0

    subcommand("bank", "example", run, "an example").add_argument("--channel", choices=["files", "http"])
    args = parser.parse_args(["bank", "example", "--channel", "files", "--json", "--state-dir", "/x"])
    assert args.run is run and args.channel == "files" and args.json and args.state_dir == "/x"
    args = parser.parse_args(["portal", "numbering", "--card", "card-x", "--pin", "-", "--banks", "9000,9001"])
    assert args.bank_codes == "9000,9001" and not hasattr(args, "banks")  # --banks here: the command's banks


# --------------------------------------------------------------------------- the flows


async def test_seed_account_then_register(renkei, person):
    mn = person("a")
    acct = account_args("bank-9000")
    code, out, _ = await renkei("bank", "seed-account", *acct, "--my-number", mn)
    assert code == 0, out
    assert out["status"] == "DONE" and out["created"] and out["customer_linked"] and out["bank"] == "bank-9000"
    assert out["account"]["bank_code"] == "9000" and out["account"]["account_type"] == "ORDINARY"
    assert out["account"]["account_number"] == acct[acct.index("--number") + 1]

    code, out, _ = await renkei("bank", "seed-account", *acct)  # the same data again: nothing changes
    assert code == 0 and out["created"] is False and out["customer_linked"] is False
    code, out, _ = await renkei("bank", "seed-account", *acct, "--closed")
    assert code == 2 and out["reason"] == "ACCOUNT_EXISTS"

    code, out, err = await as_person(renkei, person, "a", "register", *acct)
    assert code == 0, (out, err)
    assert out["status"] == "DONE" and out["reason"] is None and out["operation"] == "REGISTER"
    assert out["request_id"] and err == ""


async def test_register_with_a_wrong_holder_or_someone_elses_account_is_rejected(renkei, person):
    acct = account_args("9001")
    assert (await renkei("bank", "seed-account", *acct, "--my-number", person("b")))[0] == 0
    wrong = acct[:-1] + ["スズキ ハナコ"]
    code, out, err = await as_person(renkei, person, "b", "register", *wrong)
    assert code == 2, out
    assert out["status"] == "HOLDER_MISMATCH" and out["reason"] == "HOLDER_MISMATCH"
    assert "HOLDER_MISMATCH" in err and len(err.strip().splitlines()) == 1
    # the right name, but the bank's records say the account is b's, not d's
    code, out, err = await as_person(renkei, person, "d", "register", *acct)
    assert code == 2 and out["status"] == "NOT_HOLDER" and out["reason"] == "NOT_HOLDER", out


async def test_an_entitled_agency_registers_alongside_a_procedure(renkei, person):
    acct = account_args("9002")
    assert (await renkei("bank", "seed-account", *acct, "--my-number", person("e")))[0] == 0
    code, out, err = await renkei("agency", "register", "--agency", "agency-nta", "--my-number", person("e"), *acct)
    assert code == 0, (out, err)
    assert out["status"] == "DONE" and out["operation"] == "REGISTER" and out["request_id"]
    code, out, err = await renkei("agency", "change", "--agency", "agency-city-minato", "--my-number", person("e"),
                                  *acct)
    assert code == 2 and out["status"] == "REJECTED" and out["reason"] == "UNAUTHORISED", out


async def test_agency_inquire_gets_the_account(renkei, person, registered):
    code, out, _ = await renkei("agency", "inquire", "--agency", "agency-nta", "--procedure", "income-tax-refund",
                                "--my-number", person("a"),
                                "--item", "public-funds-account")
    assert code == 0, out
    assert out["status"] == "REGISTERED" and out["agency"] == "agency-nta" and out["item"] == "public_funds_account"
    assert out["account"]["account_number"] == registered
    code, table, _ = await renkei("agency", "inquire", "--agency", "agency-nta", "--procedure", "income-tax-refund",
                                  "--my-number", person("a"),
                                  as_json=False)
    assert code == 0 and "REGISTERED" in table and registered in table


async def test_suspended_agency_is_rejected_by_the_hub(renkei, person):
    code, out, err = await renkei("agency", "inquire", "--agency", "agency-suspended", "--procedure", "child-allowance",
                                  "--my-number", person("a"))
    assert code == 2, out
    assert out["status"] == "REJECTED" and out["reason"] == "SUSPENDED" and out["account"] is None
    assert err.startswith("renkei: agency inquire rejected: SUSPENDED")


async def test_portal_records_with_the_chain_verified(renkei, person, registered):
    code, out, _ = await renkei("agency", "inquire", "--agency", "agency-nta", "--procedure", "income-tax-refund",
                                "--my-number", person("a"))
    assert code == 0 and out["status"] == "REGISTERED", out  # a provision, to be listed below
    code, out, _ = await as_person(renkei, person, "a", "records")
    assert code == 0, out
    assert out["chain_ok"] is True and out["problems"] == [] and out["status"] == "OK"
    assert out["verdict"] in ("OK", "PENDING")  # PENDING: the hub's next checkpoint will cover the newest records
    assert out["records"] and all(r["verified"] for r in out["records"])
    assert any(r["requester"] == "agency-nta" and r["provider"] == "registry" for r in out["records"])
    nta = next(r for r in out["records"] if r["requester"] == "agency-nta")
    assert nta["requester_name"] == {"ja": "国税庁 還付金担当", "en": "National Tax Agency refunds"}
    code, table, _ = await as_person(renkei, person, "a", "records", as_json=False)
    assert code == 0 and ("OK: every record" in table or "PENDING: " in table)
    assert "National Tax Agency refunds" in table


async def test_numbering_at_several_banks_then_lookups_name_the_banks(renkei, person):
    mn = person("c")
    for bank in ("9000", "9000", "9001"):
        assert (await renkei("bank", "seed-account", *account_args(bank), "--my-number", mn))[0] == 0

    # several banks from the portal: through DICJ, ONE consolidated result
    code, out, _ = await as_person(renkei, person, "c", "numbering", "--banks", "9000,bank-9001,9002")
    assert code == 0, out
    assert out["status"] == "DONE"
    assert [(b["bank_code"], b["status"], b["accounts_linked"]) for b in out["banks"]] == [
        ("9000", "LINKED", 2), ("9001", "LINKED", 1), ("9002", "NO_ACCOUNT", 0)]
    assert len({b["request_id"] for b in out["banks"]}) == 1

    # 相続時照会: the death on the (simulated) resident record, then the heir applies at bank 9003's counter
    code, out, _ = await renkei("bank", "apply-lookup", "--bank", "9003", "--kind", "inheritance", "--my-number", mn,
                                "--relationship", "child", "--evidence", "death-certificate:DC-CLI-1",
                                "--died-on", "2025-12-01", "--ref", "CLI-HEIR-0")
    assert code == 2 and (out["status"], out["reason"]) == ("REFUSED", "DEATH_NOT_CONFIRMED"), out
    code, out, _ = await renkei("dicj", "record-death", "--my-number", mn, "--died-on", "2025-12-01")
    assert code == 0 and out["status"] == "DONE", out
    code, out, _ = await renkei("bank", "apply-lookup", "--bank", "9003", "--kind", "inheritance", "--my-number", mn,
                                "--relationship", "child", "--evidence", "death-certificate:DC-CLI-1",
                                "--died-on", "2025-12-01", "--ref", "CLI-HEIR-1")
    assert code == 0, out
    assert (out["status"], out["kind"], out["application_ref"]) == ("ANSWERED", "INHERITANCE", "CLI-HEIR-1")
    assert out["banks_with_accounts"] == ["9000", "9001"] and out["banks_not_answered"] == []
    assert "account" not in json.dumps(out).replace("banks_with_accounts", "")  # which banks, never accounts

    # 災害時照会: only under a declared disaster (ops), to the banks the depositor designates
    code, out, _ = await as_person(renkei, person, "c", "disaster-lookup", "--disaster-id", "2026-CLI-01",
                                "--area", "17204", "--designated-banks", "9000,9002")
    assert code == 2 and out["reason"] == "UNKNOWN_DISASTER", out
    code, out, err = await renkei("disaster", "declare", "--id", "2026-CLI-01", "--name", "CLI test", "--areas", "17",
                                  "--from", "2026-01-01", "--until", "2099-12-31", as_json=False)
    assert code == 2 and "--reason is required" in err  # an operator's command: nothing declared without why
    code, out, _ = await renkei("disaster", "declare", "--id", "2026-CLI-01", "--name", "CLI test", "--areas", "17",
                                "--from", "2026-01-01", "--until", "2099-12-31", "--reason", "announced")
    assert code == 0 and out["created"] and out["audit"]["id"], out
    code, out, _ = await as_person(renkei, person, "c", "disaster-lookup", "--disaster-id", "2026-CLI-01",
                                "--area", "17204", "--designated-banks", "9000,9002")
    assert code == 0 and out["banks_with_accounts"] == ["9000"], out
    code, out, _ = await renkei("bank", "apply-lookup", "--bank", "9002", "--kind", "disaster", "--my-number", mn,
                                "--disaster-id", "2026-CLI-01", "--area", "15100", "--designated-banks", "9001")
    assert code == 2 and out["reason"] == "OUTSIDE_DISASTER_AREA", out
    code, out, _ = await renkei("disaster", "list")
    assert code == 0 and [d["id"] for d in out["disasters"]] == ["2026-CLI-01"]

    # DICJ's ledger: each application, its status and tallies, no person
    code, out, _ = await renkei("dicj", "lookup")
    assert code == 0, out
    by_ref = {a["application_ref"]: a for a in out["applications"]}
    assert by_ref["CLI-HEIR-0"]["status"] == "REFUSED" and by_ref["CLI-HEIR-0"]["banks_asked"] == 0
    assert by_ref["CLI-HEIR-1"]["status"] == "ANSWERED" and by_ref["CLI-HEIR-1"]["banks_with_accounts"] == [
        "9000", "9001"]
    assert by_ref["CLI-HEIR-1"]["answering"] == by_ref["CLI-HEIR-1"]["banks_asked"] == 5  # bank-8999 takes no part


async def test_delete_then_inquire_finds_nothing(renkei, person, registered):
    code, out, _ = await as_person(renkei, person, "a", "delete")
    assert code == 0 and out["status"] == "DONE", out
    code, out, _ = await renkei("agency", "inquire", "--agency", "agency-city-minato", "--procedure", "child-allowance",
                                "--my-number", person("a"))
    assert code == 0 and out["status"] == "NOT_REGISTERED" and out["account"] is None, out
    code, out, _ = await as_person(renkei, person, "a", "delete")
    assert code == 2 and out["reason"] == "NOT_REGISTERED", out


async def test_a_bad_my_number_is_refused_at_the_edge(renkei, person):
    good = person("bad-base")
    bad = person.numbers["bad"] = used(good[:11] + str((int(good[11]) + 1) % 10))
    code, out, err = await renkei("portal", "card", "issue", "--card", "card-bad", "--my-number", "-", "--pin", "-",
                                  stdin=f"{bad}\n1234\n")
    assert code == 2 and out["reason"] == "INVALID_FIELD" and "check digit" in out["detail"]
    assert bad not in json.dumps(out, ensure_ascii=False) + err
    code, out, _ = await renkei("agency", "inquire", "--agency", "agency-nta", "--procedure", "income-tax-refund",
                                "--my-number", "12345")
    assert code == 2 and out["detail"] == "my_number: must be 12 ASCII digits"


async def test_no_answer_in_time_is_an_error(renkei, person, registered):
    code, out, err = await renkei("agency", "inquire", "--agency", "agency-nta", "--procedure", "income-tax-refund",
                                  "--my-number", person("a"),
                                  "--timeout", "0.001")
    assert code == 1 and out["status"] == "TIMEOUT", out
    assert err.startswith("renkei: agency inquire failed: TIMEOUT") and "Traceback" not in err


def test_stack_not_running_is_one_line(tmp_path):
    mn = used(my_number())
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_")}
    done = subprocess.run([sys.executable, "-m", "infra.cli", "agency", "inquire", "--agency", "agency-nta",
                           "--procedure", "income-tax-refund", "--my-number", mn,
                           "--state-dir", str(tmp_path / "nothing")], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).parents[2], timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1
    assert "renkei up --detach" in done.stderr
    assert mn not in done.stderr


# --------------------------------------------------------------------------- the person's card (13.11)


async def test_a_my_number_alone_is_refused_for_the_persons_commands(renkei, person, capsys):
    """The attack: act as the person on the portal with their My Number and no card. Refused at the edge;
    nothing is filed; the person with their card, around it, is served."""
    acct = account_args("9003")
    mn = person("f")
    assert (await renkei("bank", "seed-account", *acct, "--my-number", mn))[0] == 0
    for argv in (["portal", "register", "--my-number", mn, *acct], ["portal", "records", "--my-number", "-"],
                 ["portal", "delete", "--my-number", "-"], ["portal", "notices", "--my-number", "-"]):
        with pytest.raises(SystemExit) as exited:
            await renkei(*argv, stdin=f"{mn}\n")
        assert exited.value.code == 2
        err = capsys.readouterr().err
        renkei.output.append(err)
        assert "--card" in err and mn not in err
    code, out, _ = await renkei("agency", "inquire", "--agency", "agency-nta", "--procedure", "income-tax-refund",
                                "--my-number", mn)
    assert code == 0 and out["status"] == "NOT_REGISTERED"  # nothing was filed for them
    code, out, _ = await as_person(renkei, person, "f", "register", *acct)
    assert code == 0 and out["status"] == "DONE", out
    pin = person.pins["f"]
    code, out, _ = await renkei("portal", "records", "--card", person.cards["f"], "--pin", pin)
    assert code == 2 and out["reason"] == "INVALID_FIELD" and pin not in json.dumps(out)  # the PIN: stdin only


async def test_wrong_pins_at_the_cli_lock_the_card_and_the_counter_unlocks_it_for_the_holder_only(renkei, person):
    card = await card_of(renkei, person, "g")
    wrong = f"{(int(person.pins['g']) + 1) % 10_000:04d}"
    seen = [(await as_person(renkei, person, "g", "records", pin=wrong))[1] for _ in range(3)]
    assert [o["reason"] for o in seen] == ["WRONG_PIN", "WRONG_PIN", "CARD_LOCKED"]
    assert "2 more wrong PIN(s) lock the card" in seen[0]["detail"]
    code, out, _ = await as_person(renkei, person, "g", "records")
    assert code == 2 and out["reason"] == "CARD_LOCKED"  # the right PIN no longer helps
    new_pin = f"{(int(person.pins['g']) + 7) % 10_000:04d}"
    code, out, _ = await renkei("portal", "card", "unlock", "--card", card, "--my-number", "-", "--pin", "-",
                                stdin=f"{person('someone-else')}\n{new_pin}\n")
    assert code == 2 and out["reason"] == "NOT_CARD_HOLDER"
    code, out, _ = await renkei("portal", "card", "unlock", "--card", card, "--my-number", "-", "--pin", "-",
                                stdin=f"{person('g')}\n{new_pin}\n")
    assert code == 0 and out["state"] == "ACTIVE", out
    assert (await as_person(renkei, person, "g", "records"))[1]["reason"] == "WRONG_PIN"  # the old PIN is gone
    person.pins["g"] = new_pin
    assert (await as_person(renkei, person, "g", "records"))[0] == 0
    code, out, _ = await renkei("portal", "card", "report-lost", "--card", card)
    assert code == 0 and out["state"] == "SUSPENDED"
    assert (await as_person(renkei, person, "g", "records"))[1]["reason"] == "CARD_SUSPENDED"
    code, out, _ = await renkei("portal", "card", "lock", "--card", "card-never-issued")
    assert code == 2 and out["reason"] == "UNKNOWN_CARD"


async def test_card_issue_takes_its_secrets_from_stdin_only_and_once_per_id(renkei, person):
    card = await card_of(renkei, person, "h")
    code, out, err = await renkei("portal", "card", "issue", "--card", card, "--my-number", "-", "--pin", "-",
                                  stdin=f"{person('h')}\n1234\n")
    assert code == 2 and out["reason"] == "CARD_EXISTS"
    code, out, err = await renkei("portal", "card", "issue", "--card", f"{card}-2", "--my-number", person("h"),
                                  "--pin", "-", stdin="1234\n")
    assert code == 2 and out["reason"] == "INVALID_FIELD" and "standard input" in out["detail"]


async def test_card_commands_are_refused_on_a_machine_without_the_portals_keys(renkei, person, running_platform,
                                                                              tmp_path, monkeypatch):
    """Who may run them: the card issuer on the portal's machine. A bank's machine (its own keys only) may not."""
    card = await card_of(renkei, person, "j")
    bank_machine = tmp_path / "bank-keys"
    shutil.copytree(running_platform.settings.resolved_keys_dir, bank_machine)
    (bank_machine / "portal.keyset").unlink()
    monkeypatch.setenv("RENKEI_KEYS_DIR", str(bank_machine))
    code, out, _ = await renkei("portal", "card", "issue", "--card", f"{card}-2", "--my-number", "-", "--pin", "-",
                                stdin=f"{person('i')}\n1234\n")
    assert code == 2 and out["reason"] == "UNAUTHORISED" and "portal" in out["detail"]
    code, out, _ = await renkei("portal", "card", "report-lost", "--card", card)
    assert code == 2 and out["reason"] == "UNAUTHORISED"


async def test_portal_notices_show_what_the_registry_told_the_person(renkei, person, running_platform):
    """An agency registers the person's account alongside a procedure (§4): the registry's notice reaches the
    portal (a portal connector stores what arrives in its inbox) and the person reads it with their card."""
    from connectors.portal import PortalConnector

    acct = account_args("9002")
    assert (await renkei("bank", "seed-account", *acct, "--my-number", person("e")))[0] == 0
    code, out, err = await renkei("agency", "register", "--agency", "agency-nta", "--my-number", person("e"), *acct)
    assert code == 0 and out["status"] == "DONE", (out, err)
    async with PortalConnector(running_platform.settings):
        async def arrived():
            code, out, _ = await as_person(renkei, person, "e", "notices")
            return out if code == 0 and out["notices"] else None

        out = await eventually(arrived, timeout=90, interval=1.0)
    (registered,) = [n for n in out["notices"] if n["kind"] == "REGISTRATION"]
    assert (registered["event"], registered["status"], registered["party"]) == ("REGISTER", "DONE", "agency-nta")
    assert out["account"]["bank_code"] == "9002" and out["account"]["filed_by"] == "agency-nta"
    assert out["unread"] >= 1
    code, table, _ = await as_person(renkei, person, "e", "notices", "--mark-read", as_json=False)
    assert code == 0 and "REGISTRATION" in table and "National Tax Agency refunds" in table
    assert (await as_person(renkei, person, "e", "notices"))[1]["unread"] == 0
