"""The envelope's checks at their edges (``infra.crypto.envelope``: ``Verifier``, ``Opener``, ``HubForwarder``,
``MemoryReplayGuard``): each refusal's reason and whole words, the leg keys an opener keeps, the replay guard's
memory (pure logic, no broker).

Written for the mutation score (docs/testing.md, "Mutation testing"): ``test_envelope.py`` and
``test_envelope_meta.py`` prove each attack refused by its reason; these pin what an operator reads in the
dead letter too, and the properties nothing else observes.
"""

from __future__ import annotations

import copy
import uuid
from datetime import timedelta
from typing import Any

import pytest

from infra.core.errors import EnvelopeRejection, Reason
from infra.crypto import layout
from infra.crypto.envelope import (
    DEFAULT_SKEW_S,
    LEG_KEY_LIFETIME_S,
    MAX_TTL_S,
    HubForwarder,
    LegIds,
    MemoryReplayGuard,
    Opener,
    Verifier,
    peek,
)
from infra.crypto.keys import Keyset
from infra.crypto.legs import LegSealer
from schemas import codec
from schemas.types import BODY_SCHEMA
from tests.unit.crypto.test_envelope import resign
from tests.unit.envelope_world import (
    OTHER_MY_NUMBER,
    T0,
    World,
    example_body,
    fresh_clock,  # noqa: F401 - fixture
    world,  # noqa: F401 - fixture
)

PROCEDURE = "test-benefit"
UPPER = "6F1C1E4E-2F4A-4B8A-9D7E-1B2C3D4E5F60"  # a UUID, but not in its canonical (lowercase) spelling


def refusal(fn: Any, *args: Any, **kwargs: Any) -> tuple[Reason, str]:
    """The reason and the words ``fn(*args, **kwargs)`` is refused with (it must be)."""
    with pytest.raises(EnvelopeRejection) as info:
        fn(*args, **kwargs)
    return info.value.reason, info.value.message


def leg_of(world: World, sealed: bytes, hub: HubForwarder | None = None) -> bytes:
    """``sealed`` forwarded by the hub as a leg with ids of its own."""
    meta = world.ingress.verify(sealed)
    subject = world.tokens.translate(meta.meta.subject, meta.meta.sender, meta.meta.recipient)
    return (hub or world.hub).forward(meta, subject, leg=LegIds(str(uuid.uuid4()), str(uuid.uuid4())))


def edited(envelope: bytes, edit: Any) -> bytes:
    record = copy.deepcopy(codec.decode(envelope, "envelope"))
    edit(record)
    return codec.encode("envelope", record)


def leg_key_of_size(world: World, size: int) -> Any:
    """What anyone with the recipient's public key can seal as a leg key: here one of the wrong size."""
    def edit(record: dict) -> None:
        public = world.directory.encryption_key(record["recipient"])
        record["leg"]["leg_key"] = public.seal(bytes(size), layout.leg_key_info("hub", record["recipient"],
                                                                                public.key_id))
    return edit


class CountingKeyset:
    """A participant's keyset that counts the HPKE opens of leg keys (the expensive step an opener caches)."""

    def __init__(self, inner: Keyset) -> None:
        self._inner = inner
        self.leg_key_opens = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def decrypt(self, key_id: str, ciphertext: bytes, info: bytes) -> bytes:
        if info.startswith(layout.LEG_KEY_INFO):
            self.leg_key_opens += 1
        return self._inner.decrypt(key_id, ciphertext, info)


def counting_opener(world: World, participant: str = "registry") -> tuple[Opener, CountingKeyset]:
    keyset = CountingKeyset(world.keys[participant])
    return Opener(keyset, world.directory, MemoryReplayGuard(), participants=world.participants,  # type: ignore[arg-type]
                  clock=world.clock), keyset


# --------------------------------------------------------------------------- a leg's refusals, in words


def in_capitals(field: str) -> Any:
    """The leg's id in capitals, written into the bytes (the Avro string is the id's text; fastavro would
    write the canonical form back)."""
    def edit(world: World, leg: bytes) -> bytes:
        value = codec.decode(leg, "envelope")[field]
        text = str(value)
        assert leg.count(text.encode()) == 1
        return leg.replace(text.encode(), text.upper().encode())
    return edit


