"""The envelope: seal/open round trips, every tampering refused with the right reason, hub forwarding, fan-out."""

from __future__ import annotations

import copy
import uuid
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.core.errors import EnvelopeRejection, Reason
from infra.crypto import envelope, layout, merkle
from infra.crypto.envelope import FANOUT, MemoryReplayGuard, peek
from infra.crypto.keys import Keyset
from infra.domain.participants import Kind
from infra.domain.senders import SENDERS
from schemas import codec
from schemas.types import BODY_SCHEMA
from tests.unit.envelope_world import MY_NUMBER, OTHER_MY_NUMBER, T0, World, example_body, fresh_clock, rejected, world  # noqa: F401 - fixtures
from tests.unit.leakguard import no_personal_data  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("no_personal_data")


def resign(record: dict, keyset: Keyset) -> bytes:
    """What a participant holding only its own keys can build: its own valid origin signature over ``record``."""
    r = copy.deepcopy(record)
    r["countersignature"], r["wrap_proof"] = None, None
    r["sender"], r["sender_key_id"] = keyset.participant_id, keyset.signing_key_id
    mid, cid = str(r["message_id"]), str(r["correlation_id"])
    r["subject_commitment"] = layout.subject_commitment(mid, r["subject"])
    if r["wraps"]:
        binding = layout.fanout_binding(len(r["wraps"]), merkle.build([layout.wrap_leaf(w) for w in r["wraps"]])[0])
    else:
        binding = layout.single_binding(r["recipient"], r["recipient_key_id"])
    leaf = layout.origin_leaf(r, mid, cid, layout.ms(r["created_at"]), layout.ms(r["expires_at"]), binding)
    r["signature"] = layout.tree_signatures(keyset, layout.ORIGIN_ROOT, [leaf])[0]
    return codec.encode("envelope", r)


# --- round trips -----------------------------------------------------------------------------


# One participant of the world per kind, for the routes of the sender table.
ONE_OF = {Kind.AGENCY: "agency-a", Kind.REGISTRY: "registry", Kind.BANK: "bank-1", Kind.PORTAL: "portal",
          Kind.DICJ: "dicj", Kind.HUB: "hub"}


def a_route(type_: str) -> tuple[str, str]:
    """``(sender, recipient)`` of the world that the sender table allows for ``type_``."""
    rule = SENDERS[type_]
    if rule.from_hub:
        return "hub", ONE_OF[sorted(rule.from_hub)[0]]
    sender, recipient = sorted(rule.routes)[0]
    return ONE_OF[sender], "bank-2" if sender is recipient is Kind.BANK else ONE_OF[recipient]


@pytest.mark.parametrize("type_", sorted(BODY_SCHEMA))
def test_seal_forward_open_round_trip_for_every_body_type(world, type_):
    body = example_body(type_)
    sender, recipient = a_route(type_)
    sealed = world.seal(sender=sender, to=recipient, type_=type_, body=body)
    if sender == "hub":  # the hub's own answers arrive as it sealed them
        opened = world.opener(recipient).receive(sealed)
    elif recipient == "hub":  # token issuance is addressed to the hub itself, never forwarded
        opened = world.opener("hub", require_countersignature=False).receive(sealed)
    else:
        opened = world.opener(recipient).receive(world.forward(sealed))
    assert opened.body == codec.decode(codec.encode(BODY_SCHEMA[type_], body), BODY_SCHEMA[type_])
    meta = opened.meta
    assert (meta.type, meta.sender, meta.recipient) == (type_, sender, recipient)
    if sender != "hub" and recipient != "hub":
        assert meta.subject == world.token(recipient)  # translated into the recipient's token space
        assert meta.hub_key_id == world.keys["hub"].signing_key_id
    assert meta.correlation_id == meta.message_id
    assert meta.expires_at - meta.created_at == timedelta(seconds=300)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    procedure=st.text(max_size=40),
    purpose=st.none() | st.text(max_size=200),
    data_item=st.text(max_size=30),
    basis=st.text(max_size=30),
    ttl=st.integers(1, envelope.MAX_TTL_S),
)
def test_round_trip_preserves_body_and_routing_fields(world, procedure, purpose, data_item, basis, ttl):
    body = {"procedure_code": procedure, "purpose": purpose, "requested_at": example_body("provision.inquiry")["requested_at"]}
    cid = str(uuid.uuid4())
    sealed = world.seal(body=body, data_item=data_item, basis=basis, correlation_id=cid, ttl_s=ttl)
    opened = world.opener("registry").receive(world.forward(sealed))
    assert opened.body == body
    assert (opened.meta.data_item, opened.meta.legal_basis, opened.meta.correlation_id) == (data_item, basis, cid)


