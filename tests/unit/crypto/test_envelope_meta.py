"""Envelope v2: the procedure and the outcome in the signed metadata, and legs forwarded under ids of their own.

- An envelope that names neither a procedure nor an outcome is byte-identical to what the code before v2
  wrote (golden digests produced by that code with the same deterministic inputs), so old senders and old
  recipients keep working.
- The procedure and the outcome are covered by the origin signature: added, removed or changed, the
  envelope is refused at the hub and at the recipient.
- A leg forwarded with :class:`LegIds` carries no id of the origin's in the clear, still verifies end to
  end (the origin's ids, procedure and outcome sealed to the recipient), and every part of it is bound.
"""

from __future__ import annotations

import copy
import hashlib
import secrets
import uuid
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infra.core.errors import Reason
from infra.crypto import keys, layout
from infra.crypto.envelope import LEG_KEY_LIFETIME_S, LegIds, Message, Sealer, peek
from schemas import codec
from tests.unit.envelope_world import (
    T0,
    example_body,
    rejected,
    world,  # noqa: F401 - fixture
)
from tests.unit.golden_world import fixed_keyset
from tests.unit.leakguard import no_personal_data  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("no_personal_data")

PROCEDURE = "child-allowance"


# --- golden bytes ---------------------------------------------------------------------------------

# SHA-256 and length of the two envelopes below as the code before envelope v2 sealed them (main at
# 6ed031a, same deterministic keys, ids, clock, data key, nonces and HPKE stand-in).
# Since the lookup bodies gained `reminder` (lookup.inheritance v2, written as 0: one byte more), the
# second envelope's body is one byte longer and both batch signatures differ; the envelope layout is unchanged
# (before: 7706b004…e8769/520, 01c643b9…68913/701).
GOLDEN = [("074d52b7cfcc549dc4a3601f5516ceff34a27a906a9692664017b1b8e3fd246e", 520),
          ("f2bb1d486856b4f6b2edb9a76d3e5e21759e20d779dcae8ad139281c7e679337", 702)]


