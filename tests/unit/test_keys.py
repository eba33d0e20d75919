"""Keysets, encrypted key files and the root-signed key directory (lifecycle: active, retired, revoked)."""

from __future__ import annotations

import os
import stat
from dataclasses import replace

import pytest

from infra.errors import ConfigError, EnvelopeRejection, Reason
from infra.keys import (
    ED25519,
    MLKEM768_X25519,
    X25519,
    KeyDirectory,
    Keyset,
    Purpose,
    RootAuthority,
    Status,
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
        assert directory.apply_record(kafka_key.encode(), value)
        assert not directory.apply_record(kafka_key, value)  # idempotent
    assert sorted(directory.entries(), key=lambda e: e.key_id) == sorted(ks.public_entries(), key=lambda e: e.key_id)
    key_id, value = ROOT.to_records(ks.public_entries())[0]
    with pytest.raises(EnvelopeRejection) as info:
        directory.apply_record("bank-0003:sign:ffffffffffffffff", value)
    assert reason(info) is Reason.MALFORMED


def test_directory_refuses_records_not_signed_by_the_root():
    ks = Keyset.generate("bank-0004")
    value = ROOT.to_records(ks.public_entries())[0][1]
    signed = codec.decode(value, "signed_key_entry")
    forged = dict(signed, root_signature=bytes(64))
    with pytest.raises(EnvelopeRejection) as info:
        KeyDirectory(ROOT.public_key).apply_record(None, codec.encode("signed_key_entry", forged))
    assert reason(info) is Reason.BAD_SIGNATURE
    other_root = RootAuthority.generate()
    with pytest.raises(EnvelopeRejection) as info:
        KeyDirectory(ROOT.public_key).apply_record(None, other_root.sign_entry(ks.public_entries()[0]))
    assert reason(info) is Reason.UNKNOWN_KEY
    with pytest.raises(EnvelopeRejection) as info:
        KeyDirectory.verify_and_load(other_root.snapshot(ks.public_entries()), ROOT.public_key)
    assert reason(info) is Reason.UNKNOWN_KEY


def test_entry_whose_key_id_does_not_match_its_public_key_is_malformed():
    entry = Keyset.generate("bank-0005").public_entries()[0]
    lying = replace(entry, key_id="bank-0006:sign:" + entry.key_id.split(":")[2])
    with pytest.raises(EnvelopeRejection) as info:
        KeyDirectory(ROOT.public_key).apply_record(None, ROOT.sign_entry(lying))
    assert reason(info) is Reason.MALFORMED


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


def test_revocation_is_immediate_and_terminal():
    ks = Keyset.generate("bank-0009", now=T0)
    directory = directory_of(ks)
    assert directory.signing_key(ks.signing_key_id, signed_at=T0 + 1).participant_id == "bank-0009"
    directory.revoke(ks.signing_key_id)
    with pytest.raises(EnvelopeRejection) as info:
        directory.signing_key(ks.signing_key_id, signed_at=T0 + 1)
    assert reason(info) is Reason.REVOKED_KEY
    # a (replayed) ACTIVE record does not bring it back, nor does a tombstone make it merely unknown
    for kafka_key, value in ROOT.to_records(ks.public_entries()):
        directory.apply_record(kafka_key, value)
    directory.apply_record(ks.signing_key_id, None)
    with pytest.raises(EnvelopeRejection) as info:
        directory.signing_key(ks.signing_key_id, signed_at=T0 + 1)
    assert reason(info) is Reason.REVOKED_KEY
    # revoking the encryption key leaves the participant with no key to seal to
    directory.revoke(ks.encryption_key_id)
    with pytest.raises(EnvelopeRejection) as info:
        directory.encryption_key("bank-0009")
    assert reason(info) is Reason.UNKNOWN_KEY


def test_revocation_published_through_the_topic():
    ks = Keyset.generate("bank-0010", now=T0)
    hub_view = directory_of(ks)
    revoked = [replace(e, status=Status.REVOKED) for e in ks.public_entries()]
    for kafka_key, value in ROOT.to_records(revoked):
        assert hub_view.apply_record(kafka_key, value)
    with pytest.raises(EnvelopeRejection) as info:
        hub_view.signing_key(ks.signing_key_id, signed_at=T0)
    assert reason(info) is Reason.REVOKED_KEY


def test_rotation_retired_keys_verify_only_what_they_signed_before_retirement():
    ks = Keyset.generate("registry", now=T0)
    old_sign, old_enc = ks.signing_key_id, ks.encryption_key_id
    ks.rotate(now=T0 + 60_000)
    assert ks.signing_key_id != old_sign and ks.encryption_key_id != old_enc
    entries = {e.key_id: e for e in ks.public_entries()}
    assert entries[old_sign].status is Status.RETIRED and entries[old_sign].not_after == T0 + 60_000
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
    # once nothing can be in flight, the holder forgets it and the root removes it
    ks.forget(old_enc)
    assert not ks.has_encryption_key(old_enc)
    directory.apply_record(old_sign, None)
    with pytest.raises(EnvelopeRejection) as info:
        directory.signing_key(old_sign, signed_at=T0)
    assert reason(info) is Reason.UNKNOWN_KEY
    with pytest.raises(ConfigError):
        ks.forget(ks.signing_key_id)


def test_status_never_moves_backwards():
    ks = Keyset.generate("bank-0011", now=T0)
    directory = directory_of(ks)
    directory.retire(ks.signing_key_id, at=T0 + 10)
    active_record = ROOT.to_records(ks.public_entries())[0]
    assert not directory.apply_record(*active_record)
    with pytest.raises(EnvelopeRejection) as info:
        directory.signing_key(ks.signing_key_id, signed_at=T0 + 11)
    assert reason(info) is Reason.REVOKED_KEY


def test_record_may_not_change_an_existing_keys_material():
    ks = Keyset.generate("bank-0012")
    directory = directory_of(ks)
    entry = ks.public_entries()[1]
    changed = replace(entry, algorithm=MLKEM768_X25519)
    with pytest.raises(EnvelopeRejection) as info:
        directory.apply_record(None, ROOT.sign_entry(changed))
    assert reason(info) is Reason.MALFORMED