def test_hybrid_mlkem_round_trip_both_directions(world):
    assert world.keys["registry"].kem == "mlkem768-x25519"
    to_registry = world.seal(to="registry")
    assert world.opener("registry").receive(world.forward(to_registry)).meta.recipient == "registry"
    back = world.seal(sender="registry", to="agency-a", type_="provision.response")
    assert world.opener("agency-a").receive(world.forward(back)).meta.subject == world.token("agency-a")


def test_direct_delivery_without_hub_checks_the_subject_commitment(world):
    sealed = world.seal()
    assert rejected(world.opener("registry").receive, sealed) is Reason.BAD_SIGNATURE  # not countersigned
    direct = world.opener("registry", require_countersignature=False)
    assert direct.receive(sealed).meta.subject == world.token("agency-a")
    record = codec.decode(sealed, "envelope")
    record["subject"] = world.token("agency-a", OTHER_MY_NUMBER)
    assert rejected(world.opener("registry", require_countersignature=False).receive, codec.encode("envelope", record)) is Reason.BAD_SIGNATURE


def test_messages_from_the_hub_itself_need_no_countersignature(world):
    notice = world.seal(sender="hub", to="agency-a", type_="rejection.notice", subject="")
    assert world.opener("agency-a").receive(notice).meta.sender == "hub"


# --- tampering ---------------------------------------------------------------------------


def _flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


