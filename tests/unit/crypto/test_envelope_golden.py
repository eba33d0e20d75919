"""Golden bytes: the envelopes Renkei writes, pinned by digest, so a refactoring provably changes nothing on the wire.

Each case seals or forwards with every random input fixed (tests/unit/golden_world.py) and compares the
SHA-256 and length of each envelope with the digests this code wrote when the case was added. Covered:
one envelope (``seal``), a fan-out (``seal_multi``), a batch under one signature (``seal_batch``), and the
hub's side: a batch forwarded under one countersignature, one copy of a fan-out, and a leg under ids of its
own (:class:`LegIds`). ``test_envelope_meta.py`` pins the envelope-v1 bytes against the code before v2.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from infra.crypto.envelope import LegIds, Message
from tests.unit.envelope_world import T0
from tests.unit.golden_world import (
    Golden,
    digests,
    golden,  # noqa: F401 - fixture
)

AT = datetime.fromtimestamp(T0, UTC)
INQUIRY = {"procedure_code": "child-allowance", "purpose": None, "requested_at": AT}
LOOKUP = {"receiving_bank_code": None, "requested_at": AT, "deadline": datetime.fromtimestamp(T0 + 30, UTC)}
ARGS = {"subject": "A" * 64, "data_item": "public_funds_account", "basis": "account-registration-act/art9"}
LOOKUP_ARGS = {"subject": "B" * 64, "data_item": "deposit_account_holdings",
               "basis": "deposit-account-management-act/inheritance-lookup"}

GOLDEN = {
    "seal": [("3ce7680fcefebb8f4ef3622e527af70f3b3e4fb02812ae84df950919a92f1565", 486)],
    "seal_multi": [("38ad33df575db5acb1eb501190dc0b938094a6e02a2366f4a90abcf8aea2ac78", 668)],
    "seal_batch": [("86ff98954a7016cf042d6da7b66154bef38a7ee75b02bbdf6591916e50cc80ca", 572),
        ("7179b843b20a09464a11d0837ff515ad38c21a8eb9e714c278009607824a8a50", 735),
        ("a4ffc139161a5850a2d4962977d077a6edfd0befad3cd109d60aa2e7a0948f5b", 520)],
    "forward_batch": [("e034e100eba1abb5c23aa89e501c9aa485eb79a8a72bedee7e3578217bb3fb1c", 707),
        ("2a6b371e8821341450b65007a86f898421823c56c365116710acc0357a4529a7", 655)],
    "forward_fanout_copy": [("06d377aaab4e85a2c42dd8f2a8330c14180311468f1e1e5063e30d2d6f8106a5", 804)],
    "forward_leg": [("06711be6b5b11db701e758f3158be2fb77d7b1a6b9b4aa5d343904a1b37c5279", 936)],
}


def _batch(golden: Golden) -> list[bytes]:
    return golden.sealer().seal_batch([
        Message(INQUIRY, "provision.inquiry", "registry", correlation_id="00000000-0000-4000-8000-000000000002",
                message_id="00000000-0000-4000-8000-000000000001", procedure="child-allowance", **ARGS),
        Message(LOOKUP, "lookup.inheritance", ("bank-1", "bank-2"), message_id="00000000-0000-4000-8000-000000000003",
                **LOOKUP_ARGS),
        Message(INQUIRY, "provision.inquiry", "registry", message_id="00000000-0000-4000-8000-000000000004", **ARGS),
    ])


def _cases(golden: Golden) -> dict[str, list[bytes]]:
    sealer, hub = golden.restart().sealer(), golden.hub()
    batch = _batch(golden)
    return {
        "seal": [sealer.seal(INQUIRY, type="provision.inquiry", to="registry", **ARGS)],
        "seal_multi": [sealer.seal_multi(LOOKUP, type="lookup.inheritance", to=["bank-1", "bank-2"], **LOOKUP_ARGS)],
        "seal_batch": batch,
        "forward_batch": hub.forward_batch([(batch[0], "C" * 64), (batch[2], "D" * 64)]),
        "forward_fanout_copy": [hub.forward(batch[1], "E" * 64, recipient="bank-2")],
        "forward_leg": [hub.forward(batch[1], "F" * 64, recipient="bank-1",
                                    leg=LegIds("00000000-0000-4000-8000-0000000000a1",
                                               "00000000-0000-4000-8000-0000000000a2"))],
    }


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_envelopes_are_byte_identical_to_the_pinned_ones(golden, case):
    assert digests(_cases(golden)[case]) == GOLDEN[case]


def test_the_same_inputs_give_the_same_bytes_twice(golden):
    assert _cases(golden) == _cases(golden)


def test_the_golden_check_can_fail(golden):
    """One signed field changed: other bytes, so a pinned digest would catch a change on the wire."""
    changed = golden.sealer().seal(INQUIRY, type="provision.inquiry", to="registry", **{**ARGS, "subject": "Z" * 64})
    assert hashlib.sha256(changed).hexdigest() != hashlib.sha256(_cases(golden)["seal"][0]).hexdigest()
