"""The leak scanner's positive control: a My Number planted in every encoding it claims is found.

A scanner that finds nothing proves nothing unless it is shown to find what it looks for.  Each
planting below is written out independently of ``infra.tools.leakscan.encodings`` (the oracle is not asked
how to encode), surrounded by bytes of the kinds it lives among (JSON, binary, ciphertext), at every
alignment that matters.  Then the negative side: numbers that were not asked for, and random bytes,
give no hit.
"""

from __future__ import annotations

import base64
import json
import random

import pytest

from infra.domain.validation import generate_my_number
from infra.tools.leakscan import LeakReport, Scanner, encodings

RNG = random.Random(1212)
NUMBERS = sorted({generate_my_number(RNG) for _ in range(50)})
PLANTED = NUMBERS[17]
OTHERS = [n for n in NUMBERS if n != PLANTED]


def filler(n: int) -> bytes:
    """Bytes that can never form part of an encoded number: no digits, letters, NULs or base64 signs."""
    return bytes(RNG.choice(b"!#$%&()*,.:;<>?@[]^`{|}~ \n\t\x01\x7f\xff\xe3") for _ in range(n))


def found(blob: bytes, numbers: list[str] = NUMBERS) -> set[tuple[str, str]]:
    """(number, encoding) of every hit, the person index turned back into the number for the test only."""
    ordered = sorted(set(numbers))
    return {(ordered[person], encoding) for person, encoding in Scanner(numbers).search(blob)}


def b64_at(shift: int, text: bytes, urlsafe: bool = False) -> bytes:
    """``text`` base64-encoded after ``shift`` other bytes (its alignment in a longer value)."""
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return encode(b"\xfb\xff\xbf"[:shift] + text + b"\xfe\xff")  # the padding bytes give + / - _ characters


PLANTINGS: list[tuple[str, str, bytes]] = [
    ("ascii", "json value", json.dumps({"my_number": PLANTED}).encode()),
    ("ascii", "inside a longer digit run", b"ref=99" + PLANTED.encode() + b"77;"),
    ("ascii", "log line", f"2026-11-29 INFO renkei.x: person {PLANTED} asked".encode()),
    ("utf-16", "UTF-16-LE text", f"番号 {PLANTED} です".encode("utf-16-le")),
    ("utf-16", "UTF-16-BE text", f"番号 {PLANTED} です".encode("utf-16-be")),
    ("utf-16", "UTF-16 with BOM", f"[{PLANTED}]".encode("utf-16")),
    ("hex", "hex of the ASCII, lower case", b"\\x" + PLANTED.encode().hex().encode()),
    ("hex", "hex of the ASCII, upper case", PLANTED.encode().hex().upper().encode()),
    ("hex", "hex of the ASCII, odd alignment", b"a" + PLANTED.encode().hex().encode() + b"f"),
    ("hex", "hex of the value, lower case", b"0x" + format(int(PLANTED), "x").encode()),
    ("hex", "hex of the value, upper case", format(int(PLANTED), "X").encode() + b"h"),
    *[("base64", f"base64 at alignment {shift}", b"data:" + b64_at(shift, PLANTED.encode())) for shift in range(3)],
    *[("base64", f"base64url at alignment {shift}", b64_at(shift, PLANTED.encode(), urlsafe=True))
      for shift in range(3)],
    ("base64", "base64 of JSON", base64.b64encode(json.dumps({"n": PLANTED, "k": "v"}).encode())),
    # a base64 value glued to other base64-alphabet characters (a URL path): the run starts off its grid
    *[("base64", f"base64 after {k} path characters", b"GET /" + b"api/v1/"[:k] + b64_at(0, PLANTED.encode()))
      for k in (1, 2, 3)],
]


@pytest.mark.parametrize("encoding, where, planted", PLANTINGS, ids=[p[1] for p in PLANTINGS])
def test_a_planted_number_is_found_in_every_encoding_it_claims(encoding, where, planted):
    blob = filler(RNG.randrange(0, 300)) + planted + filler(RNG.randrange(0, 300))
    assert (PLANTED, encoding) in found(blob), f"{where}: not found"
    assert {number for number, _ in found(blob)} == {PLANTED}  # and nobody else


def test_every_pattern_the_module_lists_is_found():
    """``encodings()`` (the claimed list) and ``Scanner`` (what runs) agree: every listed pattern is found.

    A base64 pattern is the part of an encoding that the number alone determines; it only ever occurs
    inside a longer base64 value, so it is checked inside the base64 plantings (all found above)."""
    carriers = [planted for encoding, _, planted in PLANTINGS if encoding == "base64"]
    for name, patterns in encodings(PLANTED).items():
        for pattern in patterns:
            if name == "base64":
                assert any(pattern in c.replace(b"-", b"+").replace(b"_", b"/") or pattern in c for c in carriers), \
                    pattern
            else:
                assert (PLANTED, name) in found(filler(40) + pattern + filler(40)), (name, pattern)


def test_numbers_not_asked_for_and_random_bytes_give_no_hit():
    blob = filler(100).join(n.encode() for n in OTHERS) + filler(100)
    assert found(blob, [PLANTED]) == set()
    assert {n for n, _ in found(blob)} == set(OTHERS)  # the same blob, asked for all of them
    noise = random.Random(3).randbytes(2_000_000)  # ciphertext-like
    assert found(noise) == set()


def test_a_number_split_by_a_separator_is_not_claimed():
    """Documented limit: 1234-5678-9012 is not searched (the platform never writes it so)."""
    spaced = f"{PLANTED[:4]}-{PLANTED[4:8]}-{PLANTED[8:]}".encode()
    assert found(filler(10) + spaced + filler(10)) == set()


def test_a_report_names_people_by_index_never_by_number():
    report = LeakReport(people=len(NUMBERS))
    for person, encoding in Scanner(NUMBERS).search(filler(5) + PLANTED.encode() + filler(5)):
        report.hits.append({"where": "log x", "person": person, "encoding": encoding})
    assert not report.ok and report.hits == [{"where": "log x", "person": 17, "encoding": "ascii"}]
    assert PLANTED not in json.dumps(report.to_json())