def record_edit(change: Any) -> Any:
    return lambda world, leg: edited(leg, change(world))


LEG_REFUSALS = {
    "countersignature removed": (record_edit(lambda w: lambda r: r.update(countersignature=None)),
                                 Reason.BAD_SIGNATURE, "a forwarded leg must carry the hub's countersignature"),
    "message_id in capitals": (in_capitals("message_id"), Reason.MALFORMED,
                               "message_id and correlation_id must be canonical lowercase UUIDs"),
    # the message id alone canonical: still refused as malformed, before any key is opened
    "correlation_id in capitals": (in_capitals("correlation_id"), Reason.MALFORMED,
                                   "message_id and correlation_id must be canonical lowercase UUIDs"),
    "procedure in the clear": (record_edit(lambda w: lambda r: r.update(procedure=PROCEDURE)), Reason.MALFORMED,
                               "a forwarded leg carries its procedure and outcome sealed, not in the clear"),
    "outcome in the clear": (record_edit(lambda w: lambda r: r.update(outcome="REGISTERED")), Reason.MALFORMED,
                             "a forwarded leg carries its procedure and outcome sealed, not in the clear"),
    "a 16-byte leg key": (record_edit(lambda w: leg_key_of_size(w, 16)), Reason.UNDECRYPTABLE,
                          "the leg key is not a 32-byte key"),
    "sealed origin altered": (record_edit(lambda w: lambda r: r["leg"].update(
        sealed_origin=r["leg"]["sealed_origin"][:-1] + b"\x00")), Reason.UNDECRYPTABLE,
        "the leg's sealed origin does not open under its leg key"),
}


@pytest.mark.parametrize("name", sorted(LEG_REFUSALS))
def test_each_refused_leg_says_why_in_words(world, name):
    edit, reason, words = LEG_REFUSALS[name]
    leg = leg_of(world, world.seal())
    opener, _ = counting_opener(world)
    assert refusal(opener.receive, edit(world, leg)) == (reason, words)
    opener.receive(leg)  # the leg as the hub sent it opens


def test_a_leg_for_someone_else_says_so_before_any_key_is_tried(world):
    leg = leg_of(world, world.seal())
    opener, keyset = counting_opener(world, "bank-1")
    assert refusal(opener.receive, leg) == (Reason.WRONG_RECIPIENT, "envelope is addressed to another participant")
    assert keyset.leg_key_opens == 0


# --------------------------------------------------------------------------- the leg keys an opener keeps


def test_an_opener_opens_each_leg_key_once_and_a_new_one_when_the_hub_restarts(world):
    opener, keyset = counting_opener(world)
    for _ in range(3):  # one hub: one leg key per recipient key and hour
        opener.receive(leg_of(world, world.seal()))
    assert keyset.leg_key_opens == 1
    restarted = HubForwarder(world.keys["hub"], world.directory, clock=world.clock)  # a leg key of its own
    opened = opener.receive(leg_of(world, world.seal(), hub=restarted))
    assert opened.meta.sender == "agency-a" and keyset.leg_key_opens == 2
    opener.receive(leg_of(world, world.seal()))  # the first hub's key is still held
    assert keyset.leg_key_opens == 2


def test_a_leg_key_sealed_by_someone_else_is_not_taken_from_the_cache(world):
    """A key anyone sealed to us is opened for its own leg: the cache is keyed by the sealed key, not shared."""
    opener, keyset = counting_opener(world)
    leg = leg_of(world, world.seal())
    opener.receive(leg)
    forged = edited(leg_of(world, world.seal()), leg_key_of_size(world, 32))
    assert refusal(opener.receive, forged)[0] is Reason.UNDECRYPTABLE  # its sealed origin is not under that key
    assert keyset.leg_key_opens == 2



