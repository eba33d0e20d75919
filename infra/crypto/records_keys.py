"""The records key (記録署名鍵): signs provision-record chain heads, checkpoints and retention anchors.

Provision records live in PostgreSQL, so whoever runs the database can rewrite
them; what that operator cannot do is sign.  The hub holds one Ed25519 records
key in the key store files (``records.key``, encrypted like the other key files;
never in the database) and signs every statement it makes about the records.
A verifier — the portal, ``renkei portal records``, an auditor — needs only the
public keys (``records.pub``: one hex key per line, older keys kept so that what
they signed still verifies after a rotation).

Callers never handle raw key bytes (as in :mod:`infra.crypto.keys`): they ask a
:class:`RecordsKey` to :meth:`~RecordsKey.sign` or :meth:`~RecordsKey.seal` and a
:class:`RecordsPublicKeys` to :meth:`~RecordsPublicKeys.verify` or
:meth:`~RecordsPublicKeys.check`.  Every signature is over a domain tag and the
message, so a signature made for one purpose never passes for another.

A :class:`Seal` signs many statements with one signature (the hub seals every
head a batch moved at once): the statements are the leaves of an RFC 9162
Merkle tree (:mod:`infra.crypto.merkle`), the key signs the root, and each statement
keeps its audit path.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from infra.core.errors import ConfigError
from infra.crypto import merkle
from infra.crypto.keys import Purpose, make_key_id, read_encrypted, write_encrypted

__all__ = ["RECORDS_KEY_KIND", "RecordsKey", "RecordsPublicKeys", "Seal", "records_key_id"]

RECORDS_KEY_KIND: Final = b"records"
_RECORDS_PARTICIPANT: Final = "records"
_SEAL_VERSION: Final = 1
_U32 = struct.Struct(">I")


def records_key_id(public_key: bytes) -> str:
    """``records:sign:<16 hex>`` (the key directory's key id format)."""
    return make_key_id(_RECORDS_PARTICIPANT, Purpose.SIGN, public_key)


@dataclass(frozen=True)
class Seal:
    """One statement's share of a batch signature: the signed root's signature and the statement's audit path."""

    key_id: str
    signature: bytes = field(repr=False)
    index: int
    size: int
    path: tuple[bytes, ...] = field(repr=False)

    def to_bytes(self) -> bytes:
        """``1 | len | key id | signature (64) | index | size | n | n × 32-byte siblings``: what the database keeps."""
        kid = self.key_id.encode("ascii")
        return b"".join((bytes((_SEAL_VERSION, len(kid))), kid, self.signature, _U32.pack(self.index),
                         _U32.pack(self.size), bytes((len(self.path),)), *self.path))

    @classmethod
    def from_bytes(cls, data: bytes | None) -> Seal | None:
        """The seal stored as ``data``, or None when it is missing or not a well-formed seal."""
        if not data or data[0] != _SEAL_VERSION or len(data) < 2:
            return None
        data = bytes(data)
        end = 2 + data[1]
        try:
            key_id = data[2:end].decode("ascii")
            signature = data[end:end + 64]
            index, = _U32.unpack_from(data, end + 64)
            size, = _U32.unpack_from(data, end + 68)
            count = data[end + 72]
        except (UnicodeDecodeError, struct.error, IndexError):
            return None
        rest = data[end + 73:]
        if len(signature) != 64 or count > merkle.MAX_PATH or len(rest) != 32 * count:
            return None
        return cls(key_id, signature, index, size, tuple(rest[i:i + 32] for i in range(0, len(rest), 32)))


class RecordsKey:
    """The records signing key (private). Kept in the key store files; the hub is its only user."""

    def __init__(self, private: ed25519.Ed25519PrivateKey) -> None:
        self._private = private
        self.public_key = private.public_key().public_bytes_raw()
        self.key_id = records_key_id(self.public_key)

    @classmethod
    def generate(cls) -> RecordsKey:
        return cls(ed25519.Ed25519PrivateKey.generate())

    def __repr__(self) -> str:
        return f"RecordsKey({self.key_id!r})"

    def save(self, path: str | os.PathLike, passphrase: bytes) -> None:
        write_encrypted(path, RECORDS_KEY_KIND, self._private.private_bytes_raw(), passphrase)

    @classmethod
    def load(cls, path: str | os.PathLike, passphrase: bytes) -> RecordsKey:
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(read_encrypted(path, RECORDS_KEY_KIND, passphrase)))

    def public(self) -> RecordsPublicKeys:
        return RecordsPublicKeys([self.public_key])

    def sign(self, domain: bytes, message: bytes) -> bytes:
        """Ed25519 over ``domain || message`` (``domain`` ends in a NUL byte, so no domain prefixes another)."""
        return self._private.sign(_tagged(domain, message))

    def seal(self, domain: bytes, statements: Sequence[bytes]) -> list[Seal]:
        """One signature over the Merkle root of ``statements``; a :class:`Seal` per statement, in order."""
        if not statements:
            return []
        root, paths = merkle.build([merkle.leaf_hash(s) for s in statements])
        signature = self.sign(domain, root)
        return [Seal(self.key_id, signature, i, len(statements), tuple(p)) for i, p in enumerate(paths)]


class RecordsPublicKeys:
    """The records public keys a verifier trusts, by key id."""

    def __init__(self, public_keys: Iterable[bytes]) -> None:
        self._keys: dict[str, ed25519.Ed25519PublicKey] = {}
        for raw in public_keys:
            try:
                self._keys[records_key_id(raw)] = ed25519.Ed25519PublicKey.from_public_bytes(raw)
            except ValueError:
                raise ConfigError("a records public key is not a 32-byte Ed25519 key") from None
        if not self._keys:
            raise ConfigError("no records public key: a verifier needs at least one")

    @classmethod
    def from_file(cls, path: Path) -> RecordsPublicKeys:
        """``records.pub``: one hex-encoded Ed25519 public key per line (# comments allowed)."""
        try:
            lines = Path(path).read_text().splitlines()
        except FileNotFoundError:
            raise ConfigError(f"no records public key at {path}: `renkei up` creates it (embedded); elsewhere "
                              "copy the hub's records.pub there") from None
        try:
            return cls(bytes.fromhex(line.split("#", 1)[0].strip()) for line in lines
                       if line.split("#", 1)[0].strip())
        except ValueError:
            raise ConfigError(f"{path} is not a list of hex-encoded records public keys") from None

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def __repr__(self) -> str:
        return f"RecordsPublicKeys({self.key_ids!r})"

    def verify(self, key_id: str, domain: bytes, message: bytes, signature: bytes) -> bool:
        """True when a trusted records key ``key_id`` signed ``domain || message``."""
        key = self._keys.get(key_id)
        if key is None:
            return False
        try:
            key.verify(bytes(signature), _tagged(domain, message))
        except InvalidSignature:
            return False
        return True

    def check(self, domain: bytes, statement: bytes, seal: Seal | None) -> bool:
        """True when ``seal`` proves that a trusted records key signed ``statement`` under ``domain``."""
        if seal is None:
            return False
        root = merkle.root_from_path(merkle.leaf_hash(statement), seal.index, seal.size, list(seal.path))
        return root is not None and self.verify(seal.key_id, domain, root, seal.signature)


def _tagged(domain: bytes, message: bytes) -> bytes:
    if not domain.endswith(b"\x00") or domain.count(b"\x00") != 1:
        raise ValueError("a signature domain is one NUL-terminated tag")
    return domain + message
