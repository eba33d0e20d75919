"""Bank HTTP request signatures, check by check: the exact bytes signed, the header's form, the edges of the
clock window and of the replay window, and the refusals' words.

Written against the survivors of ``make mutation`` (docs/testing.md): each test fails when the check it names
is removed or moved in connectors/httpsig.py.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

import pytest

from connectors.httpsig import (
    MAX_SKEW_S,
    SCHEME,
    TO_RENKEI,
    AuthFailed,
    ChannelKey,
    ChannelKeys,
    NonceCache,
    Verified,
    canonical,
    keys_from,
    sign,
    verify,
)

KEY = ChannelKey("bank-9002.1", b"k" * 32)
KEYS = ChannelKeys("bank-9002", (KEY,))
NOW = 1_750_000_000.0
PATH = "/v1/registrations?x=1"
BODY = b'{"operation": "REGISTER"}'


def refused(fn, *args, **kw) -> AuthFailed:
    with pytest.raises(AuthFailed) as failed:
        fn(*args, **kw)
    return failed.value


def test_the_canonical_bytes_are_the_documented_lines():
    assert canonical(TO_RENKEI, "post", PATH, "1750000000", "ab" * 8, "bank-9002.1", BODY) == "\n".join([
        "RENKEI-HMAC-SHA256", "bank-to-renkei", "POST", PATH, "1750000000", "ab" * 8, "bank-9002.1",
        hashlib.sha256(BODY).hexdigest()]).encode()
    assert canonical(TO_RENKEI, "GET", "/", "1", "ab" * 8, "k", b"").endswith(
        b"\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")  # SHA-256 of nothing


def test_the_header_is_the_documented_form_and_its_mac_is_hmac_sha256_of_the_canonical_bytes():
    header = sign(KEY, TO_RENKEI, "post", PATH, BODY, now=NOW + 0.9, nonce="0123456789abcdef")
    mac = hmac.new(KEY.secret, canonical(TO_RENKEI, "POST", PATH, "1750000000", "0123456789abcdef", KEY.key_id, BODY),
                   hashlib.sha256).hexdigest()
    assert header == f"{SCHEME} KeyId=bank-9002.1, Timestamp=1750000000, Nonce=0123456789abcdef, Signature={mac}"


def test_by_default_a_header_is_signed_now_with_a_fresh_128_bit_nonce():
    before = int(time.time())
    first, second = sign(KEY, TO_RENKEI, "GET", PATH), sign(KEY, TO_RENKEI, "GET", PATH)
    nonces = [re.search(r"Nonce=([0-9a-f]+),", h).group(1) for h in (first, second)]
    assert all(len(n) == 32 for n in nonces) and nonces[0] != nonces[1]
    stamp = int(re.search(r"Timestamp=([0-9]+),", first).group(1))
    assert before <= stamp <= int(time.time())
    assert verify(KEYS, first, TO_RENKEI, "GET", PATH, b"").nonce == nonces[0]  # checked against the real clock


def test_a_good_request_is_verified_with_its_key_nonce_and_time():
    header = sign(KEY, TO_RENKEI, "POST", PATH, BODY, now=NOW, nonce="ab" * 8)
    # Surrounding blanks are not part of the header's value.
    assert verify(KEYS, f"  {header}\t", TO_RENKEI, "POST", PATH, BODY, now=NOW) == Verified(
        "bank-9002.1", "ab" * 8, 1_750_000_000)


def test_a_missing_header_says_how_to_sign():
    for header in (None, "", "RENKEI-HMAC-SHA256 KeyId=k"):
        failed = refused(verify, KEYS, header, TO_RENKEI, "POST", PATH, BODY, now=NOW)
        assert failed.reason == "AUTH_REQUIRED"
        assert failed.message == str(failed) == (
            "sign the request: Authorization: RENKEI-HMAC-SHA256 KeyId=…, Timestamp=…, Nonce=…, Signature=… "
            "(docs/connectors.md)")


def test_an_unknown_key_is_named_by_bank_not_echoed():
    header = sign(ChannelKey("bank-9003.1", b"k" * 32), TO_RENKEI, "POST", PATH, BODY, now=NOW)
    failed = refused(verify, KEYS, header, TO_RENKEI, "POST", PATH, BODY, now=NOW)
    assert (failed.reason, failed.message) == ("UNKNOWN_KEY", "the KeyId is not a channel key of bank-9002")


@pytest.mark.parametrize("offset", [-MAX_SKEW_S, MAX_SKEW_S])
def test_the_clock_window_includes_its_edges(offset):
    header = sign(KEY, TO_RENKEI, "POST", PATH, BODY, now=NOW + offset)
    assert verify(KEYS, header, TO_RENKEI, "POST", PATH, BODY, now=NOW).timestamp == int(NOW + offset)


@pytest.mark.parametrize("offset", [-MAX_SKEW_S - 1, MAX_SKEW_S + 1])
def test_one_second_past_the_window_is_expired(offset):
    header = sign(KEY, TO_RENKEI, "POST", PATH, BODY, now=NOW + offset)
    failed = refused(verify, KEYS, header, TO_RENKEI, "POST", PATH, BODY, now=NOW)
    assert (failed.reason, failed.message) == (
        "EXPIRED", "the request's timestamp is more than 300 s from the receiver's clock")


def test_the_receiver_can_narrow_the_window():
    header = sign(KEY, TO_RENKEI, "POST", PATH, BODY, now=NOW - 11)
    assert refused(verify, KEYS, header, TO_RENKEI, "POST", PATH, BODY, now=NOW, max_skew_s=10).message == (
        "the request's timestamp is more than 10 s from the receiver's clock")
    assert verify(KEYS, header, TO_RENKEI, "POST", PATH, BODY, now=NOW, max_skew_s=11)


def test_a_stale_header_is_refused_against_the_real_clock():
    header = sign(KEY, TO_RENKEI, "POST", PATH, BODY, now=time.time() - MAX_SKEW_S - 5)
    assert refused(verify, KEYS, header, TO_RENKEI, "POST", PATH, BODY).reason == "EXPIRED"


def test_a_wrong_signature_says_so():
    header = sign(ChannelKey(KEY.key_id, b"x" * 32), TO_RENKEI, "POST", PATH, BODY, now=NOW)
    failed = refused(verify, KEYS, header, TO_RENKEI, "POST", PATH, BODY, now=NOW)
    assert (failed.reason, failed.message) == ("BAD_SIGNATURE", "the signature does not match the request")


def test_a_channel_needs_a_key():
    with pytest.raises(ValueError, match=r"^bank-9002: a channel needs at least one key$"):
        ChannelKeys("bank-9002", ())


def test_keys_come_from_pairs_or_a_mapping_oldest_first():
    for source in ([("a.1", b"1" * 32), ("a.2", bytearray(b"2" * 32))], {"a.1": b"1" * 32, "a.2": b"2" * 32}):
        keys = keys_from("a", source)
        assert keys.bank_id == "a" and [k.key_id for k in keys.keys] == ["a.1", "a.2"]
        assert keys.current.secret == b"2" * 32 and type(keys.current.secret) is bytes
        assert keys.get("a.1").secret == b"1" * 32 and keys.get("a.3") is None


# --- the replay window ---------------------------------------------------------------------------------


def test_a_nonce_is_remembered_for_twice_the_clock_window_to_the_second():
    clock = [NOW]
    cache = NonceCache(max_skew_s=100, clock=lambda: clock[0])
    assert cache.ttl == 200
    seen = Verified("bank-9002.1", "ab" * 8, int(NOW))
    cache.check_and_remember(seen)
    clock[0] = NOW + 199.9
    failed = refused(cache.check_and_remember, seen)
    assert (failed.reason, failed.message) == (
        "REPLAYED", "this request (its nonce) was used before; sign every request anew")
    clock[0] = NOW + 200 + 199.9  # the failed replay did not renew the memory; this one is past it
    cache.check_and_remember(seen)
    clock[0] += 199.9  # ... and is remembered from now
    assert refused(cache.check_and_remember, seen).reason == "REPLAYED"


def test_the_same_nonce_under_another_key_is_another_request():
    cache = NonceCache(clock=lambda: NOW)
    cache.check_and_remember(Verified("bank-9002.1", "ab" * 8, int(NOW)))
    cache.check_and_remember(Verified("bank-9002.2", "ab" * 8, int(NOW)))
    assert refused(cache.check_and_remember, Verified("bank-9002.2", "ab" * 8, int(NOW))).reason == "REPLAYED"


def test_the_default_window_is_the_protocols_and_the_default_clock_is_real_time():
    cache = NonceCache()
    assert cache.ttl == 2 * MAX_SKEW_S == 600
    seen = Verified("bank-9002.1", "cd" * 8, int(time.time()))
    cache.check_and_remember(seen)
    assert refused(cache.check_and_remember, seen).reason == "REPLAYED"


def test_the_memory_forgets_expired_nonces_once_it_holds_more_than_ten_thousand():
    clock = [NOW]
    cache = NonceCache(max_skew_s=10, clock=lambda: clock[0])
    for i in range(10_000):
        cache.check_and_remember(Verified("k", f"{i:016x}", int(NOW)))
    clock[0] = NOW + 10
    live = Verified("k", "f" * 16, int(NOW))
    cache.check_and_remember(live)  # the 10 001st: nothing pruned before it (10 000 is not more than 10 000)
    assert len(cache._seen) == 10_001
    clock[0] = NOW + 20  # the first 10 000 are exactly 20 s old: expired; the live one is 10 s old: kept
    cache.check_and_remember(Verified("k", "e" * 16, int(NOW)))
    assert len(cache._seen) == 2
    assert refused(cache.check_and_remember, live).reason == "REPLAYED"


def test_a_nonce_is_forgotten_exactly_when_its_window_ends():
    clock = [NOW]
    cache = NonceCache(max_skew_s=10, clock=lambda: clock[0])
    seen = Verified("k", "ab" * 8, int(NOW))
    cache.check_and_remember(seen)
    clock[0] = NOW + 20
    cache.check_and_remember(seen)  # 20 s after: a new request as far as the memory goes


def test_at_exactly_ten_thousand_nothing_is_pruned():
    clock = [NOW]
    cache = NonceCache(max_skew_s=10, clock=lambda: clock[0])
    for i in range(10_000):
        cache.check_and_remember(Verified("k", f"{i:016x}", int(NOW)))
    clock[0] = NOW + 20  # all 10 000 expired, but the memory is not over its size: nothing is pruned yet
    cache.check_and_remember(Verified("k", "e" * 16, int(NOW)))
    assert len(cache._seen) == 10_001