def test_an_opener_keeps_the_last_256_leg_keys_it_used(world):
    """Each hub (worker, restart) seals legs under a leg key of its own: 257 of them, and the least recently
    used is the one opened again."""
    meta = world.ingress.verify(world.seal())
    subject = world.tokens.translate(meta.meta.subject, meta.meta.sender, meta.meta.recipient)
    hubs = [HubForwarder(world.keys["hub"], world.directory, clock=world.clock) for _ in range(257)]
    opener, keyset = counting_opener(world)

    def open_from(index: int) -> None:
        opener.receive(hubs[index].forward(meta, subject, leg=LegIds(str(uuid.uuid4()), str(uuid.uuid4()))))

    for index in range(256):
        open_from(index)
    open_from(0)  # held: now the most recently used
    assert keyset.leg_key_opens == 256
    open_from(256)  # the 257th: the least recently used (hub 1) makes room
    open_from(256)
    open_from(0)
    assert keyset.leg_key_opens == 257
    open_from(1)
    assert keyset.leg_key_opens == 258


# --------------------------------------------------------------------------- the hub's side


def test_the_hub_renews_a_leg_key_when_its_lifetime_is_over(world):
    hub = HubForwarder(world.keys["hub"], world.directory, clock=world.clock)

    def leg_key() -> bytes:
        return codec.decode(leg_of(world, world.seal(), hub=hub), "envelope")["leg"]["leg_key"]

    first = leg_key()
    world.clock.now += LEG_KEY_LIFETIME_S - 1
    assert leg_key() == first
    world.clock.now += 1  # exactly its lifetime after it was sealed
    assert leg_key() != first


def test_the_hub_seals_a_leg_key_only_to_a_recipient_key_valid_on_its_own_clock():
    world = World()
    meta = world.ingress.verify(world.seal(ttl_s=7_200))  # sealed to the registry's key of T0
    subject = world.tokens.translate(meta.meta.subject, meta.meta.sender, meta.meta.recipient)
    world.keys["registry"].rotate(now=int(T0 * 1000) + 1, retire_at=int(T0 * 1000) + 3_600_000)
    world.publish(world.keys["registry"])

    def forward_as_a_fresh_hub() -> bytes:
        hub = HubForwarder(world.keys["hub"], world.directory, clock=world.clock)
        return hub.forward(meta, subject, leg=LegIds(str(uuid.uuid4()), str(uuid.uuid4())))

    world.clock.now = T0 + 3_599  # the old key retires in a second: still sealed to
    world.opener("registry").receive(forward_as_a_fresh_hub())
    world.clock.now = T0 + 3_601
    assert refusal(forward_as_a_fresh_hub) == (Reason.REVOKED_KEY, "encrypt key was retired before the message "
                                                                   "was created")


@pytest.mark.parametrize("ids", [LegIds(str(uuid.UUID(int=1)), UPPER), LegIds(UPPER, str(uuid.UUID(int=1))),
                                 LegIds("", "")], ids=["correlation_id", "message_id", "empty"])
def test_the_hub_refuses_leg_ids_that_are_not_canonical(world, ids):
    meta = world.ingress.verify(world.seal())
    with pytest.raises(ValueError) as info:
        world.hub.forward(meta, world.token("registry"), leg=ids)
    assert str(info.value) == "leg ids must be canonical lowercase UUIDs"


def test_the_hubs_limits_apply_to_an_envelope_at_its_ingress_check(world):
    """The hub's caps (wraps, bytes) are judged where an envelope enters the hub: the forwarder takes only
    what that check returned, so a capped envelope never reaches it."""
    fanout = world.sealer("dicj").seal_multi(example_body("lookup.inheritance"), type="lookup.inheritance",
                                             to=["bank-1", "bank-2", "bank-3"], subject=world.token("dicj"),
                                             data_item="deposit_account_holdings", basis="inheritance")
    two = Verifier(world.directory, clock=world.clock, max_wraps=2)
    assert refusal(two.verify, fanout) == (
        Reason.OVERSIZE, "envelope carries more than 2 wraps (one per recipient)")
    small = Verifier(world.directory, clock=world.clock, max_bytes=len(fanout) - 1)
    assert refusal(small.verify, fanout) == (
        Reason.OVERSIZE, f"envelope is {len(fanout)} bytes, maximum is {len(fanout) - 1}")
    assert world.opener("bank-1").receive(world.hub.forward(world.ingress.verify(fanout), world.tokens.translate(
        world.token("dicj"), "dicj", "bank-1"), recipient="bank-1")).meta.recipient == "bank-1"


