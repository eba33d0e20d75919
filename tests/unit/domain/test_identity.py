"""番号変更 (infra.domain.identity): the person's tokens survive a number change; the replaced number is refused."""

from __future__ import annotations

import random

import pytest

from infra.core.errors import Rejection
from infra.crypto.tokens import TokenAuthority
from infra.domain.identity import NumberChanges
from infra.domain.validation import generate_my_number
from tests.unit.leakguard import no_personal_data, used  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("no_personal_data")

RNG = random.Random(13)


def people(n: int) -> list[str]:
    return [used(generate_my_number(RNG)) for _ in range(n)]


def authority() -> TokenAuthority:
    return TokenAuthority(bytes(range(32)), bytes(range(32, 64)))


IDS = iter(range(1, 10**6))


def applied(changes: NumberChanges, *relinks) -> None:
    changes.apply([{"id": next(IDS), "retired_key": r.retired_key, "current_key": r.current_key,
                    "person": r.person} for r in relinks])


def test_a_new_number_gets_the_same_tokens_and_the_old_one_is_refused():
    a, b, c, stranger = people(4)
    tokens = authority()
    changes = NumberChanges(tokens)
    tokens.resolver = changes.resolve
    applied(changes, changes.relink(a, b))

    # token_P = AES-SIV(K_P, person id): the same person id is the same token for every participant
    assert changes.person_of(b) == tokens.person_id(b) == tokens.link_id(a)
    with pytest.raises(Rejection) as refused:
        tokens.person_id(a)
    assert refused.value.code == "NUMBER_RETIRED" and a not in str(refused.value)
    assert tokens.person_id(stranger) == tokens.link_id(stranger)  # everyone else: their own number's derivation

    applied(changes, changes.relink(b, c))  # a second change: still the first number's person
    assert tokens.person_id(c) == tokens.link_id(a)
    for retired in (a, b):
        with pytest.raises(Rejection, match="NUMBER_RETIRED"):
            tokens.person_id(retired)


def test_a_relink_refuses_a_retired_old_number_and_a_new_number_in_use():
    a, b, c, d = people(4)
    changes = NumberChanges(authority())
    applied(changes, changes.relink(a, b))
    with pytest.raises(Rejection, match="NUMBER_RETIRED"):
        changes.relink(a, c)  # a is gone: nobody can move it again
    for taken in (b, a):
        with pytest.raises(Rejection, match="NUMBER_IN_USE"):
            changes.relink(c, taken)
    with pytest.raises(Rejection, match="NUMBER_IN_USE"):
        changes.relink(d, d)


def test_the_rows_hold_no_number_and_only_this_authority_opens_them():
    a, b = people(2)
    tokens = authority()
    row = NumberChanges(tokens).relink(a, b)
    raw = row.retired_key + row.current_key + row.person
    for n in (a, b):
        assert n.encode() not in raw and bytes.fromhex(f"{int(n):024x}") not in raw
    assert tokens.link_id(a) not in raw  # the person id is sealed
    other = NumberChanges(TokenAuthority(bytes(range(1, 33)), bytes(range(33, 65))))
    applied(other, row)
    assert other.number_key(b) != row.current_key  # keyed: another authority's hash of b differs
    assert other.resolve(b) is None


def test_refresh_reads_only_new_rows():
    a, b = people(2)
    changes = NumberChanges(authority())
    row = changes.relink(a, b)

    class Db:
        def __init__(self):
            self.asked = []

        async def fetch(self, _sql, since):
            self.asked.append(since)
            return [{"id": 7, "retired_key": row.retired_key, "current_key": row.current_key,
                     "person": row.person}] if since < 7 else []

    import asyncio

    db = Db()
    asyncio.run(changes.refresh(db))
    asyncio.run(changes.refresh(db))
    assert db.asked == [0, 7]
    assert changes.resolve(b) is not None
