"""The hub's pseudonyms: per-leg ids, per-participant correlation spaces, record ids, the audit key."""

from __future__ import annotations

import base64
import hmac
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from infra.crypto.pseudonyms import HubPseudonyms
from infra.crypto.tokens import TokenAuthority

AUTHORITY = TokenAuthority(bytes(range(32)), bytes(range(32, 64)))
HUB = HubPseudonyms.of(AUTHORITY)
ids = st.uuids().map(str)
participants = st.sampled_from(["agency-nta", "registry", "portal", "dicj", "bank-9000", "bank-9001"])


@settings(max_examples=200, deadline=None)
@given(ids, ids, participants, participants)
def test_a_reply_reaches_the_requester_under_its_own_correlation(mid, cid, requester, provider):
    [leg] = HUB.legs(mid, cid, requester, [provider])
    # the provider answers in the correlation it was shown; the hub maps it back
    [back] = HUB.legs(str(uuid.uuid4()), leg.correlation_id, provider, [requester])
    assert back.correlation_id == cid
    assert HUB.conversation(cid, requester) == HUB.conversation(leg.correlation_id, provider)


@settings(max_examples=200, deadline=None)
@given(ids, ids)
def test_no_leg_id_equals_an_origin_id_or_another_legs(mid, cid):
    banks = [f"bank-{9000 + i}" for i in range(20)]
    legs = HUB.legs(mid, cid, "dicj", banks)
    seen = [x for leg in legs for x in (leg.message_id, leg.correlation_id)]
    assert len(set(seen)) == len(seen) and mid not in seen and cid not in seen
    assert all(str(uuid.UUID(x)) == x for x in seen)  # canonical UUIDs, as the envelope requires


def test_leg_ids_are_deterministic_so_a_forward_again_is_a_duplicate():
    mid, cid = str(uuid.uuid4()), str(uuid.uuid4())
    assert HUB.legs(mid, cid, "agency-nta", ["registry"]) == HUB.legs(mid, cid, "agency-nta", ["registry"])
    assert HUB.legs(mid, cid, "agency-nta", ["registry"]) != HUB.legs(str(uuid.uuid4()), cid, "agency-nta",
                                                                      ["registry"])


def test_without_the_hub_secret_nothing_maps():
    other = HubPseudonyms(bytes(32))
    mid, cid = str(uuid.uuid4()), str(uuid.uuid4())
    assert other.legs(mid, cid, "a", ["b"]) != HUB.legs(mid, cid, "a", ["b"])
    assert other.person("token") != HUB.person("token")
    assert other.record_message_id(mid) != HUB.record_message_id(mid)


def test_record_ids_and_person_pseudonyms():
    mid = str(uuid.uuid4())
    assert HUB.record_message_id(mid) == HUB.record_message_id(uuid.UUID(mid)) != uuid.UUID(mid)
    person = HUB.person("dG9rZW4")
    assert person == HUB.person("dG9rZW4") != HUB.person("dG9rZW5") and len(person) == 43
    assert "dG9rZW4" not in person and "secret" in repr(HUB)


def test_the_hub_secret_is_apart_from_every_token_key():
    assert AUTHORITY.hub_secret("pseudonyms") != AUTHORITY.hub_secret("other")
    assert len(AUTHORITY.hub_secret("pseudonyms")) == 32
    assert TokenAuthority(bytes(range(32)), bytes(32)).hub_secret("pseudonyms") != AUTHORITY.hub_secret("pseudonyms")


def test_each_id_is_the_documented_hmac_and_the_same_on_every_call():
    """The keyed HMAC states are copied per call, never consumed: every call gives the documented
    ``HMAC(K, ...)`` under the subkey of its label, however many came before it."""
    secret = AUTHORITY.hub_secret("pseudonyms")

    def mac(label: bytes, data: bytes) -> bytes:
        return hmac.digest(hmac.digest(secret, b"renkei pseudonyms v1|" + label, "sha256"), data, "sha256")

    mid, token = str(uuid.uuid4()), "dG9rZW4tZm9yLWEtcGVyc29u"
    for _ in range(3):
        assert HUB.leg_message_id(mid, "registry") == str(uuid.UUID(bytes=mac(b"leg", f"{mid}|registry".encode())[:16]))
        assert HUB.record_message_id(mid) == uuid.UUID(bytes=mac(b"record", mid.encode())[:16])
        digest = mac(b"person", token.encode())
        assert HUB.person(token) == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
