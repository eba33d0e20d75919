"""The key directory's own checks (``infra.crypto.keys.KeyDirectory``): which key a sender may seal to, when a key
stops verifying, what a strict snapshot load refuses, and what the directory keeps of each record (pure logic).

Written for the mutation score (docs/testing.md, "Mutation testing"); ``test_keys.py`` has the lifecycle
and bad-record tests these complete.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from infra.core.errors import EnvelopeRejection, Reason
from infra.crypto.keys import (
    KeyDirectory,
    Keyset,
    Outcome,
    ParticipantState,
    ParticipantStatus,
    Purpose,
    RootAuthority,
    Status,
    encode_snapshot,
    now_epoch_ms,
)
from tests.unit.crypto.test_keys import ROOT, T0
from tests.unit.crypto.test_keys import directory_of as loaded
from tests.unit.leakguard import no_personal_data  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("no_personal_data")

BANK = Keyset.generate("bank-0100", now=T0)  # key generation is the slow part: shared, never changed


def refusal(fn, *args, **kw) -> EnvelopeRejection:
    with pytest.raises(EnvelopeRejection) as caught:
        fn(*args, **kw)
    return caught.value


# --------------------------------------------------------------------------- lookups


def test_a_signing_key_verifies_up_to_and_at_its_retirement_and_not_after():
    directory = loaded(BANK)
    directory.retire(BANK.signing_key_id, at=T0 + 1000)
    assert directory.signing_key(BANK.signing_key_id, signed_at=T0 + 1000).key_id == BANK.signing_key_id
    refused = refusal(directory.signing_key, BANK.signing_key_id, signed_at=T0 + 1001)
    assert (refused.reason, refused.message) == (Reason.REVOKED_KEY,
                                                 "sign key was retired before the message was created")
    directory.retire(BANK.signing_key_id, at=T0 + 5000)  # retiring again does not move the instant
    assert refusal(directory.signing_key, BANK.signing_key_id, signed_at=T0 + 1001).reason is Reason.REVOKED_KEY


def test_retire_defaults_to_now_and_refuses_an_unknown_key():
    directory = loaded(BANK)
    before = now_epoch_ms()
    directory.retire(BANK.encryption_key_id)
    after = now_epoch_ms()
    entry = directory.entry(BANK.encryption_key_id)
    assert entry.status is Status.RETIRED and before <= entry.not_after <= after
    refused = refusal(directory.retire, "bank-0100:sign:0000000000000000")
    assert (refused.reason, refused.message) == (Reason.UNKNOWN_KEY, "no such key in the directory")
    directory.revoke(BANK.signing_key_id)
    directory.retire(BANK.signing_key_id, at=T0)  # a revoked key stays revoked
    assert directory.entry(BANK.signing_key_id).status is Status.REVOKED
    directory.revoke("bank-0100:sign:0000000000000000")  # revoking an unknown key changes nothing
    assert len(directory) == 2


def test_lookups_name_the_purpose_and_never_mix_them():
    directory = loaded(BANK)
    assert directory.recipient_key(BANK.encryption_key_id, sealed_at=T0).key_id == BANK.encryption_key_id
    refused = refusal(directory.recipient_key, BANK.signing_key_id, sealed_at=T0)
    assert (refused.reason, refused.message) == (Reason.UNKNOWN_KEY, "no encrypt key with this id in the directory")
    refused = refusal(directory.signing_key, BANK.encryption_key_id, signed_at=T0)
    assert refused.message == "no sign key with this id in the directory"
    directory.revoke(BANK.encryption_key_id)
    refused = refusal(directory.recipient_key, BANK.encryption_key_id, sealed_at=T0)
    assert (refused.reason, refused.message) == (Reason.REVOKED_KEY, "encrypt key has been revoked")


def test_a_suspended_participant_s_key_is_refused_whenever_it_signed():
    directory = loaded(BANK)
    directory.apply_record(None, ROOT.sign_entry(ParticipantStatus("bank-0100", ParticipantState.SUSPENDED, 1, T0)))
    refused = refusal(directory.signing_key, BANK.signing_key_id, signed_at=T0 - 10_000)
    assert (refused.reason, refused.message) == (Reason.SUSPENDED, "participant bank-0100 is suspended")
    assert directory.recipient_key(BANK.encryption_key_id, sealed_at=T0).key_id == BANK.encryption_key_id


def test_the_key_to_seal_to_is_the_newest_usable_one():
    now = now_epoch_ms()
    [_, enc] = BANK.public_entries()
    assert enc.purpose is Purpose.ENCRYPT
    directory = loaded(BANK)
    assert directory.encryption_key("bank-0100").key_id == enc.key_id
    # an ACTIVE key whose not_after has passed, and a RETIRED one without an instant, are never chosen
    for stale in (replace(enc, not_after=now - 1, version=2), replace(enc, status=Status.RETIRED, not_after=None,
                                                                     version=2)):
        view = KeyDirectory(ROOT.public_key)
        view.add(stale)
        assert refusal(view.encryption_key, "bank-0100").reason is Reason.UNKNOWN_KEY
    # a RETIRED key still ahead of its instant is chosen while nothing newer is usable
    view = KeyDirectory(ROOT.public_key)
    view.add(replace(enc, status=Status.RETIRED, not_after=now + 60_000))
    assert view.encryption_key("bank-0100").key_id == enc.key_id
    view.add(replace(enc, status=Status.RETIRED, not_after=now - 1, version=2))  # its instant passes
    assert refusal(view.encryption_key, "bank-0100").reason is Reason.UNKNOWN_KEY


def test_among_active_keys_the_one_already_in_force_and_newest_wins():
    now = now_epoch_ms()
    keysets = {n: Keyset.generate("bank-0101", now=t) for n, t in
               (("old", now - 20_000), ("new", now - 10_000), ("future", now + 60_000))}
    entries = {n: next(e for e in k.public_entries() if e.purpose is Purpose.ENCRYPT) for n, k in keysets.items()}
    view = KeyDirectory(ROOT.public_key)
    for entry in entries.values():
        view.add(entry)
    assert view.encryption_key("bank-0101").key_id == entries["new"].key_id  # the future one is not in force
    only_future = KeyDirectory(ROOT.public_key)
    only_future.add(entries["future"])
    assert only_future.encryption_key("bank-0101").key_id == entries["future"].key_id  # better than nothing


# --------------------------------------------------------------------------- what the directory keeps


def test_what_a_directory_holds_per_record():
    directory = KeyDirectory(ROOT.public_key)
    records = ROOT.to_records(BANK.public_entries())
    for key, value in records:
        assert directory.apply_record(key, value) is Outcome.APPLIED
    assert sorted(directory.signed_records()) == sorted(records)
    for key, value in records:
        assert directory.held_value(key) == value and directory.version(key) == 1
    assert directory.held_value("nobody") is None and directory.version("nobody") == 0
    assert directory.key_ids("bank-0100") == {BANK.signing_key_id, BANK.encryption_key_id}
    assert directory.key_ids("nobody") == set()
    directory.key_ids("bank-0100").clear()  # a copy: the caller cannot change the directory
    assert len(directory.key_ids("bank-0100")) == 2
    status = ParticipantStatus("bank-0100", ParticipantState.ACTIVE, 1, T0)
    directory.apply_record(None, ROOT.sign_entry(status))
    assert directory.statuses() == [status] and directory.status("bank-0100") == status
    assert directory.status("nobody") is None
    assert repr(directory) == "KeyDirectory(2 keys, 0 revoked, 1 statuses)"
    directory.revoke(BANK.signing_key_id)
    assert repr(directory) == "KeyDirectory(2 keys, 1 revoked, 1 statuses)"


def test_a_newer_record_replaces_the_held_copy_and_the_old_copy_is_no_duplicate_any_more():
    directory = KeyDirectory(ROOT.public_key)
    sign = BANK.public_entries()[0]
    first = ROOT.sign_entry(sign)
    second = ROOT.sign_entry(replace(sign, status=Status.RETIRED, not_after=T0 + 5, version=2))
    assert directory.apply_record(sign.key_id, first) is Outcome.APPLIED
    assert directory.apply_record(sign.key_id, second) is Outcome.APPLIED
    assert directory.held_value(sign.key_id) == second and directory.version(sign.key_id) == 2
    # the first copy again is judged as a record (stale), not waved through as a copy of one held
    assert directory.apply_record(sign.key_id, first) is Outcome.STALE
    assert directory.apply_record(sign.key_id, second) is Outcome.DUPLICATE
    assert directory.apply_record(None, second) is Outcome.DUPLICATE  # a snapshot's copy has no Kafka key


def test_a_held_record_under_another_kafka_key_is_not_a_duplicate():
    directory = KeyDirectory(ROOT.public_key)
    [(key, value), (other_key, _)] = ROOT.to_records(BANK.public_entries())
    assert directory.apply_record(key, value) is Outcome.APPLIED
    assert directory.apply_record(other_key, value) is Outcome.MISMATCH


def test_locally_added_entries_follow_versions_too():
    directory = KeyDirectory(ROOT.public_key)
    sign = BANK.public_entries()[0]
    assert directory.add(replace(sign, version=2)) is True
    assert directory.add(replace(sign, version=2, status=Status.REVOKED)) is False  # same version
    assert directory.add(replace(sign, version=1, status=Status.REVOKED)) is False  # older
    assert directory.entry(sign.key_id).status is Status.ACTIVE and directory.version(sign.key_id) == 2
    assert directory.signed_records() == []  # added locally: nothing to republish
    assert directory.add(replace(sign, version=3, status=Status.REVOKED)) is True
    assert directory.add(replace(sign, version=4, status=Status.ACTIVE)) is False  # status never moves back
    assert directory.add(ParticipantStatus("bank-0100", ParticipantState.SUSPENDED, 1, T0)) is True
    assert directory.suspensions == {"bank-0100": True}


def test_a_record_this_process_signed_is_applied_under_the_same_rules(caplog):
    directory = loaded(BANK)
    sign = BANK.public_entries()[0]
    revoked = replace(sign, status=Status.REVOKED, version=2)
    assert directory.apply_signed(revoked, ROOT.sign_entry(revoked)) is Outcome.APPLIED
    assert directory.entry(sign.key_id).status is Status.REVOKED
    caplog.set_level(logging.WARNING, logger="renkei.keys")
    back = replace(sign, version=3)
    assert directory.apply_signed(back, ROOT.sign_entry(back)) is Outcome.STALE
    assert directory.skipped == {"stale": 1}
    [line] = caplog.records
    assert sign.key_id in line.getMessage() and "stale" in line.getMessage()
    assert directory.apply_signed(revoked, ROOT.sign_entry(revoked)) is Outcome.DUPLICATE
    assert directory.skipped == {"stale": 1}


def test_a_skip_without_a_place_logs_no_place(caplog):
    caplog.set_level(logging.WARNING, logger="renkei.keys")
    directory = KeyDirectory(ROOT.public_key)
    assert directory.apply_record("k", b"\x00junk") is Outcome.MALFORMED
    [line] = caplog.records
    assert line.getMessage().startswith("key directory record skipped (malformed): not a signed key directory entry")


def test_a_strict_snapshot_load_refuses_every_skip_with_its_reason():
    sign = BANK.public_entries()[0]
    lying = replace(sign, key_id="bank-0199:sign:" + sign.key_id.split(":")[2])
    refused = refusal(KeyDirectory.verify_and_load, encode_snapshot([ROOT.sign_entry(lying)]), ROOT.public_key)
    assert refused.reason is Reason.MALFORMED
    assert refused.message == "key directory snapshot: the key id does not match its public key"
    twice = encode_snapshot([ROOT.sign_entry(sign), ROOT.sign_entry(replace(sign, status=Status.REVOKED))])
    assert refusal(KeyDirectory.verify_and_load, twice, ROOT.public_key).reason is Reason.MALFORMED  # stale
    same = ROOT.sign_entry(sign)
    assert len(KeyDirectory.verify_and_load(encode_snapshot([same, same]), ROOT.public_key)) == 1  # a copy is fine


def test_each_skip_is_logged_in_words_an_operator_can_act_on(caplog):
    """The warning line is all an operator sees of a skipped record: its words are part of the contract."""
    directory = loaded(BANK)
    sign = BANK.public_entries()[0]
    other_root = RootAuthority.generate()
    forged = ROOT.sign_entry(replace(sign, version=2))
    forged = forged[:-1] + bytes([forged[-1] ^ 1])  # the last byte of the root signature
    cases = [
        (sign.key_id, None, "a bare tombstone deletes nothing; a deletion is a root-signed REVOKED entry"),
        (sign.key_id, other_root.sign_entry(replace(sign, version=2)),
         "signed by a root key this directory does not trust"),
        (sign.key_id, forged, "the root signature does not verify"),
        (BANK.encryption_key_id, ROOT.sign_entry(replace(sign, version=2)), "the Kafka key is not the entry's key id"),
        (sign.key_id, ROOT.sign_entry(replace(sign, algorithm="x25519", version=2)),
         "the entry changes an existing key's material"),
    ]
    caplog.set_level(logging.WARNING, logger="renkei.keys")
    for key, value, words in cases:
        caplog.clear()
        directory.apply_record(key, value, where="offset 7")
        [line] = caplog.records
        assert line.getMessage().endswith(f"): {words}"), line.getMessage()
    refused = refusal(KeyDirectory(ROOT.public_key).encryption_key, "bank-0100")
    assert refused.message == "participant has no active encryption key in the directory"


def test_a_kafka_key_in_bytes_is_read_as_text_and_never_raises():
    directory = KeyDirectory(ROOT.public_key)
    [(key, value), _] = ROOT.to_records(BANK.public_entries())
    assert directory.apply_record(b"\xff" + key.encode(), value) is Outcome.MISMATCH  # not UTF-8: still judged
    assert directory.apply_record(b"bank-0100:sign:0000000000000000", value) is Outcome.MISMATCH
    assert directory.apply_record(key.encode(), value) is Outcome.APPLIED