def test_the_hub_says_what_is_wrong_with_a_forward_it_is_asked_for(world):
    """Programming errors of the hub's own code (a peeked envelope, a recipient that is not the envelope's):
    refused in words that say how to call it right (a peeked one is a TypeError: only a VerifiedEnvelope is
    forwarded), and the right call goes through."""
    sealed = world.seal()
    meta = world.ingress.verify(sealed)
    subject = world.tokens.translate(meta.meta.subject, meta.meta.sender, "registry")
    with pytest.raises(TypeError) as refused:
        world.hub.forward(peek(sealed), subject, recipient=None)
    assert str(refused.value) == "HubForwarder forwards a VerifiedEnvelope from Verifier.verify, not EnvelopeMeta"
    calls = [((meta, subject, "bank-1"), "recipient= differs from the envelope's recipient")]
    fanout = world.ingress.verify(world.sealer("dicj").seal_multi(
        example_body("lookup.inheritance"), type="lookup.inheritance", to=["bank-1", "bank-2"],
        subject=world.token("dicj"), data_item="deposit_account_holdings", basis="inheritance"))
    calls += [((fanout, "x" * 64), "forward() of a fan-out needs recipient= one of its wrap recipients"),
              ((fanout, "x" * 64, "bank-3"), "forward() of a fan-out needs recipient= one of its wrap recipients")]
    for (envelope, new_subject, *recipient), words in calls:
        with pytest.raises(ValueError) as info:
            world.hub.forward(envelope, new_subject, recipient=recipient[0] if recipient else None)
        assert str(info.value) == words
    named = world.hub.forward(meta, subject, recipient="registry")  # the envelope's own recipient, named
    assert world.opener("registry").receive(named).meta.subject == world.token("registry")


# --------------------------------------------------------------------------- the in-process replay guard


def test_the_memory_replay_guard_remembers_its_last_ids_and_forgets_the_least_recently_seen():
    guard = MemoryReplayGuard(max_entries=3)
    assert [guard.check_and_remember(i) for i in ("a", "b", "c")] == [True, True, True]
    assert guard.check_and_remember("a") is False and len(guard) == 3  # all three held; "a" now the most recent
    assert guard.check_and_remember("d") is True and len(guard) == 3  # "b", the least recently seen, goes
    assert [guard.check_and_remember(i) for i in ("d", "a", "c")] == [False, False, False]
    assert guard.check_and_remember("b") is True  # forgotten: new again (why the guard is sized by the TTL)


# --------------------------------------------------------------------------- the countersignature


def test_a_countersignature_is_judged_by_the_hub_keys_state_when_it_was_made():
    """A hub key retired at T0+10 s: what it countersigned before still opens, what it countersigned after does not."""
    world = World()
    before = world.countersign(world.seal(), forwarded_at_ms=int((T0 + 5) * 1000))
    after = world.countersign(world.seal(), forwarded_at_ms=int((T0 + 20) * 1000))
    world.keys["hub"].rotate(now=int(T0 * 1000) + 1, retire_at=int((T0 + 10) * 1000))
    world.publish(world.keys["hub"])
    world.clock.now = T0 + 20
    assert world.opener("registry").receive(before).meta.sender == "agency-a"
    assert refusal(world.opener("registry").receive, after) == (Reason.REVOKED_KEY,
                                                             "sign key was retired before the message was created")


def test_a_countersignature_by_anyone_but_the_hub_says_so(world):
    impostor = HubForwarder(world.keys["bank-1"], world.directory, clock=world.clock)
    forwarded = impostor.forward(world.ingress.verify(world.seal()), world.token("registry"))
    assert refusal(world.opener("registry").receive, forwarded) == (Reason.BAD_SIGNATURE,
                                                                 "countersignature is not by the hub")


def test_a_countersignature_may_be_up_to_the_allowed_skew_ahead_and_no_more(world):
    now_ms = int(T0 * 1000)
    at_the_edge = world.countersign(world.seal(), forwarded_at_ms=now_ms + DEFAULT_SKEW_S * 1000)
    assert world.opener("registry").receive(at_the_edge).meta.sender == "agency-a"
    beyond = world.countersign(world.seal(), forwarded_at_ms=now_ms + DEFAULT_SKEW_S * 1000 + 1)
    assert refusal(world.opener("registry").receive, beyond) == (
        Reason.EXPIRED, "forwarded in the future (clock skew beyond the allowed maximum)")


