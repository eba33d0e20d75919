"""Bulk inquiry's pure parts: reading the people, the batch's keyed digests, result lines and the result file."""

from __future__ import annotations

import csv

import pytest

from connectors.commands import normalise_my_number
from connectors.inquiry_batch import (
    RESULT_COLUMNS,
    LineResult,
    batch_digest,
    read_people,
    result_from_answer,
    write_results,
)
from infra.core.errors import ValidationError
from infra.domain.validation import generate_my_number
from tests.unit.leakguard import no_personal_data, used  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("no_personal_data")


def numbers(n: int) -> list[str]:
    import random

    rng = random.Random(16)
    return [used(generate_my_number(rng)) for _ in range(n)]


def test_people_are_read_with_their_refs_and_bad_cells_become_problems(tmp_path):
    good, other = numbers(2)
    bad = used(good[:-1] + str((int(good[-1]) + 1) % 10))
    path = tmp_path / "people.csv"
    path.write_bytes(("\ufeffRef,My_Number,name\n"
                      f"a,{good},x\nb,{other[:4]}-{other[4:8]}-{other[8:]},y\nc,{bad},z\nd,,w\n").encode())

    people, content = read_people(path, normalise_my_number)

    assert content == path.read_bytes()
    assert [(p.line, p.ref) for p in people] == [(1, "a"), (2, "b"), (3, "c"), (4, "d")]
    assert [p.my_number for p in people[:2]] == [good, other]  # hyphens as written on a card are fine
    assert people[2].my_number is None and "check digit" in people[2].problem
    assert people[3].my_number is None and people[3].problem
    assert all(bad not in (p.problem or "") and bad not in repr(p) for p in people)


def test_a_file_without_a_my_number_column_is_refused(tmp_path):
    path = tmp_path / "people.csv"
    path.write_text("ref,number\na,1\n")
    with pytest.raises(ValidationError, match="my_number column"):
        read_people(path, normalise_my_number)


def test_batch_ids_are_keyed_and_bound_to_agency_procedure_and_content():
    content = ("my_number\n" + numbers(1)[0] + "\n").encode()
    key, other_key = b"k" * 32, b"o" * 32
    batch, fingerprint = batch_digest(key, "agency-a", "child-allowance", content)
    assert batch_digest(key, "agency-a", "child-allowance", content) == (batch, fingerprint)  # stable: resumable
    others = [batch_digest(other_key, "agency-a", "child-allowance", content),
              batch_digest(key, "agency-b", "child-allowance", content),
              batch_digest(key, "agency-a", "public-assistance", content),
              batch_digest(key, "agency-a", "child-allowance", content + b"\n")]
    assert len({batch, *(b for b, _ in others)}) == 5 and len({fingerprint, *(f for _, f in others)}) == 5
    assert batch.startswith("b-") and len(batch) == 26


def test_answers_become_result_lines():
    registered = result_from_answer(3, "r3", "provision.response",
                                    {"status": "REGISTERED", "account": {"bank_code": "9000", "account_number": "1"}},
                                    "req")
    assert (registered.status, registered.reason, registered.account["bank_code"]) == ("REGISTERED", None, "9000")
    blocked = result_from_answer(4, None, "provision.response", {"status": "BLOCKED", "account": None}, "req")
    assert (blocked.status, blocked.reason) == ("BLOCKED", "BLOCKED")
    refused = result_from_answer(5, None, "rejection.notice",
                                 {"reason_code": "PROCEDURE_NOT_ALLOWED", "message": "not entitled"}, "req")
    assert (refused.status, refused.reason, refused.detail) == ("REJECTED", "PROCEDURE_NOT_ALLOWED", "not entitled")


def test_the_result_file_has_one_line_per_person_in_order_and_is_private(tmp_path):
    out = tmp_path / "results.csv"
    write_results(out, [LineResult(2, "b", "NOT_REGISTERED", request_id="x"),
                        LineResult(1, "a", "REGISTERED", account={"bank_code": "9000", "branch_code": "001",
                                                                  "account_type": "ordinary",
                                                                  "account_number": "1234567",
                                                                  "holder_kana": "ヤマダ タロウ"}, request_id="y")])
    with out.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == RESULT_COLUMNS
    assert [r[:3] for r in rows[1:]] == [["1", "a", "REGISTERED"], ["2", "b", "NOT_REGISTERED"]]
    assert rows[1][5:10] == ["9000", "001", "ordinary", "1234567", "ヤマダ タロウ"]
    assert out.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]  # no temporary file left