TAMPERINGS = {
    "message_id": (lambda r, w: r.update(message_id=uuid.uuid4()), Reason.BAD_SIGNATURE),
    "correlation_id": (lambda r, w: r.update(correlation_id=uuid.uuid4()), Reason.BAD_SIGNATURE),
    "type": (lambda r, w: r.update(type="provision.response"), Reason.BAD_SIGNATURE),
    "sender": (lambda r, w: r.update(sender="agency-b"), Reason.BAD_SIGNATURE),
    "recipient": (lambda r, w: r.update(recipient="bank-1"), Reason.BAD_SIGNATURE),
    "subject": (lambda r, w: r.update(subject=w.token("registry", OTHER_MY_NUMBER)), Reason.BAD_SIGNATURE),
    "subject_commitment": (lambda r, w: r.update(subject_commitment=_flip(r["subject_commitment"])), Reason.BAD_SIGNATURE),
    "data_item": (lambda r, w: r.update(data_item="deposit_accounts"), Reason.BAD_SIGNATURE),
    "legal_basis": (lambda r, w: r.update(legal_basis="other-law"), Reason.BAD_SIGNATURE),
    "created_at": (lambda r, w: r.update(created_at=r["created_at"] - timedelta(milliseconds=1)), Reason.BAD_SIGNATURE),
    "expires_at": (lambda r, w: r.update(expires_at=r["expires_at"] + timedelta(hours=1)), Reason.BAD_SIGNATURE),
    "sender_key_id/unknown": (lambda r, w: r.update(sender_key_id="agency-a:sign:0000000000000000"), Reason.UNKNOWN_KEY),
    "sender_key_id/other participant": (
        lambda r, w: r.update(sender_key_id=w.keys["agency-b"].signing_key_id),
        Reason.BAD_SIGNATURE,
    ),
    "recipient_key_id": (lambda r, w: r.update(recipient_key_id=w.keys["bank-1"].encryption_key_id), Reason.BAD_SIGNATURE),
    "body": (lambda r, w: r.update(body=_flip(r["body"])), Reason.BAD_SIGNATURE),
    "wraps": (
        lambda r, w: r.update(wraps=[{"recipient": "registry", "recipient_key_id": r["recipient_key_id"], "wrapped_key": b"k"}]),
        Reason.MALFORMED,
    ),
    "wrap_proof": (lambda r, w: r.update(wrap_proof={"leaf_index": 0, "leaf_count": 1, "siblings": []}), Reason.MALFORMED),
    "signature.root_signature": (
        lambda r, w: r["signature"].update(root_signature=_flip(r["signature"]["root_signature"])),
        Reason.BAD_SIGNATURE,
    ),
    "signature.leaf_index": (lambda r, w: r["signature"]["proof"].update(leaf_index=1), Reason.BAD_SIGNATURE),
    "signature.leaf_count": (lambda r, w: r["signature"]["proof"].update(leaf_count=2), Reason.BAD_SIGNATURE),
    "signature.siblings": (lambda r, w: r["signature"]["proof"].update(siblings=[bytes(32)]), Reason.BAD_SIGNATURE),
    "countersignature/removed": (lambda r, w: r.update(countersignature=None), Reason.BAD_SIGNATURE),
    "countersignature.key_id/unknown": (
        lambda r, w: r["countersignature"].update(key_id="hub:sign:0000000000000000"),
        Reason.UNKNOWN_KEY,
    ),
    "countersignature.key_id/not the hub": (
        lambda r, w: r["countersignature"].update(key_id=w.keys["bank-1"].signing_key_id),
        Reason.BAD_SIGNATURE,
    ),
    "countersignature.forwarded_at": (
        lambda r, w: r["countersignature"].update(forwarded_at=r["countersignature"]["forwarded_at"] + timedelta(milliseconds=1)),
        Reason.BAD_SIGNATURE,
    ),
    "countersignature.signature": (
        lambda r, w: r["countersignature"]["signature"].update(
            root_signature=_flip(r["countersignature"]["signature"]["root_signature"])
        ),
        Reason.BAD_SIGNATURE,
    ),
    # v2's fields, added to an envelope signed without them (tests/unit/crypto/test_envelope_meta.py does the rest)
    "procedure": (lambda r, w: r.update(procedure="child-allowance"), Reason.BAD_SIGNATURE),
    "outcome": (lambda r, w: r.update(outcome="REGISTERED"), Reason.BAD_SIGNATURE),
    "leg": (lambda r, w: r.update(leg={"leg_key": b"k" * 48, "sealed_origin": b"s" * 60}), Reason.UNDECRYPTABLE),
}


def test_tamper_table_covers_every_envelope_field():
    fields = {f["name"] for f in codec.schema("envelope")["fields"]}
    covered = {name.split("/")[0].split(".")[0] for name in TAMPERINGS}
    assert covered == fields


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_every_tampered_field_is_rejected_with_the_right_reason(world, name):
    mutate, expected = TAMPERINGS[name]
    forwarded = world.forward(world.seal())
    record = codec.decode(forwarded, "envelope")
    mutate(record, world)
    assert rejected(world.opener("registry").receive, codec.encode("envelope", record)) is expected
    # the untampered envelope still opens: the rejection above did not burn its message id
    opener = world.opener("registry")
    opener.receive(forwarded)
    assert rejected(opener.receive, forwarded) is Reason.REPLAYED