def test_a_countersignature_that_does_not_verify_says_so(world):
    forwarded = edited(world.forward(world.seal()), lambda r: r.update(subject=world.token("registry", OTHER_MY_NUMBER)))
    assert refusal(world.opener("registry").receive, forwarded) == (
        Reason.BAD_SIGNATURE, "hub countersignature or batch proof does not verify")


# --------------------------------------------------------------------------- times from before 1970


def test_a_time_before_1970_in_a_forged_envelope_is_a_bad_signature_not_a_crash(world):
    """Times are signed as signed 64-bit milliseconds: a negative one is laid out like any other, so a
    forger's is refused by the signature check (an unsigned layout would raise on it instead)."""
    forwarded = world.forward(world.seal())
    back_dated = edited(forwarded, lambda r: r["countersignature"].update(forwarded_at=-1))
    assert refusal(world.opener("registry").receive, back_dated)[0] is Reason.BAD_SIGNATURE
    for field in ("created_at", "expires_at"):
        forged = edited(world.seal(), lambda r, field=field: r.update({field: -1}))
        assert refusal(world.ingress.verify, forged)[0] is Reason.BAD_SIGNATURE


# --------------------------------------------------------------------------- every refusal, in words

FANOUT_BANKS = ["bank-1", "bank-2"]
CID = UPPER.lower()  # a correlation id of letters and digits, other than the message id


def fanout(world: World) -> bytes:
    return world.sealer("dicj").seal_multi(example_body("lookup.inheritance"), type="lookup.inheritance",
                                           to=FANOUT_BANKS, subject=world.token("dicj"),
                                           data_item="deposit_account_holdings", basis="inheritance")


def at_ingress(world: World, envelope: bytes) -> Any:
    return lambda: world.ingress.verify(envelope)


def at(participant: str, envelope: bytes, **options: Any) -> Any:
    return lambda world: (lambda: world.opener(participant, **options).receive(envelope))


def lifetime(seconds: int) -> Any:
    def build(world: World) -> bytes:
        record = codec.decode(world.seal(), "envelope")
        record["expires_at"] = record["created_at"] + timedelta(seconds=seconds)
        return resign(record, world.keys["agency-a"])
    return build


def twice(world: World) -> Any:
    guard, sealed = MemoryReplayGuard(), world.seal()
    world.ingress.verify(sealed, replay_guard=guard)
    return lambda: world.ingress.verify(sealed, replay_guard=guard)


def opened_twice(world: World) -> Any:
    opener, forwarded = world.opener("registry"), world.forward(world.seal())
    opener.receive(forwarded)
    return lambda: opener.receive(forwarded)


