"""The root holder's directory changes as pure plans, the key store's passphrase and journal, who may write the
keys topic, and suspensions followed by the policy and the metrics."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import replace

import pytest

from infra.core.errors import ConfigError, PolicyDenied, Reason
from infra.crypto.keys import (
    KeyDirectory,
    Keyset,
    Outcome,
    ParticipantState,
    ParticipantStatus,
    Purpose,
    RootAuthority,
    Status,
)
from infra.domain.participants import Kind, Participant, load_participants
from infra.domain.policy import BASIS_PROVISION, DATA_PUBLIC_FUNDS_ACCOUNT, Policy
from infra.platform.acls import KEY_PUBLISHER, acl_bindings
from infra.platform.keyadmin import (
    PROTECTED,
    UNKNOWN_KEY,
    KeyAdminRefused,
    plan_keys,
    plan_retire,
    plan_revoke,
    plan_status,
    usable_keys_left,
)
from infra.platform.keystore import KeyStore, Passphrase
from infra.platform.metrics import WorkerMetrics
from infra.platform.metrics_server import parse_text
from infra.platform.topics import TopicNames
from schemas import types as msg
from tests.unit.leakguard import no_personal_data  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("no_personal_data")

T0 = 1_750_000_000_000
ROOT = RootAuthority.generate()


def published(directory: KeyDirectory, entries) -> None:
    """What a reader does with what the root holder publishes."""
    for entry in entries:
        assert directory.apply_record(entry.record_key, ROOT.sign_entry(entry)) is Outcome.APPLIED


# --- planning --------------------------------------------------------------------------------------


def test_plan_keys_publishes_only_what_is_missing_or_further_along():
    ks = Keyset.generate("bank-0001", now=T0)
    directory = KeyDirectory(ROOT.public_key)
    first = plan_keys(directory, ks.public_entries())
    assert [(e.status, e.version) for e in first] == [(Status.ACTIVE, 1), (Status.ACTIVE, 1)]
    published(directory, first)
    assert plan_keys(directory, ks.public_entries()) == []  # the second `renkei up` publishes nothing
    ks.rotate(now=T0 + 10)
    rotation = {e.key_id: e for e in plan_keys(directory, ks.public_entries())}
    assert len(rotation) == 4
    old = [e for e in rotation.values() if e.status is Status.RETIRED]
    assert len(old) == 2 and all(e.version == 2 and e.not_after == T0 + 10 for e in old)


def test_a_revoked_key_is_never_published_again_from_its_keyset():
    """`renkei up` used to republish every keyset as ACTIVE: a revoked key came back."""
    ks = Keyset.generate("bank-0002", now=T0)
    directory = KeyDirectory(ROOT.public_key)
    published(directory, plan_keys(directory, ks.public_entries()))
    published(directory, plan_revoke(directory, ks.signing_key_id))
    assert directory.entry(ks.signing_key_id).status is Status.REVOKED
    assert plan_keys(directory, ks.public_entries()) == []
    old_sign, old_enc = ks.signing_key_id, ks.encryption_key_id
    ks.rotate(now=T0 + 5)  # the keyset says RETIRED for the revoked key: still not published
    planned = {e.key_id: e for e in plan_keys(directory, ks.public_entries())}
    assert set(planned) == {ks.signing_key_id, ks.encryption_key_id, old_enc}
    assert planned[old_enc].status is Status.RETIRED and old_sign not in planned


def test_plan_revoke_and_retire_take_the_next_version_and_refuse_unknown_keys():
    ks = Keyset.generate("bank-0003", now=T0)
    directory = KeyDirectory(ROOT.public_key)
    published(directory, plan_keys(directory, ks.public_entries()))
    (retired,) = plan_retire(directory, ks.encryption_key_id, T0 + 7)
    assert (retired.status, retired.version, retired.not_after) == (Status.RETIRED, 2, T0 + 7)
    published(directory, [retired])
    assert plan_retire(directory, ks.encryption_key_id, T0 + 8) == []  # not ACTIVE any more
    (revoked,) = plan_revoke(directory, ks.encryption_key_id)
    assert (revoked.status, revoked.version) == (Status.REVOKED, 3)
    published(directory, [revoked])
    assert plan_revoke(directory, ks.encryption_key_id) == []
    with pytest.raises(KeyAdminRefused) as info:
        plan_revoke(directory, "bank-0003:sign:0000000000000000")
    assert info.value.reason == UNKNOWN_KEY
    assert usable_keys_left(directory, "bank-0003", T0 + 9) == {Purpose.SIGN: 1, Purpose.ENCRYPT: 0}


def test_plan_status_versions_suspensions_and_protects_the_hub():
    directory = KeyDirectory(ROOT.public_key)
    agency = Participant("agency-a", Kind.AGENCY, "A")
    (suspend,) = plan_status(directory, agency, True, T0)
    assert (suspend.state, suspend.version) == (ParticipantState.SUSPENDED, 1)
    published(directory, [suspend])
    assert plan_status(directory, agency, True, T0) == []
    (resume,) = plan_status(directory, agency, False, T0 + 1)
    assert (resume.state, resume.version) == (ParticipantState.ACTIVE, 2)
    # suspended in the participants file: resuming publishes, suspending again is no change
    flagged = Participant("agency-b", Kind.AGENCY, "B", suspended=True)
    assert plan_status(directory, flagged, True, T0) == []
    assert plan_status(directory, flagged, False, T0)[0].state is ParticipantState.ACTIVE
    with pytest.raises(KeyAdminRefused) as info:
        plan_status(directory, Participant("hub", Kind.HUB, "hub"), True, T0)
    assert info.value.reason == PROTECTED


# --- the policy follows published suspensions ------------------------------------------------------


def test_the_policy_follows_suspensions_published_in_the_directory():
    participants = load_participants(banks=1)
    agency, registry = participants.get("agency-nta"), participants.get("registry")
    policy = Policy.load()
    directory = KeyDirectory(ROOT.public_key)
    policy.follow(directory)
    assert directory.refuse_suspended_signers is False  # the policy refuses them, after verifying
    ok = (msg.PROVISION_INQUIRY, DATA_PUBLIC_FUNDS_ACCOUNT, BASIS_PROVISION, "income-tax-refund")  # agency-nta's
    assert policy.authorise(agency, registry, *ok)
    published(directory, [ParticipantStatus("agency-nta", ParticipantState.SUSPENDED, 1, T0)])
    with pytest.raises(PolicyDenied) as info:
        policy.authorise(agency, registry, *ok)
    assert info.value.reason is Reason.SUSPENDED
    published(directory, [ParticipantStatus("registry", ParticipantState.SUSPENDED, 1, T0)])
    other = participants.get("agency-city-minato")
    with pytest.raises(PolicyDenied) as info:  # a suspended recipient too
        policy.authorise(other, registry, *ok)
    assert info.value.reason is Reason.SUSPENDED
    published(directory, [ParticipantStatus("registry", ParticipantState.ACTIVE, 2, T0),
                          ParticipantStatus("agency-nta", ParticipantState.ACTIVE, 2, T0)])
    assert policy.authorise(agency, registry, *ok)
    policy.suspend("agency-nta")  # this process's own decision still wins
    with pytest.raises(PolicyDenied):
        policy.authorise(agency, registry, *ok)


# --- who may write the keys topic ------------------------------------------------------------------


def test_only_the_key_publisher_may_write_the_keys_topic():
    names = TopicNames("renkei")
    participants = load_participants(banks=2)
    bindings = acl_bindings(names, participants)
    writers = {b.principal for b in bindings if b.operation == "Write" and b.resource == names.keys}
    assert writers == {f"User:{KEY_PUBLISHER}"}
    hub = {(b.operation, b.resource) for b in bindings if b.principal == "User:hub"}
    assert ("Read", names.keys) in hub and ("Write", names.keys) not in hub
    assert all(("Read", names.keys) in {(b.operation, b.resource) for b in bindings if b.principal == f"User:{p.id}"}
               for p in participants)
    assert KEY_PUBLISHER not in participants  # a principal of its own, never a participant


# --- the passphrase is not beside the keys ---------------------------------------------------------


def test_the_generated_passphrase_lives_outside_the_keys_folder(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="renkei.keys")
    store = KeyStore(tmp_path / "keys")
    store.bootstrap(load_participants(banks=1))
    secret = tmp_path / "secrets" / "keys.passphrase"
    assert secret.exists() and not (tmp_path / "keys" / "passphrase").exists()
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600 and stat.S_IMODE(os.stat(secret.parent).st_mode) == 0o700
    assert not [p for p in (tmp_path / "keys").iterdir() if "passphrase" in p.name]
    assert sum("generated the key passphrase" in r.getMessage() for r in caplog.records) == 1
    assert KeyStore(tmp_path / "keys").keyset("hub").participant_id == "hub"  # another process reads it
    fresh = KeyStore(tmp_path / "other" / "keys")  # the keys folder is made by whoever creates the first key
    assert fresh.create_records_key() and (tmp_path / "other" / "keys" / "records.pub").exists()


def test_a_configured_passphrase_wins_and_is_never_generated(tmp_path):
    keys = tmp_path / "keys"
    KeyStore(keys, Passphrase.for_keys_dir(keys, value="from the environment")).bootstrap(load_participants(banks=1))
    assert not (tmp_path / "secrets").exists()
    assert KeyStore(keys, Passphrase.for_keys_dir(keys, value="from the environment")).keyset("hub")
    with pytest.raises(ConfigError, match="wrong passphrase"):
        KeyStore(keys, Passphrase.for_keys_dir(keys, value="another")).keyset("hub")
    missing = KeyStore(keys, Passphrase.for_keys_dir(keys, file=tmp_path / "mounted" / "pw"))
    with pytest.raises(ConfigError, match="no key passphrase"):
        missing.bootstrap(load_participants(banks=1))
    assert not (tmp_path / "mounted").exists()


def test_a_passphrase_left_in_the_keys_folder_by_an_older_version_is_moved_out(tmp_path, caplog):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "passphrase").write_bytes(b"old-generated")
    os.chmod(keys / "passphrase", 0o600)
    caplog.set_level(logging.WARNING, logger="renkei.keys")
    assert KeyStore(keys)._passphrase() == b"old-generated"
    assert not (keys / "passphrase").exists()
    assert (tmp_path / "secrets" / "keys.passphrase").read_bytes() == b"old-generated"
    assert any("moved the key passphrase" in r.getMessage() for r in caplog.records)


def test_a_passphrase_file_others_can_read_is_warned_about(tmp_path, caplog):
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    os.chmod(pw, 0o644)
    caplog.set_level(logging.WARNING, logger="renkei.keys")
    assert Passphrase.for_keys_dir(tmp_path / "keys", file=pw).read() == b"secret"
    assert any("readable by other users" in r.getMessage() for r in caplog.records)


# --- the journal and the shared keysets ------------------------------------------------------------


def test_the_journal_round_trips_and_a_damaged_one_is_ignored(tmp_path, caplog):
    store = KeyStore(tmp_path / "keys")
    ks = Keyset.generate("bank-0004", now=T0)
    records = [v for _, v in ROOT.to_records(ks.public_entries())]
    store.write_journal(records)
    assert store.read_journal() == records
    (tmp_path / "keys" / "directory.snapshot").write_bytes(b"garbage")
    caplog.set_level(logging.WARNING, logger="renkei.keys")
    assert store.read_journal() == []
    assert any("unreadable" in r.getMessage() for r in caplog.records)


def test_loaded_keysets_are_shared_and_take_keys_rotated_by_another_process(tmp_path):
    participants = load_participants(banks=1)
    running = KeyStore(tmp_path / "keys")
    running.bootstrap(participants)
    hub = running.keyset("hub")
    assert running.keyset("hub") is hub and running.token_authority()  # one object for every holder
    old = hub.signing_key_id
    ops = KeyStore(tmp_path / "keys")  # `renkei keys rotate hub` in another process
    rotated = ops.keyset("hub")
    rotated.rotate(now=T0, activate_at=T0, retire_at=T0 + 1)
    ops.save_keyset(rotated)
    directory = KeyDirectory(ROOT.public_key)
    published(directory, rotated.public_entries())
    assert running.refresh_keysets(directory, {"bank-9000"}) == []  # not the one that changed
    assert running.refresh_keysets(directory) == ["hub"]
    assert hub.signing_key_id == rotated.signing_key_id != old
    assert running.refresh_keysets(directory) == []


# --- metrics --------------------------------------------------------------------------------------


def test_worker_metrics_count_skipped_directory_records_by_reason():
    metrics = WorkerMetrics("hub")
    directory = KeyDirectory(ROOT.public_key)
    metrics.watch_directory(directory)
    ks = Keyset.generate("bank-0005", now=T0)
    for k, v in ROOT.to_records(ks.public_entries()):
        directory.apply_record(k, v)
    directory.apply_record(ks.signing_key_id, None)
    directory.apply_record(ks.signing_key_id, b"junk")
    directory.apply_record(ks.signing_key_id, b"junk again")
    text = parse_text(metrics.render())
    assert text['renkei_key_directory_entries{worker="hub"}'] == 2
    assert text['renkei_key_directory_skipped_total{worker="hub",reason="malformed"}'] == 2
    assert text['renkei_key_directory_skipped_total{worker="hub",reason="tombstone"}'] == 1
    assert parse_text(metrics.render())['renkei_key_directory_skipped_total{worker="hub",reason="malformed"}'] == 2
    assert set(metrics.directory_skipped.labels["reason"]) == {o.value for o in Outcome if o.skipped}


def test_replace_keeps_versions_in_entries():
    entry = Keyset.generate("bank-0006", now=T0).public_entries()[0]
    assert replace(entry, version=5).version == 5 and "v5" in repr(replace(entry, version=5))