@pytest.fixture
def deterministic(monkeypatch):
    """Every random input of sealing fixed: HPKE replaced by a stand-in, data keys and nonces all zero."""
    monkeypatch.setattr(keys.EncryptionPublicKey, "seal", lambda self, plaintext, info: hashlib.sha256(info).digest()
                        + plaintext)
    monkeypatch.setattr(secrets, "token_bytes", lambda n=32: bytes(n))
    monkeypatch.setattr(AESGCM, "generate_key", staticmethod(lambda bit_length: bytes(bit_length // 8)))
    root = keys.RootAuthority(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32)))
    sets = {p: fixed_keyset(p) for p in ("agency-a", "registry", "bank-1", "bank-2")}
    directory = keys.KeyDirectory.verify_and_load(
        root.snapshot([e for k in sets.values() for e in k.public_entries()], now=datetime.fromtimestamp(T0, UTC)),
        root.public_key)
    return Sealer(sets["agency-a"], directory, clock=lambda: T0)


def _golden_messages(**extra) -> list[Message]:
    at = datetime.fromtimestamp(T0, UTC)
    return [
        Message({"procedure_code": PROCEDURE, "purpose": None, "requested_at": at}, "provision.inquiry", "registry",
                "A" * 64, "public_funds_account", "account-registration-act/art9",
                correlation_id="00000000-0000-4000-8000-000000000002",
                message_id="00000000-0000-4000-8000-000000000001", **extra),
        Message({"receiving_bank_code": None, "requested_at": at, "deadline": datetime.fromtimestamp(T0 + 30, UTC)},
                "lookup.inheritance", ("bank-1", "bank-2"), "B" * 64, "deposit_account_holdings",
                "deposit-account-management-act/inheritance-lookup",
                message_id="00000000-0000-4000-8000-000000000003"),
    ]


def test_an_envelope_without_the_new_fields_is_byte_identical_to_before(deterministic):
    sealed = deterministic.seal_batch(_golden_messages())
    assert [(hashlib.sha256(e).hexdigest(), len(e)) for e in sealed] == GOLDEN
    assert all(e[2:10] == codec.fingerprint("envelope", 1) for e in sealed)  # still written as v1


def test_the_golden_check_can_fail(deterministic):
    """The same inputs with a procedure: another schema version, other bytes."""
    sealed = deterministic.seal_batch(_golden_messages(procedure=PROCEDURE))
    assert hashlib.sha256(sealed[0]).hexdigest() != GOLDEN[0][0]
    assert sealed[0][2:10] == codec.fingerprint("envelope", 2)


# --- procedure and outcome are signed -------------------------------------------------------------


def test_procedure_travels_signed_and_reaches_the_recipient(world):
    sealed = world.seal(procedure=PROCEDURE)
    assert peek(sealed).procedure == PROCEDURE
    meta = world.ingress.verify(sealed).meta
    assert meta.procedure == PROCEDURE
    opened = world.opener("registry").receive(world.forward(sealed))
    assert opened.meta.procedure == PROCEDURE and opened.body["procedure_code"] == example_body(
        "provision.inquiry")["procedure_code"]


@pytest.mark.parametrize("field, before, after", [
    ("procedure", PROCEDURE, "public-assistance"),  # flipped to another entitled-looking code
    ("procedure", PROCEDURE, None),  # stripped
    ("procedure", None, PROCEDURE),  # added to an envelope signed without one
    ("outcome", "NOT_REGISTERED", "REGISTERED"),
    ("outcome", "BLOCKED", None),
])
def test_a_changed_procedure_or_outcome_fails_the_origin_signature(world, field, before, after):
    sealed = world.seal(**{field: before}) if before else world.seal()
    record = codec.decode(sealed, "envelope")
    record[field] = after
    tampered = codec.encode("envelope", record)
    assert rejected(world.ingress.verify, tampered) is Reason.BAD_SIGNATURE
    forwarded = codec.decode(world.forward(sealed), "envelope")  # and after the hub, at the recipient
    forwarded[field] = after
    assert rejected(world.opener("registry").receive, codec.encode("envelope", forwarded)) is Reason.BAD_SIGNATURE


def test_outcome_reaches_the_answers_recipient(world):
    sealed = world.seal(sender="registry", to="agency-a", type_="provision.response", outcome="BLOCKED",
                        procedure=PROCEDURE)
    opened = world.opener("agency-a").receive(world.forward(sealed))
    assert (opened.meta.outcome, opened.meta.procedure) == ("BLOCKED", PROCEDURE)


# --- legs with ids of their own -------------------------------------------------------------------


def _leg(world, sealed: bytes, recipient: str | None = None, ids: LegIds | None = None) -> tuple[bytes, LegIds]:
    verified = world.ingress.verify(sealed)
    meta = verified.meta
    to = recipient or meta.recipient
    ids = ids or LegIds(str(uuid.uuid4()), str(uuid.uuid4()))
    subject = world.tokens.translate(meta.subject, meta.sender, to)
    return world.hub.forward(verified, subject, recipient=recipient, leg=ids), ids


def test_a_leg_carries_no_origin_id_and_still_verifies_end_to_end(world):
    sealed = world.seal(procedure=PROCEDURE)
    origin = peek(sealed)
    leg, ids = _leg(world, sealed)
    clear = peek(leg)
    assert (clear.message_id, clear.correlation_id) == (ids.message_id, ids.correlation_id)
    assert clear.procedure is None and clear.outcome is None  # sealed to the recipient, not in the clear
    for value in (origin.message_id, origin.correlation_id, origin.message_id.encode(),
                  uuid.UUID(origin.message_id).bytes, uuid.UUID(origin.correlation_id).bytes):
        assert (value.encode() if isinstance(value, str) else value) not in leg
    opened = world.opener("registry").receive(leg)
    assert (opened.meta.message_id, opened.meta.correlation_id) == (ids.message_id, ids.correlation_id)
    assert opened.meta.procedure == PROCEDURE and opened.meta.sender == "agency-a"
    assert opened.meta.subject == world.token("registry") and opened.body == example_body("provision.inquiry")


def test_the_same_leg_ids_on_a_forward_again_are_a_duplicate_to_the_recipient(world):
    sealed = world.seal()
    ids = LegIds(str(uuid.uuid4()), str(uuid.uuid4()))
    first, _ = _leg(world, sealed, ids=ids)
    again = world.hub.forward(world.ingress.verify(sealed), world.token("registry"), leg=ids)  # a batch redone
    opener = world.opener("registry")
    opener.receive(first)
    assert rejected(opener.receive, again) is Reason.REPLAYED


def test_fanout_legs_share_no_id_and_each_opens(world):
    banks = ["bank-1", "bank-2", "bank-3"]
    sealed = world.sealer("dicj").seal_multi(example_body("lookup.inheritance"), type="lookup.inheritance",
                                             to=banks, subject=world.token("dicj"),
                                             data_item="deposit_account_holdings", basis="inheritance")
    legs = {b: _leg(world, sealed, recipient=b)[0] for b in banks}
    ids = [(peek(v).message_id, peek(v).correlation_id) for v in legs.values()]
    assert len({i for pair in ids for i in pair}) == 2 * len(banks)
    for bank, leg in legs.items():
        assert world.opener(bank).receive(leg).meta.recipient == bank


def test_one_leg_key_per_recipient_key_for_its_lifetime(world):
    def leg_key(recipient: str, sealed: bytes) -> bytes:
        return codec.decode(_leg(world, sealed, recipient=recipient if peek(sealed).fanout else None)[0],
                            "envelope")["leg"]["leg_key"]

    first, second = leg_key("registry", world.seal()), leg_key("registry", world.seal())
    assert first == second  # one HPKE seal serves every leg to that key
    assert leg_key("bank-1", world.seal(sender="registry", to="bank-1", type_="existence.check")) != first
    world.clock.now += LEG_KEY_LIFETIME_S + 1
    assert leg_key("registry", world.seal()) != first


def _legged(world) -> tuple[bytes, dict]:
    leg, _ = _leg(world, world.seal(procedure=PROCEDURE))
    return leg, codec.decode(leg, "envelope")


def _reseal_leg(world, record: dict, origin_mid: str, origin_cid: str) -> None:
    """What anyone holding only the recipient's PUBLIC key can build: their own leg key and sealed origin."""
    key = AESGCM.generate_key(bit_length=256)
    public = world.directory.encryption_key(record["recipient"])
    record["leg"]["leg_key"] = public.seal(key, layout.leg_key_info("hub", record["recipient"], public.key_id))
    plain = layout.origin_plaintext(origin_mid, origin_cid, PROCEDURE, None)
    aad = layout.leg_aad({**record, "message_id": str(record["message_id"]), "correlation_id": str(record["correlation_id"])})
    record["leg"]["sealed_origin"] = bytes(12) + AESGCM(key).encrypt(bytes(12), plain, aad)


LEG_TAMPERINGS = {
    "message_id": (lambda r, w, o: r.update(message_id=str(uuid.uuid4())), Reason.UNDECRYPTABLE),
    "correlation_id": (lambda r, w, o: r.update(correlation_id=str(uuid.uuid4())), Reason.UNDECRYPTABLE),
    "sender": (lambda r, w, o: r.update(sender="agency-b"), Reason.UNDECRYPTABLE),
    "leg.leg_key": (lambda r, w, o: r["leg"].update(leg_key=r["leg"]["leg_key"][:-1] + b"\x00"),
                    Reason.UNDECRYPTABLE),
    "leg.sealed_origin": (lambda r, w, o: r["leg"].update(sealed_origin=r["leg"]["sealed_origin"][:-1] + b"\x00"),
                          Reason.UNDECRYPTABLE),
    "leg/removed": (lambda r, w, o: r.update(leg=None), Reason.BAD_SIGNATURE),  # the leg ids are not the origin's
    "leg/other origin id": (lambda r, w, o: _reseal_leg(w, r, str(uuid.uuid4()), o.correlation_id),
                            Reason.BAD_SIGNATURE),
    # the origin's real ids under a leg key of one's own: only the countersignature (it binds the leg) stops it
    "leg/same origin, resealed": (lambda r, w, o: _reseal_leg(w, r, o.message_id, o.correlation_id),
                                  Reason.BAD_SIGNATURE),
    "procedure/in the clear": (lambda r, w, o: r.update(procedure="public-assistance"), Reason.MALFORMED),
    "outcome/in the clear": (lambda r, w, o: r.update(outcome="REGISTERED"), Reason.MALFORMED),
    "countersignature/removed": (lambda r, w, o: r.update(countersignature=None), Reason.BAD_SIGNATURE),
}


@pytest.mark.parametrize("name", sorted(LEG_TAMPERINGS))
def test_every_part_of_a_leg_is_bound(world, name):
    mutate, expected = LEG_TAMPERINGS[name]
    sealed = world.seal(procedure=PROCEDURE)
    origin = peek(sealed)
    leg, _ = _leg(world, sealed)
    record = copy.deepcopy(codec.decode(leg, "envelope"))
    mutate(record, world, origin)
    assert rejected(world.opener("registry").receive, codec.encode("envelope", record)) is expected
    world.opener("registry").receive(leg)  # the untampered leg still opens


def test_a_leg_cannot_enter_the_hub(world):
    leg, _ = _leg(world, world.seal())
    record = codec.decode(leg, "envelope")
    record["countersignature"] = None
    assert rejected(world.ingress.verify, codec.encode("envelope", record)) is Reason.MALFORMED


def test_a_leg_for_someone_else_is_the_wrong_recipient(world):
    leg, _ = _leg(world, world.seal())
    assert rejected(world.opener("bank-1").receive, leg) is Reason.WRONG_RECIPIENT