@pytest.mark.parametrize(
    "name", ["message_id", "type", "sender", "subject", "data_item", "body", "created_at", "recipient_key_id"]
)
def test_hub_ingress_refuses_tampered_origin_envelopes(world, name):
    mutate, _ = TAMPERINGS[name]
    record = codec.decode(world.seal(), "envelope")
    mutate(record, world)
    assert rejected(world.ingress.verify, codec.encode("envelope", record)) is Reason.BAD_SIGNATURE


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(data=st.data())
def test_any_bit_flip_is_rejected_or_semantically_identical(world, data):
    forwarded = world.forward(world.seal())
    position = data.draw(st.integers(0, len(forwarded) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(forwarded)
    flipped[position] ^= 1 << bit
    try:
        world.opener("registry").receive(bytes(flipped))
    except EnvelopeRejection:
        return
    # Only a spelling change that decodes to the very same envelope may pass (e.g. UUID hex case).
    assert codec.decode(bytes(flipped), "envelope") == codec.decode(forwarded, "envelope")


def test_body_moved_to_another_envelope(world):
    victim = codec.decode(world.seal(sender="agency-a"), "envelope")
    # 1. pasted into another sender's envelope and re-signed by that (malicious) sender: HPKE info differs
    carrier = codec.decode(world.seal(sender="agency-b"), "envelope")
    carrier["body"] = victim["body"]
    forged = resign(carrier, world.keys["agency-b"])
    assert rejected(world.opener("registry").receive, world.forward(forged)) is Reason.UNDECRYPTABLE
    # 2. pasted into another envelope without re-signing: the origin signature covers the body digest
    honest = codec.decode(world.forward(world.seal(sender="agency-b")), "envelope")
    honest["body"] = victim["body"]
    assert rejected(world.opener("registry").receive, codec.encode("envelope", honest)) is Reason.BAD_SIGNATURE
    # 3. same sender, another of its own message ids, re-signed: the message id is bound as HPKE info
    victim["message_id"] = uuid.uuid4()
    assert rejected(world.opener("registry").receive, world.forward(resign(victim, world.keys["agency-a"]))) is Reason.UNDECRYPTABLE


# --- hub forwarding ------------------------------------------------------------------------


def test_forwarding_keeps_the_origin_signature_and_hides_the_senders_token(world):
    sealed = world.seal()
    forwarded = world.forward(sealed)
    sender_token, recipient_token = world.token("agency-a"), world.token("registry")
    assert sender_token.encode() not in forwarded and recipient_token.encode() in forwarded
    original, out = codec.decode(sealed, "envelope"), codec.decode(forwarded, "envelope")
    for field_name in ("message_id", "body", "signature", "subject_commitment", "sender_key_id", "created_at"):
        assert original[field_name] == out[field_name]
    assert world.opener("registry").receive(forwarded).meta.sender == "agency-a"


def test_hub_cannot_alter_signed_fields_even_with_a_valid_countersignature(world):
    sealed = world.seal()
    verified = world.ingress.verify(sealed)
    with pytest.raises(TypeError):  # what the verifier checked cannot be changed before forwarding
        verified.record["data_item"] = "everything"  # type: ignore[index]
    record = codec.decode(sealed, "envelope")
    record["data_item"] = "everything"  # the hub lies, then countersigns its lie
    forwarded = world.countersign(codec.encode("envelope", record))
    assert rejected(world.opener("registry").receive, forwarded) is Reason.BAD_SIGNATURE


def test_participant_cannot_countersign(world):
    from infra.crypto.envelope import HubForwarder

    impostor = HubForwarder(world.keys["bank-1"], world.directory, clock=world.clock)
    forwarded = impostor.forward(world.ingress.verify(world.seal()), world.token("registry"))
    assert rejected(world.opener("registry").receive, forwarded) is Reason.BAD_SIGNATURE


def test_hub_ingress_checks_subject_commitment_and_refuses_forwarded_envelopes(world):
    record = codec.decode(world.seal(), "envelope")
    record["subject"] = world.token("agency-a", OTHER_MY_NUMBER)
    assert rejected(world.ingress.verify, codec.encode("envelope", record)) is Reason.BAD_SIGNATURE
    assert rejected(world.ingress.verify, world.forward(world.seal())) is Reason.MALFORMED


def test_forward_refuses_bytes_and_envelopes_the_ingress_verifier_did_not_return(world):
    """The attack: countersign an envelope that never went through the hub's ingress checks."""
    sealed = world.seal()
    delivered = world.opener("registry").verify(world.forward(world.seal()))  # verified, but as delivered
    for unverified in (sealed, bytearray(sealed), peek(sealed), codec.decode(sealed, "envelope"), delivered):
        with pytest.raises(TypeError):
            world.hub.forward(unverified, world.token("registry"))
        with pytest.raises(TypeError):  # one bad item refuses the whole batch: nothing is countersigned
            world.hub.forward_batch([(world.ingress.verify(world.seal()), world.token("registry")),
                                     (unverified, world.token("registry"))])
        # good traffic between the attempts is still forwarded and opens
        assert world.opener("registry").receive(world.forward(world.seal())).body


def test_hub_refuses_envelopes_sealed_to_a_revoked_recipient_key():
    world = World()
    sealed = world.seal(to="bank-3")
    world.directory.revoke(world.keys["bank-3"].encryption_key_id)
    assert rejected(world.ingress.verify, sealed) is Reason.REVOKED_KEY


# --- routing checks ---------------------------------------------------------------------------


def test_wrong_recipient(world):
    forwarded = world.forward(world.seal(to="registry"))
    assert rejected(world.opener("bank-1").receive, forwarded) is Reason.WRONG_RECIPIENT


def test_expired_and_future_messages(world):
    forwarded = world.forward(world.seal(ttl_s=60))
    world.clock.now = T0 + 59
    world.opener("registry").receive(forwarded)
    world.clock.now = T0 + 60
    assert rejected(world.opener("registry").receive, forwarded) is Reason.EXPIRED
    world.clock.now = T0 + 31  # created 31 s ahead of the verifier's clock: beyond the 30 s skew
    ahead = world.forward(world.seal())
    world.clock.now = T0
    assert rejected(world.opener("registry").receive, ahead) is Reason.EXPIRED
    world.clock.now = T0 + 29
    within = world.forward(world.seal())
    world.clock.now = T0
    world.opener("registry").receive(within)


def test_replay_is_refused(world):
    opener = world.opener("registry")
    forwarded = world.forward(world.seal())
    opener.receive(forwarded)
    assert rejected(opener.receive, forwarded) is Reason.REPLAYED
    # the hub forwarding the same origin message twice yields the same message id: still a replay
    origin = world.seal()
    opener.receive(world.forward(origin))
    assert rejected(opener.receive, world.forward(origin)) is Reason.REPLAYED


def test_hub_ingress_replay_guard_is_opt_in(world):
    sealed = world.seal()
    guard = MemoryReplayGuard()
    world.ingress.verify(sealed)
    world.ingress.verify(sealed)  # no side effect unless asked
    world.ingress.verify(sealed, replay_guard=guard)
    assert rejected(lambda: world.ingress.verify(sealed, replay_guard=guard)) is Reason.REPLAYED


def test_oversize_malformed_and_unknown_schema(world):
    forwarded = world.forward(world.seal())
    small = world.opener("registry", max_bytes=len(forwarded) - 1)
    assert rejected(small.receive, forwarded) is Reason.OVERSIZE
    assert rejected(world.opener("registry").receive, b"\xc3\x01" + bytes(8) + b"garbage") is Reason.UNKNOWN_SCHEMA
    assert rejected(world.opener("registry").receive, b"not avro") is Reason.MALFORMED
    assert rejected(world.opener("registry").receive, forwarded[:-3]) is Reason.MALFORMED
    other_record = codec.encode("provision_inquiry", example_body("provision.inquiry"))
    assert rejected(world.opener("registry").receive, other_record) is Reason.UNKNOWN_SCHEMA
    with pytest.raises(EnvelopeRejection) as info:
        world.seal(type_="no.such.type", body={})
    assert info.value.reason is Reason.UNKNOWN_SCHEMA
    record = codec.decode(world.seal(), "envelope")
    record["type"] = "no.such.type"
    unknown_type = resign(record, world.keys["agency-a"])
    assert rejected(world.ingress.verify, unknown_type) is Reason.UNKNOWN_SCHEMA
    direct = world.opener("registry", require_countersignature=False)
    assert rejected(direct.receive, unknown_type) is Reason.UNKNOWN_SCHEMA


def test_unknown_recipient_cannot_be_sealed_to(world):
    assert rejected(world.seal, "agency-a", "nobody") is Reason.UNKNOWN_KEY


# --- keys: rotation and revocation ----------------------------------------------------------


def test_revocation_is_immediate():
    world = World()
    first = world.forward(world.seal(sender="bank-3", type_="existence.answer"))
    world.opener("registry").receive(first)
    in_flight = world.forward(world.seal(sender="bank-3", type_="existence.answer"))
    world.directory.revoke(world.keys["bank-3"].signing_key_id)
    assert rejected(world.opener("registry").receive, in_flight) is Reason.REVOKED_KEY
    assert rejected(world.ingress.verify, world.seal(sender="bank-3", type_="existence.answer")) is Reason.REVOKED_KEY
    world.directory.revoke(world.keys["hub"].signing_key_id)
    assert rejected(world.opener("registry").receive, world.forward(world.seal())) is Reason.REVOKED_KEY


def test_rotation_old_key_verifies_in_flight_messages_until_retired(tmp_path):
    world = World()
    world.keys["agency-a"].save(tmp_path / "old", b"pw")
    before = world.forward(world.seal())  # signed at T0 with the old key
    world.clock.now = T0 + 10
    world.keys["agency-a"].rotate(now=int(world.clock.now * 1000))
    world.publish(world.keys["agency-a"])
    world.clock.now = T0 + 20
    assert world.opener("registry").receive(before).meta.sender_key_id != world.keys["agency-a"].signing_key_id
    after = world.forward(world.seal())
    assert world.opener("registry").receive(after).meta.sender_key_id == world.keys["agency-a"].signing_key_id
    # the old key, used after its retirement, is refused
    stale = Keyset.load(tmp_path / "old", b"pw")
    stale_sealer = envelope.Sealer(stale, world.directory, clock=world.clock)
    late = stale_sealer.seal(example_body("provision.inquiry"), type="provision.inquiry", to="registry",
                             subject=world.token("agency-a"), data_item="x", basis="y")
    assert rejected(world.ingress.verify, late) is Reason.REVOKED_KEY


def test_rotation_of_the_recipient_old_key_still_decrypts():
    world = World()
    before = world.forward(world.seal(sender="registry", to="bank-1", type_="existence.check"))
    world.keys["bank-1"].rotate(now=int(T0 * 1000) + 1)
    world.publish(world.keys["bank-1"])
    world.clock.now = T0 + 5
    assert world.opener("bank-1").receive(before)
    after = world.seal(sender="registry", to="bank-1", type_="existence.check")
    assert codec.decode(after, "envelope")["recipient_key_id"] == world.keys["bank-1"].encryption_key_id


# --- fan-out ----------------------------------------------------------------------------------


BANKS = ["bank-1", "bank-2", "bank-3"]


def _fanout(world: World) -> bytes:
    return world.sealer("dicj").seal_multi(
        example_body("lookup.inheritance"),
        type="lookup.inheritance",
        to=BANKS,
        subject=world.token("dicj"),
        data_item="deposit_accounts",
        basis="koza-kanri-ho-7",
    )


def test_fanout_each_bank_opens_only_its_own_wrap(world):
    sealed = _fanout(world)
    meta = world.ingress.verify(sealed).meta
    assert meta.recipient == FANOUT and meta.recipients == tuple(BANKS)
    copies = {b: world.forward(sealed, recipient=b) for b in BANKS}
    wrapped = {w["recipient"]: w["wrapped_key"] for w in codec.decode(sealed, "envelope")["wraps"]}
    for bank, data in copies.items():
        record = codec.decode(data, "envelope")
        assert [w["recipient"] for w in record["wraps"]] == [bank]
        assert all(wrapped[other] not in data for other in BANKS if other != bank)
        opened = world.opener(bank).receive(data)
        assert opened.meta.subject == world.token(bank)
        assert opened.body == codec.decode(codec.encode("inheritance_lookup", example_body("lookup.inheritance")), "inheritance_lookup")
        for other in BANKS:
            if other != bank:
                assert rejected(world.opener(other).receive, data) is Reason.WRONG_RECIPIENT


def test_fanout_wrap_swaps_and_bad_proofs_are_refused(world):
    sealed = _fanout(world)
    one = codec.decode(world.forward(sealed, recipient="bank-1"), "envelope")
    two = codec.decode(world.forward(sealed, recipient="bank-2"), "envelope")
    # bank-2 takes bank-1's copy and re-addresses it to itself
    stolen = copy.deepcopy(one)
    stolen["recipient"], stolen["recipient_key_id"] = "bank-2", two["recipient_key_id"]
    assert rejected(world.opener("bank-2").receive, codec.encode("envelope", stolen)) is Reason.BAD_SIGNATURE
    # a wrap proof pointing elsewhere
    for change in ({"leaf_index": 2}, {"leaf_count": 4}, {"siblings": one["wrap_proof"]["siblings"][:-1]}):
        bad = copy.deepcopy(one)
        bad["wrap_proof"].update(change)
        assert rejected(world.opener("bank-1").receive, codec.encode("envelope", bad)) is Reason.BAD_SIGNATURE
    # a tampered wrap
    bad = copy.deepcopy(one)
    bad["wraps"][0]["wrapped_key"] = _flip(bad["wraps"][0]["wrapped_key"])
    assert rejected(world.opener("bank-1").receive, codec.encode("envelope", bad)) is Reason.BAD_SIGNATURE


def test_fanout_hub_cannot_forward_to_a_bank_without_a_wrap(world):
    meta = world.ingress.verify(_fanout(world))
    with pytest.raises(ValueError):
        world.hub.forward(meta, world.token("agency-b"), recipient="agency-b")


def test_fanout_needs_distinct_recipients(world):
    with pytest.raises(ValueError):
        world.sealer("agency-a").seal_multi({}, type="lookup.inheritance", to=["bank-1", "bank-1"], subject="",
                                            data_item="x", basis="y")


# --- metadata and reprs -------------------------------------------------------------------------


def test_meta_repr_shows_no_token_material_and_never_the_body(world):
    opened = world.opener("registry").receive(world.forward(world.seal()))
    token = world.token("registry")
    for text in (repr(opened.meta), str(opened.meta), repr(opened)):
        assert token[:4] not in text and "subject='<token>'" in text
        assert "procedure_code" not in text


def test_peek_needs_no_keys_and_verifies_nothing(world):
    record = codec.decode(world.seal(), "envelope")
    record["signature"]["root_signature"] = bytes(64)
    meta = peek(codec.encode("envelope", record))
    assert (meta.sender, meta.recipient, meta.type) == ("agency-a", "registry", "provision.inquiry")


def test_rejections_never_carry_personal_data(world, no_personal_data):
    """Exercise many rejection paths; the leak guard then checks the My Numbers behind the tokens."""
    token = world.token("agency-a")
    for fn, arg in [
        (world.opener("registry").receive, world.seal()),
        (world.opener("bank-1").receive, world.forward(world.seal())),
        (world.ingress.verify, b"\xc3\x01" + bytes(20)),
    ]:
        with pytest.raises(EnvelopeRejection) as info:
            fn(arg)
        assert token not in str(info.value) and MY_NUMBER not in str(info.value)
    assert no_personal_data  # the guard recorded the messages


def test_a_reply_resealed_with_its_message_id_keeps_it(world):
    """The hub re-seals its own replies after a crash under the same id, so the recipient's claim drops the copy."""
    from streams.gateway import Inbound, reply_id

    request = peek(world.seal())
    at = Inbound(b"", 2, 41)
    rid = reply_id("token-answer", at, request.message_id)
    assert rid == reply_id("token-answer", Inbound(b"other bytes", 2, 41), request.message_id)  # a redelivery
    assert rid != reply_id("token-answer", Inbound(b"", 2, 42), request.message_id)  # a replay elsewhere
    assert rid != reply_id("rejection-notice", at, request.message_id)
    message = envelope.Message(example_body("provision.inquiry"), "provision.inquiry", "registry", world.token("agency-a"),
                        "public_funds_account", "koza-toroku-ho-9", message_id=rid)
    first, again = (world.sealer("agency-a").seal_batch([message])[0] for _ in range(2))
    assert first != again  # a fresh encryption and signature…
    assert peek(first).message_id == peek(again).message_id == rid  # …under the same id
    assert peek(world.seal()).message_id != peek(world.seal()).message_id  # without one: a fresh id each time


# --- impersonation, lifetime and forwarding time (each test fails when its one check is removed) ------


class Impersonator:
    """A participant that signs with its OWN valid key but names another participant as the sender."""

    def __init__(self, own: Keyset, claimed_sender: str) -> None:
        self._own = own
        self.participant_id = claimed_sender
        self.signing_key_id = own.signing_key_id

    def sign(self, data: bytes) -> bytes:
        return self._own.sign(data)


def test_a_participant_signing_as_another_with_its_own_valid_key_is_refused(world):
    """agency-b seals as ``sender=agency-a``: body bound to agency-a, signature valid under agency-b's key.

    Only the "signing key belongs to the sender" check refuses this (the signature itself verifies):
    at the hub's ingress, in the hub's decision, at an opener taking direct delivery, and at an
    opener given a countersigned copy (a hub that forwarded it anyway).
    """
    forged = envelope.Sealer(Impersonator(world.keys["agency-b"], "agency-a"), world.directory, clock=world.clock).seal(
        example_body("provision.inquiry"), type="provision.inquiry", to="registry", subject=world.token("agency-a"),
        data_item="public_funds_account", basis="koza-toroku-ho-9")
    assert peek(forged).sender == "agency-a" and peek(forged).sender_key_id == world.keys["agency-b"].signing_key_id
    assert rejected(world.ingress.verify, forged) is Reason.BAD_SIGNATURE
    assert rejected(world.opener("registry", require_countersignature=False).receive, forged) is Reason.BAD_SIGNATURE
    assert rejected(world.opener("registry").receive, world.countersign(forged)) is Reason.BAD_SIGNATURE
    # the same message honestly sealed by agency-a opens (the forgery is refused for its key alone)
    honest = world.seal(sender="agency-a")
    assert world.opener("registry").receive(world.countersign(honest)).meta.sender == "agency-a"


def test_impersonation_is_refused_by_the_hub_gateway(world):
    from infra.domain.policy import Policy
    from streams.gateway import HubCore, Inbound

    core = HubCore(verifier=world.ingress, forwarder=world.hub, policy=Policy.load(),
                   participants=world.participants, tokens=world.tokens)
    forged = envelope.Sealer(Impersonator(world.keys["agency-b"], "agency-a"), world.directory, clock=world.clock).seal(
        example_body("provision.inquiry"), type="provision.inquiry", to="registry", subject=world.token("agency-a"),
        data_item="public_funds_account", basis="account-registration-act/art9")
    [decision] = core.decide([Inbound(forged, 0, 0)])
    assert decision.reason is Reason.BAD_SIGNATURE and not decision.legs and not decision.records


def test_a_lifetime_over_the_cap_resigned_by_a_valid_key_is_expired(world):
    """A sender (here agency-a, with its own key) signs a 25-hour lifetime: over MAX_TTL_S, refused at once."""
    record = codec.decode(world.seal(), "envelope")
    record["expires_at"] = record["created_at"] + timedelta(seconds=envelope.MAX_TTL_S + 3600)
    long_lived = resign(record, world.keys["agency-a"])
    assert rejected(world.ingress.verify, long_lived) is Reason.EXPIRED
    assert rejected(world.opener("registry").receive, world.countersign(long_lived)) is Reason.EXPIRED
    # exactly the cap is still accepted
    record["expires_at"] = record["created_at"] + timedelta(seconds=envelope.MAX_TTL_S)
    world.ingress.verify(resign(record, world.keys["agency-a"]))


def test_a_forwarder_clock_ahead_beyond_the_skew_is_expired(world):
    """The hub's clock 60 s ahead of the recipient's: its forwarded_at lies in the future → EXPIRED."""
    sealed = world.seal()
    meta = world.ingress.verify(sealed)
    ahead = envelope.HubForwarder(world.keys["hub"], world.directory, clock=lambda: T0 + 60)
    forwarded = ahead.forward(meta, world.token("registry"))
    assert rejected(world.opener("registry").receive, forwarded) is Reason.EXPIRED
    # within the allowed skew (29 s ahead) the same message opens
    near = envelope.HubForwarder(world.keys["hub"], world.directory, clock=lambda: T0 + envelope.DEFAULT_SKEW_S - 1)
    assert world.opener("registry").receive(near.forward(meta, world.token("registry"))).meta.sender == "agency-a"
