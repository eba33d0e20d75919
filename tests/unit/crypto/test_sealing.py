"""Personal data at rest (infra.crypto.sealing): a sealed value opens only for its own row, table and participant."""

from __future__ import annotations

import pytest

from infra.crypto.sealing import RowSealer, UnsealError, open_sealed, seal
from infra.platform.keystore import KeyStore, Passphrase

ACCOUNT = {"bank_code": "9001", "account_number": "1234567", "holder_kana": "ヤマダ タロウ"}


def sealer(table: str = "connector_deliveries") -> RowSealer:
    keys = {"bank-9001": bytes(range(32)), "bank-9002": bytes(range(1, 33))}
    return RowSealer(keys.__getitem__, table)


def test_a_sealed_row_holds_no_plaintext_and_opens_for_its_own_row():
    s = sealer()
    ct = s.seal("bank-9001", "bank-http/m-1", "token-a", ACCOUNT)
    assert b"1234567" not in ct and "ヤマダ".encode() not in ct and b"9001" not in ct
    assert s.open("bank-9001", "bank-http/m-1", "token-a", ct) == ACCOUNT


@pytest.mark.parametrize("participant, row, subject, table", [
    ("bank-9001", "bank-http/m-2", "token-a", "connector_deliveries"),  # moved to another row
    ("bank-9001", "bank-http/m-1", "token-b", "connector_deliveries"),  # moved to another person
    ("bank-9002", "bank-http/m-1", "token-a", "connector_deliveries"),  # another participant's key
    ("bank-9001", "bank-http/m-1", "token-a", "dicj_lookup_answers"),  # another table
], ids=["other-row", "other-person", "other-participant", "other-table"])
def test_a_sealed_value_moved_anywhere_else_does_not_open(participant, row, subject, table):
    ct = sealer().seal("bank-9001", "bank-http/m-1", "token-a", ACCOUNT)
    with pytest.raises(UnsealError):
        sealer(table).open(participant, row, subject, ct)


def test_altered_bytes_do_not_open_and_the_error_names_no_value():
    ct = bytearray(seal(bytes(32), b"1234567", b"row-1"))
    ct[-1] ^= 1
    with pytest.raises(UnsealError) as caught:
        open_sealed(bytes(32), bytes(ct), b"row-1")
    assert "1234567" not in str(caught.value)


def test_a_participants_data_key_is_created_once_in_its_key_store(tmp_path):
    keys_dir = tmp_path / "keys"

    def store() -> KeyStore:  # each call: another process's store over the same folder
        return KeyStore(keys_dir, Passphrase.for_keys_dir(keys_dir, value="correct horse battery staple"))

    key = store().data_key("bank-9001")
    assert len(key) == 32 and store().data_key("bank-9001") == key
    assert store().data_key("bank-9002") != key
    assert (keys_dir / "bank-9001.data.secret").stat().st_mode & 0o077 == 0
    assert not [p.name for p in keys_dir.iterdir() if p.name.startswith(".")]  # no drafts
