"""Keysets, encrypted key files and the root-signed key directory (lifecycle, versions, bad records)."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import replace

import pytest

from infra.core.errors import ConfigError, EnvelopeRejection, Reason
from infra.crypto import keys
from infra.crypto.keys import (
    ED25519,
    MLKEM768_X25519,
    SKIP_REASONS,
    X25519,
    KeyDirectory,
    Keyset,
    Outcome,
    ParticipantState,
    ParticipantStatus,
    Purpose,
    RootAuthority,
    Status,
    encode_snapshot,
    signed_record_key,
)
from schemas import codec
from tests.unit.leakguard import no_personal_data  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("no_personal_data")

T0 = 1_750_000_000_000  # epoch ms
ROOT = RootAuthority.generate()


def directory_of(*keysets: Keyset) -> KeyDirectory:
    return KeyDirectory.verify_and_load(
        ROOT.snapshot([e for k in keysets for e in k.public_entries()]), ROOT.public_key
    )


def reason(exc_info) -> Reason:
    return exc_info.value.reason


@pytest.mark.parametrize(("kem", "algorithm"), [("x25519", X25519), ("mlkem768-x25519", MLKEM768_X25519)])
def test_generate_and_hpke_round_trip(kem, algorithm):
    ks = Keyset.generate("bank-0001", kem)
    entries = {e.purpose: e for e in ks.public_entries()}
    assert entries[Purpose.SIGN].algorithm == ED25519
    assert entries[Purpose.ENCRYPT].algorithm == algorithm
    assert ks.signing_key_id.startswith("bank-0001:sign:") and len(ks.signing_key_id.split(":")[2]) == 16
    key = directory_of(ks).encryption_key("bank-0001")
    assert key.key_id == ks.encryption_key_id
    ciphertext = key.seal(b"secret", b"info")
    assert ks.decrypt(key.key_id, ciphertext, b"info") == b"secret"
    with pytest.raises(EnvelopeRejection) as info:
        ks.decrypt(key.key_id, ciphertext, b"other info")
    assert reason(info) is Reason.UNDECRYPTABLE
    with pytest.raises(EnvelopeRejection) as info:
        ks.decrypt("bank-0001:encrypt:0000000000000000", ciphertext, b"info")
    assert reason(info) is Reason.UNDECRYPTABLE


def test_key_ids_are_stable_and_repr_hides_keys():
    ks = Keyset.generate("agency-a")
    assert ks.public_entries()[0].key_id == ks.signing_key_id
    assert "agency-a" in repr(ks)
    for entry in ks.public_entries():
        assert entry.public_key.hex() not in repr(entry)


def test_save_load_round_trip_mode_0600_and_atomic(tmp_path):
    ks = Keyset.generate("registry", "mlkem768-x25519")
    ks.rotate()
    path = tmp_path / "registry.keys"
    ks.save(path, b"correct horse")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["registry.keys"]  # no temp file left behind
    loaded = Keyset.load(path, b"correct horse")
    assert loaded.public_entries() == ks.public_entries()
    # the loaded keyset decrypts what was sealed to the original, and signs as the same key
    key = directory_of(ks).encryption_key("registry")
    assert loaded.decrypt(key.key_id, key.seal(b"x", b"i"), b"i") == b"x"
    # overwrite keeps the mode and replaces the file whole
    ks.rotate()
    ks.save(path, b"correct horse")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Keyset.load(path, b"correct horse").signing_key_id == ks.signing_key_id


def test_key_file_is_encrypted_and_authenticated(tmp_path):
    ks = Keyset.generate("bank-0002")
    path = tmp_path / "k"
    ks.save(path, b"pw")
    blob = path.read_bytes()
    assert ks._signing[0].secret() not in blob and ks._encryption[0].secret() not in blob
    with pytest.raises(ConfigError, match="wrong passphrase"):
        Keyset.load(path, b"not pw")
    tampered = bytearray(blob)
    tampered[-5] ^= 1
    path.write_bytes(bytes(tampered))
    with pytest.raises(ConfigError):
        Keyset.load(path, b"pw")
    path.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="not a Renkei keyset file"):
        Keyset.load(path, b"pw")


def test_root_key_save_load(tmp_path):
    ROOT.save(tmp_path / "root", b"pw")
    assert stat.S_IMODE(os.stat(tmp_path / "root").st_mode) == 0o600
    assert RootAuthority.load(tmp_path / "root", b"pw").public_key == ROOT.public_key


# --- directory ---------------------------------------------------------------------------


def test_directory_records_round_trip_and_are_keyed_by_key_id():
    ks = Keyset.generate("bank-0003")
    directory = KeyDirectory(ROOT.public_key)
    for kafka_key, value in ROOT.to_records(ks.public_entries()):
        assert directory.apply_record(kafka_key.encode(), value) is Outcome.APPLIED
        assert directory.apply_record(kafka_key, value) is Outcome.DUPLICATE  # a re-read changes nothing
        assert signed_record_key(value) == kafka_key
    assert sorted(directory.entries(), key=lambda e: e.key_id) == sorted(ks.public_entries(), key=lambda e: e.key_id)
    key_id, value = ROOT.to_records(ks.public_entries())[0]
    assert directory.apply_record("bank-0003:sign:ffffffffffffffff", value) is Outcome.MISMATCH
    assert directory.skipped == {"mismatch": 1}


def _forged(value: bytes) -> bytes:
    signed = codec.decode(value, "signed_key_entry")
    return codec.encode("signed_key_entry", dict(signed, root_signature=bytes(64)))


def test_bad_records_are_skipped_counted_and_logged_once_never_raised(caplog):
    """Junk bytes, another schema, a forged or foreign signature, a tombstone: each skipped with its reason."""
    hub = Keyset.generate("hub", now=T0)
    directory = directory_of(hub)
    before = directory.entries()
    key_id, value = ROOT.to_records(hub.public_entries())[0]
    other_root = RootAuthority.generate()
    bad = [
        (key_id, b"\x00junk bytes, not Avro", Outcome.MALFORMED),
        (key_id, ROOT.snapshot([]), Outcome.MALFORMED),  # a valid record of another schema
        (key_id, _forged(value), Outcome.BAD_SIGNATURE),
        (key_id, other_root.sign_entry(replace(hub.public_entries()[0], status=Status.REVOKED, version=9)),
         Outcome.UNKNOWN_ROOT),
        (key_id, None, Outcome.TOMBSTONE),
    ]
    caplog.set_level(logging.WARNING, logger="renkei.keys")
    for n, (key, record, expected) in enumerate(bad):
        caplog.clear()
        assert directory.apply_record(key, record, where=f"offset {n}") is expected
        assert len(caplog.records) == 1 and f"offset {n}" in caplog.records[0].getMessage()
        assert expected.value in caplog.records[0].getMessage()
    assert directory.entries() == before
    assert directory.skipped == {"malformed": 2, "bad_signature": 1, "unknown_root": 1, "tombstone": 1}
    assert set(directory.skipped) <= SKIP_REASONS
    # The attack of issue 13: one tombstone for the hub's signing key stopped the bus. Not any more.
    assert directory.signing_key(hub.signing_key_id, signed_at=T0 + 1).participant_id == "hub"


def test_a_snapshot_is_still_verified_strictly():
    ks = Keyset.generate("bank-0004")
    other_root = RootAuthority.generate()
    with pytest.raises(EnvelopeRejection) as info:
        KeyDirectory.verify_and_load(other_root.snapshot(ks.public_entries()), ROOT.public_key)
    assert reason(info) is Reason.UNKNOWN_KEY
    forged = encode_snapshot([_forged(v) for _, v in ROOT.to_records(ks.public_entries())])
    with pytest.raises(EnvelopeRejection) as info:
        KeyDirectory.verify_and_load(forged, ROOT.public_key)
    assert reason(info) is Reason.BAD_SIGNATURE


def test_entry_whose_key_id_does_not_match_its_public_key_is_skipped():
    entry = Keyset.generate("bank-0005").public_entries()[0]
    lying = replace(entry, key_id="bank-0006:sign:" + entry.key_id.split(":")[2])
    directory = KeyDirectory(ROOT.public_key)
    assert directory.apply_record(None, ROOT.sign_entry(lying)) is Outcome.MISMATCH
    assert len(directory) == 0


def test_unknown_key():
    directory = directory_of(Keyset.generate("bank-0007"))
    with pytest.raises(EnvelopeRejection) as info:
        directory.signing_key("bank-0007:sign:0123456789abcdef", signed_at=T0)
    assert reason(info) is Reason.UNKNOWN_KEY
    with pytest.raises(EnvelopeRejection) as info:
        directory.encryption_key("nobody")
    assert reason(info) is Reason.UNKNOWN_KEY
    ks = Keyset.generate("bank-0008")
    with pytest.raises(EnvelopeRejection) as info:  # an encryption key id is not a signing key
        directory_of(ks).signing_key(ks.encryption_key_id, signed_at=T0)
    assert reason(info) is Reason.UNKNOWN_KEY


def test_local_revocation_is_immediate_and_a_replay_or_tombstone_does_not_undo_it():
    ks = Keyset.generate("bank-0009", now=T0)
    directory = directory_of(ks)
    assert directory.signing_key(ks.signing_key_id, signed_at=T0 + 1).participant_id == "bank-0009"
    directory.revoke(ks.signing_key_id)
    with pytest.raises(EnvelopeRejection) as info:
        directory.signing_key(ks.signing_key_id, signed_at=T0 + 1)
    assert reason(info) is Reason.REVOKED_KEY
    for kafka_key, value in ROOT.to_records(ks.public_entries()):
        assert directory.apply_record(kafka_key, value) is Outcome.DUPLICATE
    assert directory.apply_record(ks.signing_key_id, None) is Outcome.TOMBSTONE
    with pytest.raises(EnvelopeRejection) as info:
        directory.signing_key(ks.signing_key_id, signed_at=T0 + 1)
    assert reason(info) is Reason.REVOKED_KEY
    # revoking the encryption key leaves the participant with no key to seal to
    directory.revoke(ks.encryption_key_id)
    with pytest.raises(EnvelopeRejection) as info:
        directory.encryption_key("bank-0009")
    assert reason(info) is Reason.UNKNOWN_KEY


def test_revocation_published_through_the_topic_beats_any_replay_of_the_active_entry():
    """After compaction a replayed ACTIVE entry used to win over REVOKED: versions decide now."""
    ks = Keyset.generate("bank-0010", now=T0)
    active = ROOT.to_records(ks.public_entries())
    revoked = ROOT.to_records([replace(e, status=Status.REVOKED, version=2) for e in ks.public_entries()])
    # A reader that saw everything, and a fresh reader of a log where the replay came last.
    for log in (active + revoked + active, revoked + active):
        reader = KeyDirectory(ROOT.public_key)
        outcomes = [reader.apply_record(k, v) for k, v in log]
        assert outcomes[-2:] == [Outcome.STALE, Outcome.STALE]
        with pytest.raises(EnvelopeRejection) as info:
            reader.signing_key(ks.signing_key_id, signed_at=T0)
        assert reason(info) is Reason.REVOKED_KEY
        assert reader.version(ks.signing_key_id) == 2


def test_same_version_with_other_content_does_not_win():
    ks = Keyset.generate("bank-0013", now=T0)
    directory = directory_of(ks)
    entry = ks.public_entries()[0]
    same_version = ROOT.sign_entry(replace(entry, status=Status.REVOKED))  # version 1 again
    assert directory.apply_record(entry.key_id, same_version) is Outcome.STALE
    assert directory.entry(entry.key_id).status is Status.ACTIVE


def test_status_never_moves_backwards_even_at_a_higher_version():
    ks = Keyset.generate("bank-0011", now=T0)
    directory = directory_of(ks)
    entry = ks.public_entries()[0]
    assert directory.apply_record(None, ROOT.sign_entry(replace(entry, status=Status.REVOKED, version=2))) \
        is Outcome.APPLIED
    revival = ROOT.sign_entry(replace(entry, status=Status.ACTIVE, version=3))
    assert directory.apply_record(None, revival) is Outcome.STALE
    assert directory.entry(entry.key_id).status is Status.REVOKED
    # A local retirement is not undone by the published ACTIVE entry either.
    other = Keyset.generate("bank-0014", now=T0)
    view = directory_of(other)
    view.retire(other.signing_key_id, at=T0 + 10)
    assert view.apply_record(*ROOT.to_records(other.public_entries())[0]) is Outcome.DUPLICATE
    with pytest.raises(EnvelopeRejection) as info:
        view.signing_key(other.signing_key_id, signed_at=T0 + 11)
    assert reason(info) is Reason.REVOKED_KEY


def test_record_may_not_change_an_existing_keys_material():
    ks = Keyset.generate("bank-0012")
    directory = directory_of(ks)
    entry = ks.public_entries()[1]
    changed = replace(entry, algorithm=MLKEM768_X25519, version=2)
    assert directory.apply_record(None, ROOT.sign_entry(changed)) is Outcome.MISMATCH
    assert directory.entry(entry.key_id).algorithm == entry.algorithm


def test_rotation_retired_keys_verify_only_what_they_signed_before_retirement():
    ks = Keyset.generate("registry", now=T0)
    old_sign, old_enc = ks.signing_key_id, ks.encryption_key_id
    ks.rotate(now=T0 + 60_000)
    assert ks.signing_key_id != old_sign and ks.encryption_key_id != old_enc
    entries = {e.key_id: e for e in ks.public_entries()}
    assert entries[old_sign].status is Status.RETIRED and entries[old_sign].not_after == T0 + 60_000
    assert entries[old_sign].version == 2 and entries[ks.signing_key_id].version == 1
    directory = directory_of(ks)
    # in flight: signed before retirement -> still verifies
    assert directory.signing_key(old_sign, signed_at=T0 + 59_999).key_id == old_sign
    # signed after retirement -> refused
    with pytest.raises(EnvelopeRejection) as info:
        directory.signing_key(old_sign, signed_at=T0 + 60_001)
    assert reason(info) is Reason.REVOKED_KEY
    # new messages are sealed to the new key only; the holder still decrypts old ones
    assert directory.encryption_key("registry").key_id == ks.encryption_key_id
    old_key = directory.recipient_key(old_enc, sealed_at=T0)
    assert ks.decrypt(old_enc, old_key.seal(b"in flight", b"i"), b"i") == b"in flight"
    # once nothing can be in flight, the holder forgets it; the directory keeps it (a deletion is a revocation)
    ks.forget(old_enc)
    assert not ks.has_encryption_key(old_enc)
    assert directory.apply_record(old_sign, None) is Outcome.TOMBSTONE
    assert directory.signing_key(old_sign, signed_at=T0).key_id == old_sign
    with pytest.raises(ConfigError):
        ks.forget(ks.signing_key_id)


def test_republishing_a_rotated_keyset_retires_the_old_keys():
    ks = Keyset.generate("bank-0015", now=T0)
    directory = directory_of(ks)
    old = ks.signing_key_id
    ks.rotate(now=T0 + 1000)
    outcomes = [directory.apply_record(k, v) for k, v in ROOT.to_records(ks.public_entries())]
    assert outcomes.count(Outcome.APPLIED) == 4  # two new keys, two old ones retired at version 2
    assert directory.entry(old).status is Status.RETIRED and directory.version(old) == 2


def test_staged_rotation_keeps_sealing_to_the_old_key_until_the_new_one_is_active():
    ks = Keyset.generate("bank-0016", now=T0)
    directory = directory_of(ks)
    old_enc = ks.encryption_key_id
    now = keys.now_epoch_ms()
    ks.rotate(now=now, activate_at=now + 60_000, retire_at=now + 120_000)
    for k, v in ROOT.to_records(ks.public_entries()):
        directory.apply_record(k, v)
    # The new key is listed and verifies at once, but senders seal to the old one until it is active.
    assert directory.encryption_key("bank-0016").key_id == old_enc
    assert directory.signing_key(ks.signing_key_id, signed_at=now).key_id == ks.signing_key_id
    later = KeyDirectory(ROOT.public_key)
    ks2 = Keyset.generate("bank-0017", now=T0)
    ks2.rotate(now=T0 + 10, activate_at=T0 + 20, retire_at=T0 + 30)  # all in the past
    for k, v in ROOT.to_records(ks2.public_entries()):
        later.apply_record(k, v)
    assert later.encryption_key("bank-0017").key_id == ks2.encryption_key_id


def test_a_running_keyset_takes_rotated_keys_decrypts_at_once_and_signs_once_active():
    running = Keyset.generate("bank-0018", now=T0)
    old_sign = running.signing_key_id
    rotated = Keyset.generate("bank-0018", now=T0)
    rotated._signing, rotated._encryption = list(running._signing), list(running._encryption)
    rotated._enc_by_id = dict(running._enc_by_id)
    rotated.rotate(now=T0 + 100, activate_at=T0 + 1000, retire_at=T0 + 2000)
    running.update_from(rotated, now=T0 + 200)
    assert running.signing_key_id == old_sign  # not active yet: other processes may not know it
    assert running.has_encryption_key(rotated.encryption_key_id)  # but what is sealed to it opens
    assert running.key_ids() == rotated.key_ids()
    assert not running.switch_due(now=T0 + 999)
    assert running.switch_due(now=T0 + 1000)
    assert running.signing_key_id == rotated.signing_key_id
    with pytest.raises(ConfigError):
        running.update_from(Keyset.generate("bank-0019"))


# --- participant statuses ------------------------------------------------------------------


def _status(pid: str, state: ParticipantState, version: int) -> ParticipantStatus:
    return ParticipantStatus(pid, state, version, T0)


def test_a_published_suspension_refuses_the_participants_signatures_until_resumed():
    ks = Keyset.generate("agency-x", now=T0)
    directory = directory_of(ks)
    suspend = ROOT.sign_entry(_status("agency-x", ParticipantState.SUSPENDED, 1))
    assert directory.apply_record("participant:agency-x", suspend) is Outcome.APPLIED
    assert directory.suspensions == {"agency-x": True}
    with pytest.raises(EnvelopeRejection) as info:
        directory.signing_key(ks.signing_key_id, signed_at=T0 + 1)
    assert reason(info) is Reason.SUSPENDED
    # the hub's policy refuses it instead (with a notice to the sender): the directory lets it verify
    directory.refuse_suspended_signers = False
    assert directory.signing_key(ks.signing_key_id, signed_at=T0 + 1).participant_id == "agency-x"
    directory.refuse_suspended_signers = True
    resume = ROOT.sign_entry(_status("agency-x", ParticipantState.ACTIVE, 2))
    assert directory.apply_record("participant:agency-x", resume) is Outcome.APPLIED
    assert directory.signing_key(ks.signing_key_id, signed_at=T0 + 1).participant_id == "agency-x"
    # the old suspension replayed does not win; a forged one does not apply
    assert directory.apply_record("participant:agency-x", suspend) is Outcome.STALE
    forged = _forged(ROOT.sign_entry(_status("agency-x", ParticipantState.SUSPENDED, 3)))
    assert directory.apply_record("participant:agency-x", forged) is Outcome.BAD_SIGNATURE
    # a status filed under a key id's Kafka key is refused
    later = ROOT.sign_entry(_status("agency-x", ParticipantState.SUSPENDED, 4))
    assert directory.apply_record(ks.signing_key_id, later) is Outcome.MISMATCH
    assert directory.suspensions == {"agency-x": False} and directory.status("agency-x").version == 2


def test_an_unknown_participant_state_fails_closed():
    record = codec.encode("participant_status", {"participant_id": "bank-1", "state": "UNKNOWN", "version": 1,
                                                 "changed_at": T0})
    assert ParticipantStatus.from_record(codec.decode(record, "participant_status")).suspended
