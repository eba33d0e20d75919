"""Batch signatures: Merkle audit paths, batch-sealed and batch-countersigned envelopes, the verified-root cache."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.core.errors import EnvelopeRejection, Reason
from infra.crypto import merkle
from infra.crypto.envelope import Message, Verifier
from infra.crypto.keys import SigningPublicKey
from schemas import codec
from tests.unit.envelope_world import T0, World, example_body, fresh_clock, world  # noqa: F401 - fixtures
from tests.unit.leakguard import no_personal_data  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("no_personal_data")


# --- the tree ---------------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=16), min_size=1, max_size=70))
def test_every_audit_path_leads_to_the_root(items):
    leaves = [merkle.leaf_hash(b) for b in items]
    root, paths = merkle.build(leaves)
    n = len(leaves)
    for i, leaf in enumerate(leaves):
        assert merkle.root_from_path(leaf, i, n, paths[i]) == root
    if n == 1:
        assert root == leaves[0] and paths == [[]]


@given(st.lists(st.binary(min_size=1, max_size=8), min_size=2, max_size=40, unique=True), st.data())
def test_wrong_index_tampered_sibling_or_foreign_leaf_fail(items, data):
    leaves = [merkle.leaf_hash(b) for b in items]
    root, paths = merkle.build(leaves)
    n = len(leaves)
    i = data.draw(st.integers(0, n - 1))
    j = data.draw(st.integers(0, n - 1).filter(lambda x: x != i))
    assert merkle.root_from_path(leaves[i], j, n, paths[i]) != root
    assert merkle.root_from_path(leaves[j], i, n, paths[i]) != root
    k = data.draw(st.integers(0, len(paths[i]) - 1))
    tampered = list(paths[i])
    tampered[k] = bytes(32)
    assert merkle.root_from_path(leaves[i], i, n, tampered) != root


def test_ill_formed_paths_are_refused():
    leaves = [merkle.leaf_hash(os.urandom(4)) for _ in range(5)]
    _, paths = merkle.build(leaves)
    assert merkle.root_from_path(leaves[0], 5, 5, paths[0]) is None  # index out of range
    assert merkle.root_from_path(leaves[0], -1, 5, paths[0]) is None
    assert merkle.root_from_path(leaves[0], 0, 5, paths[0] + [bytes(32)]) is None  # too long
    assert merkle.root_from_path(leaves[0], 0, 5, paths[0][:-1]) is None  # too short
    assert merkle.root_from_path(leaves[0], 0, 5, [b"short"] + paths[0][1:]) is None
    assert merkle.root_from_path(leaves[0], 0, 2**41, [bytes(32)] * 41) is None  # bounded
    with pytest.raises(ValueError):
        merkle.build([])


def test_interior_node_cannot_pass_as_a_leaf():
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(4)]
    root, _ = merkle.build(leaves)
    node01 = merkle.node_hash(leaves[0], leaves[1])
    node23 = merkle.node_hash(leaves[2], leaves[3])
    assert merkle.node_hash(node01, node23) == root
    # presenting node01 as a leaf of a 2-leaf tree reaches the same bytes only if 0x00/0x01 prefixes collide
    assert merkle.leaf_hash(node01) != node01


# --- batch-sealed envelopes ---------------------------------------------------------------------


def batch(world: World, n: int, sender: str = "agency-a", to: str = "registry") -> list[bytes]:
    return world.sealer(sender).seal_batch(
        [
            Message(example_body("provision.inquiry"), "provision.inquiry", to, world.token(sender), "account", "law-9")
            for _ in range(n)
        ]
    )


def count_verifies(monkeypatch) -> list[int]:
    calls = [0]
    original = SigningPublicKey.verify

    def counting(self, signature, data):
        calls[0] += 1
        return original(self, signature, data)

    monkeypatch.setattr(SigningPublicKey, "verify", counting)
    return calls


@pytest.mark.parametrize("n", [1, 2, 3, 16, 17])
def test_batch_sealed_envelopes_open_and_share_one_signature(world, n):
    sealed = batch(world, n)
    signatures = {codec.decode(s, "envelope")["signature"]["root_signature"] for s in sealed}
    assert len(signatures) == 1
    opener = world.opener("registry")
    forwarded = world.hub.forward_batch([(world.ingress.verify(s), world.token("registry")) for s in sealed])
    hub_signatures = {codec.decode(f, "envelope")["countersignature"]["signature"]["root_signature"] for f in forwarded}
    assert len(hub_signatures) == 1
    assert len({opener.receive(f).meta.message_id for f in forwarded}) == n


def test_verified_roots_are_cached(world, monkeypatch):
    sealed = batch(world, 16)
    calls = count_verifies(monkeypatch)
    metas = [world.ingress.verify(s) for s in sealed]
    assert calls[0] == 1  # one Ed25519 check for the whole origin batch
    forwarded = world.hub.forward_batch([(m, world.token("registry")) for m in metas])
    opener = world.opener("registry")
    calls[0] = 0
    for f in forwarded:
        opener.receive(f)
    assert calls[0] == 2  # origin root + hub root, each once


def test_each_per_message_signature_is_verified_once(world, monkeypatch):
    """Per-message roots are cached like batch roots: three envelopes, three checks; seen again, none."""
    sealed = [batch(world, 1)[0] for _ in range(3)]
    calls = count_verifies(monkeypatch)
    for s in sealed:
        world.ingress.verify(s)
    assert calls[0] == 3
    for s in sealed:
        world.ingress.verify(s)
    assert calls[0] == 3


@pytest.mark.parametrize(
    "change",
    [
        {"leaf_index": 5},
        {"leaf_index": 15},
        {"leaf_count": 17},
        {"leaf_count": 8},
        {"siblings": "drop-last"},
        {"siblings": "zero-first"},
    ],
)
def test_tampered_batch_proof_is_bad_signature(world, change):
    sealed = batch(world, 16)
    world.ingress.verify(sealed[3])  # the root is now cached: tampering must fail anyway
    record = codec.decode(sealed[3], "envelope")
    proof = record["signature"]["proof"]
    if change.get("siblings") == "drop-last":
        proof["siblings"] = proof["siblings"][:-1]
    elif change.get("siblings") == "zero-first":
        proof["siblings"] = [bytes(32)] + proof["siblings"][1:]
    else:
        proof.update(change)
    with pytest.raises(EnvelopeRejection) as info:
        world.ingress.verify(codec.encode("envelope", record))
    assert info.value.reason is Reason.BAD_SIGNATURE


def test_unsigned_or_foreign_root_is_bad_signature(world):
    sealed = batch(world, 4)
    world.ingress.verify(sealed[0])  # cache the genuine root
    record = codec.decode(sealed[1], "envelope")
    record["signature"]["root_signature"] = bytes(64)  # same root, signature not the cached one
    with pytest.raises(EnvelopeRejection) as info:
        world.ingress.verify(codec.encode("envelope", record))
    assert info.value.reason is Reason.BAD_SIGNATURE
    # a proof from another sender's batch, under this sender's key id
    other = codec.decode(batch(world, 4, sender="agency-b")[1], "envelope")
    record = codec.decode(sealed[1], "envelope")
    record["signature"] = other["signature"]
    with pytest.raises(EnvelopeRejection) as info:
        world.ingress.verify(codec.encode("envelope", record))
    assert info.value.reason is Reason.BAD_SIGNATURE


def test_revocation_applies_even_to_a_cached_root():
    world = World()
    world.clock.now = T0
    sealed = batch(world, 8, sender="bank-3")
    world.ingress.verify(sealed[0])
    world.directory.revoke(world.keys["bank-3"].signing_key_id)
    with pytest.raises(EnvelopeRejection) as info:
        world.ingress.verify(sealed[1])
    assert info.value.reason is Reason.REVOKED_KEY


def test_hub_batch_countersignature_tampering(world):
    metas = [world.ingress.verify(s) for s in batch(world, 8)]
    forwarded = world.hub.forward_batch([(m, world.token("registry")) for m in metas])
    opener = world.opener("registry")
    opener.receive(forwarded[0])  # cache the hub root
    record = codec.decode(forwarded[1], "envelope")
    record["countersignature"]["signature"]["proof"]["leaf_index"] = 2
    with pytest.raises(EnvelopeRejection) as info:
        opener.receive(codec.encode("envelope", record))
    assert info.value.reason is Reason.BAD_SIGNATURE
    # the subject of one message swapped with another's from the same hub batch
    record = codec.decode(forwarded[1], "envelope")
    record["subject"] = world.token("registry", "987654321093")
    with pytest.raises(EnvelopeRejection) as info:
        opener.receive(codec.encode("envelope", record))
    assert info.value.reason is Reason.BAD_SIGNATURE
    for f in forwarded[1:]:
        opener.receive(f)


def test_mixed_batch_of_single_and_fanout_messages(world):
    sealer = world.sealer("dicj")
    body = example_body("lookup.inheritance")
    sealed = sealer.seal_batch(
        [
            Message(body, "lookup.inheritance", ("bank-1", "bank-2"), world.token("dicj"), "deposits", "law-7"),
            Message(example_body("numbering.request"), "numbering.request", "bank-3", world.token("dicj"), "a", "b"),
        ]
    )
    fan, single = (world.ingress.verify(s) for s in sealed)
    items = [(fan, world.token("bank-1"), "bank-1"), (fan, world.token("bank-2"), "bank-2"), (single, world.token("bank-3"))]
    out = world.hub.forward_batch(items)
    assert world.opener("bank-1").receive(out[0]).meta.recipient == "bank-1"
    assert world.opener("bank-2").receive(out[1]).meta.recipient == "bank-2"
    assert world.opener("bank-3").receive(out[2]).meta.recipient == "bank-3"


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(n=st.integers(1, 20), data=st.data())
def test_any_message_of_a_batch_verifies_alone_and_in_any_order(world, n, data):
    sealed = batch(world, n)
    order = data.draw(st.permutations(range(n)))
    verifier = Verifier(world.directory, clock=world.clock)  # empty root cache
    for i in order:
        assert verifier.verify(sealed[i]).meta.sender == "agency-a"
