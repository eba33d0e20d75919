"""``VerifiedEnvelope``: only a verifier creates one, and only one is forwarded or opened (issue 17).

The attack each test performs: hand the hub's forwarder or a participant's opener something that never
went through the verifier — raw bytes, a ``peek``ed ``EnvelopeMeta``, a decoded record, a forged or
altered ``VerifiedEnvelope``, or one verified for the other side — and show it refused, with good
traffic between the attempts still delivered.
"""

from __future__ import annotations

import copy
import pickle
import uuid

import pytest

from infra.core.errors import EnvelopeRejection, Reason
from infra.crypto.envelope import LegIds, Message, VerifiedEnvelope, peek
from infra.crypto.verify import Verifier
from schemas import codec
from tests.unit.envelope_world import T0, example_body, fresh_clock, rejected, world  # noqa: F401 - fixtures
from tests.unit.leakguard import no_personal_data  # noqa: F401 - fixture


def _good_traffic_still_opens(world) -> None:
    assert world.opener("registry").receive(world.forward(world.seal())).meta.sender == "agency-a"


def test_a_verified_envelope_carries_what_the_verifier_checked(world):
    sealed = world.seal()
    verified = world.ingress.verify(sealed)
    assert not verified.delivered and not verified.countersigned
    assert verified.verified_at == int(T0 * 1000)
    assert (verified.meta.sender, verified.meta.sender_key_id) == ("agency-a", world.keys["agency-a"].signing_key_id)
    assert verified.meta == peek(sealed) and verified.record["message_id"] == peek(sealed).message_id
    delivered = world.opener("registry").verify(world.forward(sealed))
    assert delivered.delivered and delivered.countersigned
    assert delivered.meta.hub_key_id == world.keys["hub"].signing_key_id
    assert "subject" not in repr(verified).replace("subject='<token>'", "")  # the token never shows


def test_only_the_verifier_creates_one(world):
    r = codec.decode(world.seal(), "envelope")
    only = "^a VerifiedEnvelope is created only by Verifier.verify or Verifier.verify_delivered$"
    with pytest.raises(TypeError, match=only):
        VerifiedEnvelope(object(), r, r, b"", [], meta=peek(world.seal()), delivered=True, verified_at=0)
    with pytest.raises(TypeError, match=only):
        VerifiedEnvelope(None, r, r, b"", [], meta=peek(world.seal()), delivered=False, verified_at=0)
    with pytest.raises(TypeError, match="^VerifiedEnvelope cannot be subclassed$"):
        type("Forged", (VerifiedEnvelope,), {})


def test_what_the_verifier_checked_cannot_be_changed_or_copied(world):
    verified = world.ingress.verify(world.seal())
    with pytest.raises(AttributeError):
        verified.delivered = True  # type: ignore[misc]
    with pytest.raises(AttributeError):
        verified.record = {}  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del verified.meta
    with pytest.raises(TypeError):
        verified.record["recipient"] = "bank-1"  # type: ignore[index]
    for duplicate in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="^a VerifiedEnvelope is not copied or pickled: verify the bytes "
                                            "where they are used$"):
            duplicate(verified)


def test_the_opener_refuses_anything_but_an_envelope_verified_as_delivered(world):
    """The attack: open an envelope that never went through the verifier (or went through the hub's)."""
    sealed = world.seal()
    forwarded = world.forward(sealed)
    opener = world.opener("registry")
    for unverified in (forwarded, bytearray(forwarded), memoryview(forwarded), peek(forwarded),
                       codec.decode(forwarded, "envelope"), world.ingress.verify(world.seal()), None):
        with pytest.raises(TypeError) as refused:
            opener.open(unverified)
        assert str(refused.value) == (  # words that say how to call it right
            "Opener.open takes an envelope verified as delivered (Opener.verify), not one verified as it enters "
            "the hub (Verifier.verify)" if type(unverified).__name__ == "VerifiedEnvelope" else
            f"Opener.open takes a VerifiedEnvelope from Opener.verify, not {type(unverified).__name__}")
        _good_traffic_still_opens(world)
    assert opener.open(opener.verify(forwarded)).meta.sender == "agency-a"  # the attempts burnt no id


def test_a_verified_envelope_opens_only_for_its_recipient(world):
    """Verified by the registry's opener, handed to bank-1's: not a pass to someone else's mail."""
    verified = world.opener("registry").verify(world.forward(world.seal()))
    assert rejected(world.opener("bank-1").open, verified) is Reason.WRONG_RECIPIENT
    _good_traffic_still_opens(world)
    assert world.opener("registry").open(verified).meta.recipient == "registry"


def test_a_lax_verification_does_not_open_at_a_strict_opener(world):
    """Verified where direct envelopes are allowed; the strict opener still wants the hub's countersignature."""
    sealed = world.seal()  # agency-a straight to the registry, never through the hub
    lax = world.opener("registry", require_countersignature=False)
    verified = lax.verify(sealed)
    with pytest.raises(EnvelopeRejection) as refused:
        world.opener("registry").open(verified)
    assert (refused.value.reason, refused.value.message) == (Reason.BAD_SIGNATURE,
                                                             "envelope is not countersigned by the hub")
    _good_traffic_still_opens(world)
    assert lax.open(verified).meta.sender == "agency-a"


def test_opening_the_same_verified_envelope_twice_is_a_replay(world):
    opener = world.opener("registry")
    verified = opener.verify(world.forward(world.seal()))
    opener.open(verified)
    assert rejected(opener.open, verified) is Reason.REPLAYED
    assert opener.receive(world.forward(world.seal())).meta.sender == "agency-a"  # another message still opens


