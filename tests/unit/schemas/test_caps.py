"""Bounded work before the signature check (issue 13.8): wrap and sibling caps, key check first, the rate limit."""

from __future__ import annotations

import copy
import hashlib

import fastavro
import pytest

from infra.core.errors import CodecError, Reason
from infra.crypto import envelope, layout, merkle
from infra.domain.ratelimit import SenderRateLimiter
from schemas import codec
from schemas.bounds import ArrayCaps, CapExceeded
from streams.gateway import HubCore, Inbound
from tests.unit.envelope_world import PROCEDURE, Clock, World, example_body, fresh_clock, rejected, world, world_policy  # noqa: F401 - fixtures
from tests.unit.leakguard import no_personal_data  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("no_personal_data")


class Work:
    """Counts what a check costs: Avro decodes and SHA-256 digests (every leaf and node is one)."""

    def __init__(self, monkeypatch) -> None:
        self.decodes = self.digests = 0
        reader, digest = fastavro.schemaless_reader, hashlib.sha256

        def counting_reader(*a, **kw):
            self.decodes += 1
            return reader(*a, **kw)

        def counting_digest(*a, **kw):
            self.digests += 1
            return digest(*a, **kw)

        monkeypatch.setattr(fastavro, "schemaless_reader", counting_reader)
        monkeypatch.setattr(layout, "sha256", counting_digest)  # the signed leaves are hashed in the layout
        monkeypatch.setattr(merkle, "sha256", counting_digest)


def forged(world: World, *, wraps: int = 0, siblings: int = 0, where: str = "signature") -> bytes:
    """A hostile envelope: someone's real public key id, junk signature, ``wraps`` empty wraps, long audit paths."""
    r = codec.decode(world.seal(), "envelope")
    if wraps:
        r["recipient"], r["recipient_key_id"] = envelope.FANOUT, ""
        r["wraps"] = [{"recipient": f"r{i}", "recipient_key_id": "", "wrapped_key": b""} for i in range(wraps)]
    path = [bytes(32)] * siblings
    if where == "signature":
        r["signature"]["proof"]["siblings"] = path
    elif where == "wrap_proof":
        r["wrap_proof"] = {"leaf_index": 0, "leaf_count": 2, "siblings": path}
    elif where == "countersignature":
        r["countersignature"] = {"key_id": world.keys["hub"].signing_key_id, "forwarded_at": r["created_at"],
                                 "signature": {"proof": {"leaf_index": 0, "leaf_count": 2, "siblings": path},
                                               "root_signature": bytes(64)}}
    r["signature"]["root_signature"] = bytes(64)
    return codec.encode("envelope", r)


# --- the caps, before decoding ------------------------------------------------------------------


def test_a_huge_fanout_is_refused_before_it_is_decoded_or_hashed(world, monkeypatch):
    hostile = forged(world, wraps=100_000)
    assert 600_000 < len(hostile) < envelope.DEFAULT_MAX_BYTES  # under the size limit: only the cap refuses it
    work = Work(monkeypatch)
    hub_ingress = envelope.Verifier(world.directory, clock=world.clock, max_wraps=len(world.participants))
    assert rejected(hub_ingress.verify, hostile) is Reason.OVERSIZE
    assert rejected(world.opener("registry").receive, hostile) is Reason.OVERSIZE
    assert rejected(envelope.peek, hostile) is Reason.OVERSIZE  # ops tools too: peek never decodes it
    assert (work.decodes, work.digests) == (0, 0)


def test_the_wrap_cap_is_the_participant_count(world):
    hub_ingress = envelope.Verifier(world.directory, clock=world.clock, max_wraps=3)
    sealed = world.sealer("dicj").seal_multi(example_body("lookup.inheritance"), type="lookup.inheritance",
                                             to=["bank-1", "bank-2", "bank-3"], subject=world.token("dicj"),
                                             data_item="deposit_account_holdings", basis="x")
    assert hub_ingress.verify(sealed).meta.recipients == ("bank-1", "bank-2", "bank-3")  # at the cap: fine
    assert rejected(envelope.Verifier(world.directory, clock=world.clock, max_wraps=2).verify, sealed) is Reason.OVERSIZE


@pytest.mark.parametrize("where", ["signature", "wrap_proof", "countersignature"])
def test_an_audit_path_over_40_siblings_is_refused_before_it_is_decoded(world, monkeypatch, where):
    hostile = forged(world, siblings=30_000, where=where)
    assert len(hostile) < envelope.DEFAULT_MAX_BYTES
    work = Work(monkeypatch)
    assert rejected(world.ingress.verify, hostile) is Reason.MALFORMED
    assert rejected(world.opener("registry").receive, hostile) is Reason.MALFORMED
    assert (work.decodes, work.digests) == (0, 0)


def test_an_audit_path_of_40_siblings_is_decoded_and_checked(world):
    at_cap = forged(world, siblings=merkle.MAX_PATH)
    assert rejected(world.ingress.verify, at_cap) is Reason.BAD_SIGNATURE  # the tree check refuses it, not the cap
    assert rejected(world.ingress.verify, forged(world, siblings=merkle.MAX_PATH + 1)) is Reason.MALFORMED


