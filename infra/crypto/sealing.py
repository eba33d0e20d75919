"""Personal data at rest: AES-256-GCM sealing of one stored value, bound to where it is stored.

The one primitive behind every table that keeps a person's data (the registry's
accounts, the portal's notices, the connectors' deliveries, DICJ's answers):
``nonce(12) | AES-GCM(key, plaintext, associated_data)``.  The associated data
names the row (its table, its owner, its id, the person's token), so a value
copied into another row — another person's — does not open.

:class:`RowSealer` is what a participant's tables use: JSON values sealed under
the participant's own data key (``<participant>.data`` in its key store, a
secret outside PostgreSQL, created once), so one connector serving several
participants keeps each one's rows under that participant's key.  The
database operator sees ciphertext; only a process holding the key store opens it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12


class UnsealError(Exception):
    """A sealed value does not open: wrong key, wrong row (moved or swapped), or altered bytes."""


def seal(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """``nonce | AES-256-GCM(key, plaintext, associated_data)`` with a fresh random nonce."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
    """The plaintext of :func:`seal`'s output, or :class:`UnsealError` (never a partial value)."""
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated_data)
    except (InvalidTag, ValueError):
        raise UnsealError("a stored value does not open under this row's key and id") from None


def data_key_name(participant_id: str) -> str:
    """The key-store secret holding ``participant_id``'s data key for its rows at rest."""
    return f"{participant_id}.data"


class RowSealer:
    """Seal and open the JSON values of one table, each under its participant's data key, bound to its row.

    ``keys``: participant id → its 32-byte data key (a key store's ``data_key``); each key is asked for
    once per process.  ``table`` is part of the associated data, so a value cannot move between tables.
    """

    def __init__(self, keys: Callable[[str], bytes], table: str) -> None:
        self._keys = keys
        self._cache: dict[str, bytes] = {}
        self.table = table

    def _key(self, participant: str) -> bytes:
        key = self._cache.get(participant)
        if key is None:
            key = self._cache[participant] = self._keys(participant)
        return key

    def _aad(self, participant: str, row_id: str, subject: str) -> bytes:
        return "|".join(("renkei at-rest", self.table, participant, row_id, subject)).encode()

    def seal(self, participant: str, row_id: str, subject: str, value: Any) -> bytes:
        """``value`` (JSON-able) sealed for the row ``row_id`` of ``participant`` about ``subject``."""
        data = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode()
        return seal(self._key(participant), data, self._aad(participant, row_id, subject))

    def open(self, participant: str, row_id: str, subject: str, sealed: bytes) -> Any:
        """The value sealed for exactly this row; :class:`UnsealError` for any other row, key or bytes."""
        return json.loads(open_sealed(self._key(participant), bytes(sealed),
                                      self._aad(participant, row_id, subject)))


__all__ = ["NONCE_BYTES", "RowSealer", "UnsealError", "data_key_name", "open_sealed", "seal"]