def test_the_forwarder_refuses_anything_but_an_envelope_verified_on_ingress(world):
    """The attack: countersign what the hub's ingress checks never saw, alone or inside a batch."""
    sealed = world.seal()
    delivered = world.opener("registry").verify(world.forward(world.seal()))
    for unverified in (sealed, peek(sealed), codec.decode(sealed, "envelope"), delivered, None):
        with pytest.raises(TypeError) as refused:
            world.hub.forward(unverified, world.token("registry"))
        assert str(refused.value) == (
            "HubForwarder forwards an envelope verified as it enters the hub (Verifier.verify), not one verified "
            "as delivered" if unverified is delivered else
            f"HubForwarder forwards a VerifiedEnvelope from Verifier.verify, not {type(unverified).__name__}")
        for position in (0, 1):
            items = [(world.ingress.verify(world.seal()), world.token("registry"))]
            items.insert(position, (unverified, world.token("registry")))
            with pytest.raises(TypeError):
                world.hub.forward_batch(items)
        _good_traffic_still_opens(world)


def test_a_batch_verified_one_by_one_forwards_under_one_countersignature_and_opens(world):
    sealed = world.sealer("agency-a").seal_batch([
        Message(example_body("provision.inquiry"), "provision.inquiry", "registry", world.token("agency-a"),
                "public_funds_account", "koza-toroku-ho-9") for _ in range(5)])
    verified = [world.ingress.verify(s) for s in sealed]
    legs = [LegIds(str(uuid.uuid4()), str(uuid.uuid4())) for _ in verified]
    out = world.hub.forward_batch([(v, world.token("registry"), None, leg) for v, leg in zip(verified, legs, strict=True)])
    signatures = {bytes(codec.decode(f, "envelope")["countersignature"]["signature"]["root_signature"]) for f in out}
    assert len(signatures) == 1
    opener = world.opener("registry")
    assert [opener.open(opener.verify(f)).meta.message_id for f in out] == [leg.message_id for leg in legs]


def test_a_leg_is_verified_only_with_its_recipients_key(world):
    verified = world.ingress.verify(world.seal())
    leg = world.hub.forward(verified, world.token("registry"), leg=LegIds(str(uuid.uuid4()), str(uuid.uuid4())))
    with pytest.raises(EnvelopeRejection) as refused:
        Verifier(world.directory, clock=world.clock).verify_delivered(leg)
    assert (refused.value.reason, refused.value.message) == (Reason.UNDECRYPTABLE,
                                                             "a forwarded leg is verified only by its recipient")
    assert rejected(world.opener("bank-1").verify, leg) is Reason.WRONG_RECIPIENT
    assert world.opener("registry").receive(leg).meta.sender == "agency-a"


def test_the_hub_forwards_the_envelope_its_own_ingress_check_returned(world):
    """``HubCore.decide`` keeps the VerifiedEnvelope; ``HubCore.forward`` countersigns that and nothing else."""
    from streams.gateway import HubCore, Inbound
    from tests.unit.envelope_world import PROCEDURE, world_policy

    core = HubCore(verifier=Verifier(world.directory, clock=world.clock), forwarder=world.hub, policy=world_policy(),
                   participants=world.participants, tokens=world.tokens)
    good = Inbound(world.seal(basis="account-registration-act/art9", procedure=PROCEDURE), 0, 1)
    tampered = codec.decode(good.value, "envelope")
    tampered["data_item"] = "everything"
    bad = Inbound(codec.encode("envelope", tampered), 0, 2)
    accepted, refused = core.decide([good, bad])
    assert accepted.accepted and type(accepted.verified) is VerifiedEnvelope and not accepted.verified.delivered
    assert accepted.meta is accepted.verified.meta
    assert refused.reason is Reason.BAD_SIGNATURE and refused.verified is None  # only claims, for the dead letter
    [(recipient, _, envelope)] = core.forward([accepted, refused])
    assert recipient == "registry" and world.opener("registry").receive(envelope).meta.sender == "agency-a"
    accepted.verified = good.value  # a bug that hands the forwarder the raw bytes: refused, not countersigned
    with pytest.raises(TypeError):
        core.forward([accepted])


def test_an_inbox_verifier_wants_the_hubs_countersignature_unless_told_otherwise(world):
    """A bare ``Verifier.verify_delivered`` is strict by default: an envelope straight from a participant,
    never through the hub, is refused; only an explicit ``require_countersignature=False`` admits it."""
    sealed = world.seal()  # agency-a straight to the registry
    verifier = Verifier(world.directory, clock=world.clock)
    with pytest.raises(EnvelopeRejection) as refused:
        verifier.verify_delivered(sealed)
    assert (refused.value.reason, refused.value.message) == (Reason.BAD_SIGNATURE,
                                                             "envelope is not countersigned by the hub")
    assert verifier.verify_delivered(sealed, require_countersignature=False).meta.sender == "agency-a"
    assert verifier.verify_delivered(world.forward(world.seal())).delivered  # the hub's forward passes


def test_a_strict_openers_verify_refuses_an_envelope_the_hub_never_countersigned(world):
    """The opener's own setting reaches its verification, not only its open: a strict opener's ``verify``
    refuses a participant's direct envelope at once (``open`` re-checks it too, as a second line)."""
    sealed = world.seal()  # agency-a straight to the registry
    with pytest.raises(EnvelopeRejection) as refused:
        world.opener("registry").verify(sealed)
    assert (refused.value.reason, refused.value.message) == (Reason.BAD_SIGNATURE,
                                                             "envelope is not countersigned by the hub")
    assert world.opener("registry", require_countersignature=False).verify(sealed).meta.sender == "agency-a"