def test_the_key_is_checked_before_anything_is_hashed(world, monkeypatch):
    """A forged fan-out under an unknown key id, or someone else's key, costs no digest at all."""
    r = codec.decode(forged(world, wraps=8), "envelope")
    r["sender_key_id"] = "agency-a:sign:0000000000000000"
    unknown = codec.encode("envelope", r)
    r["sender_key_id"] = world.keys["agency-b"].signing_key_id
    not_the_senders = codec.encode("envelope", r)
    work = Work(monkeypatch)
    assert rejected(world.ingress.verify, unknown) is Reason.UNKNOWN_KEY
    assert rejected(world.ingress.verify, not_the_senders) is Reason.BAD_SIGNATURE
    assert work.digests == 0


# --- ArrayCaps on Avro binary ---------------------------------------------------------------------

SCHEMA = {"type": "record", "name": "T", "namespace": "x", "fields": [
    {"name": "a", "type": "string"},
    {"name": "items", "type": {"type": "array", "items": {"type": "record", "name": "I", "fields": [
        {"name": "b", "type": "bytes"}, {"name": "n", "type": "long"}]}}},
    {"name": "maybe", "type": ["null", "x.I"]},
    {"name": "nested", "type": {"type": "array", "items": {"type": "record", "name": "J", "fields": [
        {"name": "items", "type": {"type": "array", "items": "int"}}]}}},
]}


def binary(record: dict) -> bytes:
    import io

    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(copy.deepcopy(SCHEMA)), record)
    return out.getvalue()


def record(n: int, nested: int = 0) -> dict:
    return {"a": "x", "items": [{"b": b"k", "n": i} for i in range(n)], "maybe": {"b": b"", "n": -1},
            "nested": [{"items": list(range(nested))}]}


def test_array_caps_count_items_at_any_depth():
    caps = ArrayCaps(SCHEMA, {"items": 3})
    assert caps.check(binary(record(3, 3))) is None
    assert caps.check(binary(record(4))) == CapExceeded("items", 3)
    assert caps.check(binary(record(0, 4))) == CapExceeded("items", 3)  # the nested array of the same name
    assert ArrayCaps(SCHEMA, {}).check(binary(record(50, 50))) is None


def test_array_caps_sum_blocks_and_do_not_trust_block_sizes():
    caps = ArrayCaps(SCHEMA, {"items": 2})
    item = b"\x02k\x00"  # bytes "k", long 0

    def zz(n: int) -> bytes:  # a small zig-zag varint
        return bytes([((n << 1) ^ (n >> 63)) & 0xFF])

    head = b"\x02x"
    tail = b"\x00" + b"\x00"  # maybe: null branch; nested: empty
    one_block_each = head + (zz(1) + item) * 3 + b"\x00" + tail
    assert caps.check(one_block_each) == CapExceeded("items", 2)
    sized_block = head + zz(-3) + zz(0) + item * 3 + b"\x00" + tail  # negative count: a (false) byte size follows
    assert caps.check(sized_block) == CapExceeded("items", 2)
    assert caps.check(head + zz(-2) + zz(40) + item * 2 + b"\x00" + tail) is None


@pytest.mark.parametrize("bad", [b"", b"\x02", b"\x02x\x02\x02", b"\x02x\x00\x04", b"\xff" * 12])
def test_array_caps_refuse_bytes_they_cannot_walk(bad):
    with pytest.raises(CodecError) as info:
        ArrayCaps(SCHEMA, {"items": 2}).check(bad)
    assert info.value.reason is Reason.MALFORMED


# --- the per-sender rate limit ------------------------------------------------------------------------


def test_token_bucket_refills_at_its_rate_up_to_its_burst():
    clock = Clock(100.0)
    limiter = SenderRateLimiter(2, 3, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")  # another sender has its own bucket
    clock.now += 0.5  # one token back
    assert [limiter.allow("a") for _ in range(2)] == [True, False]
    clock.now += 60  # never more than the burst
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    with pytest.raises(ValueError):
        SenderRateLimiter(0, 10)


def test_the_hub_refuses_a_sender_over_its_rate_and_serves_the_others(world):
    clock = Clock(0.0)
    core = HubCore(verifier=world.ingress, forwarder=world.hub, policy=world_policy(), participants=world.participants,
                   tokens=world.tokens, limiter=SenderRateLimiter(1, 5, clock=clock))

    def inquiry(sender: str) -> Inbound:
        return Inbound(world.seal(sender=sender, basis="account-registration-act/art9", procedure=PROCEDURE), 0, 0)

    flood = core.decide([inquiry("agency-a") for _ in range(8)])
    assert [d.reason for d in flood] == [None] * 5 + [Reason.RATE_LIMITED] * 3
    assert all(not d.legs and not d.records for d in flood[5:])
    assert all(d.accepted for d in core.decide([inquiry("agency-b") for _ in range(5)]))
    # forged envelopes claiming agency-a are refused as forgeries and spend nothing of its budget
    clock.now += 2.0
    junk = [Inbound(forged(world), 0, 0) for _ in range(10)]
    assert {d.reason for d in core.decide(junk)} == {Reason.BAD_SIGNATURE}
    assert [d.reason for d in core.decide([inquiry("agency-a") for _ in range(3)])] == [None, None,
                                                                                         Reason.RATE_LIMITED]