REFUSALS: dict[str, tuple[Any, Reason, str]] = {
    # the hub's ingress (Verifier.verify)
    "ingress: countersigned": (lambda w: at_ingress(w, w.forward(w.seal())), Reason.MALFORMED,
                               "envelope is already countersigned; only origin envelopes enter the hub"),
    "ingress: one wrap of a fan-out": (
        lambda w: at_ingress(w, edited(w.forward(fanout(w), "bank-1"), lambda r: r.update(countersignature=None))),
        Reason.MALFORMED, "a fan-out envelope entering the hub must carry every wrap"),
    "ingress: another subject": (
        lambda w: at_ingress(w, edited(w.seal(), lambda r: r.update(subject=w.token("agency-a", OTHER_MY_NUMBER)))),
        Reason.BAD_SIGNATURE, "subject does not match the signed subject commitment"),
    "ingress: seen before": (twice, Reason.REPLAYED, "message id was seen before"),
    # the origin's shape, key and signature (Verifier._check_origin)
    "origin: id in capitals": (lambda w: at_ingress(w, in_capitals("message_id")(w, w.seal(correlation_id=CID))),
                               Reason.MALFORMED, "message_id and correlation_id must be canonical lowercase UUIDs"),
    "origin: correlation id in capitals": (
        lambda w: at_ingress(w, in_capitals("correlation_id")(w, w.seal(correlation_id=CID))),
        Reason.MALFORMED, "message_id and correlation_id must be canonical lowercase UUIDs"),
    "origin: short commitment": (
        lambda w: at_ingress(w, edited(w.seal(), lambda r: r.update(subject_commitment=bytes(31)))),
        Reason.MALFORMED, "subject_commitment must be 32 bytes"),
    "origin: fan-out to one": (
        lambda w: at_ingress(w, edited(fanout(w), lambda r: r.update(recipient="bank-1"))),
        Reason.MALFORMED, "fan-out envelope must be addressed to '*' with no key id"),
    "origin: fan-out with a key id": (
        lambda w: at_ingress(w, edited(fanout(w), lambda r: r.update(recipient_key_id="k"))),
        Reason.MALFORMED, "fan-out envelope must be addressed to '*' with no key id"),
    "origin: a recipient twice": (
        lambda w: at_ingress(w, edited(fanout(w), lambda r: r.update(wraps=[*r["wraps"], r["wraps"][0]]))),
        Reason.MALFORMED, "fan-out envelope lists a recipient twice"),
    "origin: single with fan-out fields": (
        lambda w: at_ingress(w, edited(w.seal(), lambda r: r.update(recipient="*"))),
        Reason.MALFORMED, "single-recipient envelope with fan-out fields"),
    "origin: another's key": (
        lambda w: at_ingress(w, edited(w.seal(), lambda r: r.update(sender_key_id=w.keys["agency-b"].signing_key_id))),
        Reason.BAD_SIGNATURE, "signing key does not belong to the sender"),
    "origin: a field changed": (
        lambda w: at_ingress(w, edited(w.seal(), lambda r: r.update(data_item="everything"))),
        Reason.BAD_SIGNATURE, "origin signature or batch proof does not verify"),
    "origin: over the lifetime cap": (lambda w: at_ingress(w, lifetime(MAX_TTL_S + 1)(w)), Reason.EXPIRED,
                                      f"lifetime must be positive and at most {MAX_TTL_S} s"),
    "origin: no lifetime": (lambda w: at_ingress(w, lifetime(0)(w)), Reason.EXPIRED,
                            f"lifetime must be positive and at most {MAX_TTL_S} s"),
    # one copy of a fan-out, at its bank (Opener.open)
    "copy: recipient not its wrap's": (
        lambda w: at("bank-2", edited(w.forward(fanout(w), "bank-1"), lambda r: r.update(recipient="bank-2")))(w),
        Reason.BAD_SIGNATURE, "recipient does not match its wrap"),
    "copy: a proof that is no path": (
        lambda w: at("bank-1", edited(w.forward(fanout(w), "bank-1"),
                                      lambda r: r["wrap_proof"].update(leaf_index=2)))(w),
        Reason.BAD_SIGNATURE, "wrap proof is ill-formed"),
    # the recipient (Opener.open)
    "open: not countersigned": (lambda w: at("registry", w.seal())(w), Reason.BAD_SIGNATURE,
                                "envelope is not countersigned by the hub"),
    "open: direct, another subject": (
        lambda w: at("registry", edited(w.seal(), lambda r: r.update(subject=w.token("agency-a", OTHER_MY_NUMBER))),
                     require_countersignature=False)(w),
        Reason.BAD_SIGNATURE, "subject does not match the signed subject commitment"),
    "open: addressed to another": (lambda w: at("bank-1", w.forward(w.seal()))(w), Reason.WRONG_RECIPIENT,
                                   "envelope is addressed to another participant"),
    "open: seen before": (opened_twice, Reason.REPLAYED, "message id was seen before"),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_each_refusal_says_its_reason_in_words(world, name):
    attempt, reason, words = REFUSALS[name]
    assert refusal(attempt(world)) == (reason, words)


# --------------------------------------------------------------------------- a body its own sender signed wrongly


def test_a_body_of_another_type_under_a_valid_signature_is_refused(world):
    """A sender signs a ``provision.inquiry`` whose sealed body is an ``existence.check``: the body is read only
    as the type the envelope names, so the recipient never acts on a body of a type it did not accept."""
    record = codec.decode(world.seal(), "envelope")
    mid, key_id = str(record["message_id"]), record["recipient_key_id"]
    other = codec.encode(BODY_SCHEMA["existence.check"], example_body("existence.check"))
    record["body"] = world.directory.recipient_key(key_id, sealed_at=int(T0 * 1000)).seal(
        other, layout.body_info(mid, "provision.inquiry", "agency-a", "registry", key_id))
    confused = world.countersign(resign(record, world.keys["agency-a"]))
    reason, words = refusal(world.opener("registry").receive, confused)
    assert (reason, words) == (Reason.UNKNOWN_SCHEMA, "body: writer schema is existence_check v1, expected a version "
                                                      "of provision_inquiry")


def test_a_fanout_body_that_does_not_open_under_its_data_key_is_undecryptable(world):
    """The sender (dicj) signs a fan-out whose body is not sealed under the data key its wraps carry."""
    record = codec.decode(fanout(world), "envelope")
    record["body"] = bytes(12) + b"not sealed under the data key"
    garbled = world.forward(resign(record, world.keys["dicj"]), "bank-1")
    assert refusal(world.opener("bank-1").receive, garbled) == (Reason.UNDECRYPTABLE,
                                                             "fan-out body does not open under its data key")


# --------------------------------------------------------------------------- the opener's own settings and keys


def test_an_opener_judges_the_countersignature_by_its_own_hub_id_and_skew(world):
    forwarded = world.forward(world.seal())
    assert refusal(world.opener("registry", hub_id="hub-2").receive, forwarded) == (
        Reason.BAD_SIGNATURE, "countersignature is not by the hub")
    ahead = world.countersign(world.seal(), forwarded_at_ms=int((T0 + 45) * 1000))
    assert refusal(world.opener("registry").receive, ahead)[0] is Reason.EXPIRED  # the default skew: 30 s
    assert world.opener("registry", max_skew_s=60).receive(ahead).meta.sender == "agency-a"


def test_the_ingress_judges_a_recipient_key_by_its_state_when_the_message_was_created():
    world = World()
    sealed = world.seal()  # created at T0, sealed to the registry's key
    world.keys["registry"].rotate(now=int(T0 * 1000) - 10_000, retire_at=int(T0 * 1000) - 1)
    world.publish(world.keys["registry"])
    assert refusal(world.ingress.verify, sealed) == (Reason.REVOKED_KEY,
                                                     "encrypt key was retired before the message was created")
    world = World()
    sealed = world.seal()
    world.keys["registry"].rotate(now=int(T0 * 1000) - 10_000, retire_at=int(T0 * 1000))
    world.publish(world.keys["registry"])
    assert world.ingress.verify(sealed).meta.recipient == "registry"  # retired at its creation: still sealed in time


def test_a_body_its_sender_sealed_to_another_participants_key_is_refused(world):
    record = codec.decode(world.seal(), "envelope")
    record["recipient_key_id"] = world.keys["bank-1"].encryption_key_id  # signed so by the sender itself
    assert refusal(world.ingress.verify, resign(record, world.keys["agency-a"])) == (
        Reason.UNDECRYPTABLE, "body is sealed to a key that is not the recipient's")


def test_the_ingress_refuses_a_message_from_a_clock_ahead_beyond_the_skew_or_past_its_expiry(world):
    """At the hub's ingress nothing is countersigned yet: the origin's own times are the only ones checked."""
    world.clock.now = T0 + DEFAULT_SKEW_S
    at_the_edge = world.seal()  # created exactly the allowed skew ahead of the hub's clock
    world.clock.now = T0 + DEFAULT_SKEW_S + 0.001
    beyond = world.seal()
    world.clock.now = T0
    assert world.ingress.verify(at_the_edge).meta.sender == "agency-a"
    assert refusal(world.ingress.verify, beyond) == (
        Reason.EXPIRED, "created in the future (clock skew beyond the allowed maximum)")
    short = world.seal(ttl_s=60)
    world.clock.now = T0 + 60
    assert refusal(world.ingress.verify, short) == (Reason.EXPIRED, "message has expired")


def test_the_ingress_judges_a_fanout_wraps_key_by_its_state_when_the_message_was_created():
    """Each wrap of a fan-out is sealed to its bank's key at the message's creation: a key retired before
    then is refused, one retired at that very moment still counts (the single-recipient rule, per wrap)."""
    def fanout(world: World) -> bytes:
        return world.sealer("dicj").seal_multi(example_body("lookup.inheritance"), type="lookup.inheritance",
                                               to=["bank-1", "bank-2"], subject=world.token("dicj"),
                                               data_item="deposit_account_holdings", basis="inheritance")

    for retired_at, refused in ((int(T0 * 1000) - 1, True), (int(T0 * 1000), False)):
        world = World()
        sealed = fanout(world)  # created at T0
        world.keys["bank-2"].rotate(now=int(T0 * 1000) - 10_000, retire_at=retired_at)
        world.publish(world.keys["bank-2"])
        if refused:
            assert refusal(world.ingress.verify, sealed) == (Reason.REVOKED_KEY,
                                                             "encrypt key was retired before the message was created")
        else:
            assert world.ingress.verify(sealed).meta.sender == "dicj"


def test_the_ingress_replay_guard_is_keyed_by_each_messages_own_id(world):
    """Two different messages through one guard both pass; the first one again is REPLAYED."""
    guard = MemoryReplayGuard()
    first, second = world.seal(), world.seal()
    assert world.ingress.verify(first, replay_guard=guard).meta.sender == "agency-a"
    assert world.ingress.verify(second, replay_guard=guard).meta.sender == "agency-a"
    assert refusal(world.ingress.verify, first, replay_guard=guard) == (Reason.REPLAYED, "message id was seen before")
    assert len(guard) == 2


def test_a_forwarded_fanout_carrying_more_than_its_one_wrap_is_malformed(world):
    """The hub forwards a fan-out to each bank with that bank's wrap alone (and its Merkle proof). A copy
    carrying a second wrap is refused by name before any signature is judged, by a verifier whose caps
    admit it (an inbox's opener refuses it earlier still: it takes one wrap at most, OVERSIZE)."""
    fanout = world.ingress.verify(world.sealer("dicj").seal_multi(
        example_body("lookup.inheritance"), type="lookup.inheritance", to=["bank-1", "bank-2"],
        subject=world.token("dicj"), data_item="deposit_account_holdings", basis="inheritance"))
    forwarded = world.hub.forward(fanout, world.tokens.translate(world.token("dicj"), "dicj", "bank-1"),
                                  recipient="bank-1")
    delivered = Verifier(world.directory, clock=world.clock)  # default caps: up to 10,000 wraps
    assert delivered.verify_delivered(forwarded).meta.recipient == "bank-1"  # as the hub sent it
    record = codec.decode(forwarded, "envelope")
    assert record["wrap_proof"] is not None and len(record["wraps"]) == 1
    record["wraps"] = record["wraps"] + [dict(record["wraps"][0], recipient="bank-2")]
    assert refusal(delivered.verify_delivered, codec.encode("envelope", record)) == (
        Reason.MALFORMED, "forwarded fan-out envelope must carry exactly one wrap")
    assert refusal(world.opener("bank-1").verify, codec.encode("envelope", record))[0] is Reason.OVERSIZE


def test_the_hub_seals_a_leg_key_only_to_a_key_of_the_legs_own_recipient(world):
    """The hub's own code asked to seal a registry leg to bank-1's key: refused in words, nothing sealed."""
    sealer = LegSealer(world.keys["hub"], world.directory)
    record = codec.decode(world.seal(), "envelope")  # addressed to the registry
    ids = LegIds(str(uuid.uuid4()), str(uuid.uuid4()))
    record["recipient_key_id"] = world.keys["bank-1"].encryption_key_id
    with pytest.raises(ValueError) as info:
        sealer.seal(dict(record), b"origin", ids, T0)
    assert str(info.value) == "the recipient key does not belong to the recipient"
    record["recipient_key_id"] = world.keys["registry"].encryption_key_id
    sealer.seal(record, b"origin", ids, T0)
    assert record["leg"]["leg_key"] and record["message_id"] == ids.message_id
