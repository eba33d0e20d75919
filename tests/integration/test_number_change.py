"""番号変更 on a real running platform: a person's tokens survive the replacement of their My Number.

Person "a" registers an account with number A (their card, as on the portal); the hub's operator relinks
A → B (``renkei identity relink``, both numbers on standard input); an agency asking with B finds the
account, the person's provision records continue one chain, and A is refused (NUMBER_RETIRED).  Neither
number appears in any output, log, exception, topic or table (the leak scan reads them all).
"""

from __future__ import annotations

import asyncpg
import pytest

from infra.platform.pgdsn import component_dsn, layout_for
from infra.tools.leakscan import scan
from tests.integration.test_participant_cli import (  # noqa: F401 - fixtures
    as_person,
    flags,
    person,
    registered,
    renkei,
)
from tests.unit.leakguard import no_personal_data, used  # noqa: F401 - fixture

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_personal_data")]

AGENCY, PROCEDURE = "agency-nta", "income-tax-refund"


async def inquire(renkei, number: str):
    return await renkei("agency", "inquire", "--agency", AGENCY, "--procedure", PROCEDURE, "--my-number", "-",
                        stdin=f"{number}\n")


async def relink(renkei, old: str, new: str, *extra: str):
    return await renkei("identity", "relink", "--old", "-", "--new", "-", "--reason", "leaked card (test)", *extra,
                        stdin=f"{old}\n{new}\n")


async def test_a_relinked_person_keeps_account_tokens_and_records(renkei, person, registered, running_platform, pg):
    a, b = person("a"), person("b-new-number")
    code, before, _ = await inquire(renkei, a)
    assert code == 0 and before["status"] == "REGISTERED" and before["account"]["account_number"] == registered
    code, records_before, _ = await as_person(renkei, person, "a", "records")
    assert code == 0

    code, out, err = await relink(renkei, a, b, "--notice", "jlis-2026-000123")
    assert code == 0 and out["status"] == "DONE" and out["via"] == "jlis-notice", (out, err)

    code, after, _ = await inquire(renkei, b)
    assert code == 0 and after["status"] == "REGISTERED", after
    assert after["account"] == before["account"]  # the same person: the registry found the same registration
    code, refused, err = await inquire(renkei, a)
    assert code == 2 and refused["reason"] == "NUMBER_RETIRED", (refused, err)

    # The card (the portal's token for the person) still works, and the records continue one chain.
    code, records, _ = await as_person(renkei, person, "a", "records")
    assert code == 0 and records["chain_ok"] and records["verdict"] in ("OK", "PENDING"), records
    asked = [r for r in records["records"] if r["requester"] == AGENCY]
    earlier = [r for r in records_before["records"] if r["requester"] == AGENCY]
    assert len(asked) == len(earlier) + 2  # the inquiry with B, request and answer; the refused one made none
    assert all(r["verified"] for r in records["records"])

    # Nothing of A or B anywhere: topics, tables (the relink table holds keyed hashes only), logs.
    report = await scan(running_platform.settings, [a, b], [running_platform.settings.state_dir / "logs"])
    assert report.hits == [], report.hits
    row = await pg.fetchrow("SELECT via, notice, actor, reason FROM identity_relinks ORDER BY id DESC LIMIT 1")
    assert (row["via"], row["notice"], row["reason"]) == ("jlis-notice", "jlis-2026-000123", "leaked card (test)")


async def test_relink_refusals_and_who_may_write_a_change(renkei, person, running_platform):
    a, b, c, d = person("ra"), person("rb"), person("rc"), person("rd")
    assert (await relink(renkei, a, b))[0] == 0
    code, out, _ = await relink(renkei, a, c)  # A was replaced: nobody can move it again
    assert code == 2 and out["reason"] == "NUMBER_RETIRED"
    code, out, _ = await relink(renkei, d, b)  # B belongs to a person already
    assert code == 2 and out["reason"] == "NUMBER_IN_USE"
    code, out, _ = await relink(renkei, c, used(c[:-1] + str((int(c[-1]) + 1) % 10)))
    assert code == 2 and out["reason"] == "INVALID_FIELD"
    code, out, err = await renkei("identity", "relink", "--old", c, "--new", "-", "--reason", "x", stdin=f"{d}\n")
    assert code == 2 and "standard input" in err  # a number on the command line is refused (ps would show it)

    # The change is the hub operator's alone: a participant's role (or the read-only ops role) cannot write it.
    settings = running_platform.settings
    table = f'"{layout_for(settings).schema("hub")}".identity_relinks'
    for component in (AGENCY, "portal", "registry"):
        conn = await asyncpg.connect(component_dsn(settings, component))
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f"INSERT INTO {table} (retired_key, current_key, person, via, actor, reason, "
                                   "audit_id) VALUES ('\\x00', '\\x01', '\\x02', 'operator', 'x', 'x', "
                                   "gen_random_uuid())")
        finally:
            await conn.close()
    # ... and the one good change still holds: B gets the person's token, A none.
    code, out, _ = await inquire(renkei, b)
    assert code == 0 and out["status"] == "NOT_REGISTERED"
    code, out, _ = await inquire(renkei, a)
    assert code == 2 and out["reason"] == "NUMBER_RETIRED"
