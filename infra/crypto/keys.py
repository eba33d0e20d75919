"""Keys: per-participant keysets, the root-signed key directory, and encrypted key files.

Why this file is long: the keyset model (public and private keys, participant status, the root-signed
directory) shares invariants a split would have to re-check at each seam; the encrypted key files are the next
thing to move out, after this module's mutation testing.

Tink-like: a :class:`Keyset` holds a participant's private keys with key ids
(a primary signing key and a primary encryption key, plus older keys kept to
verify or decrypt what is still in flight). Callers ask it to ``sign`` or
``decrypt``; they never see raw private bytes. Rotation is ``rotate()`` and a
directory update, not a code change.

The :class:`KeyDirectory` is everyone's view of everyone's *public* keys and of
each participant's standing (suspended or not): root-signed entries, one record
per key id (and one per participant status) on the compacted ``renkei.keys``
topic. Every change is a new entry with a higher ``version``; a reader applies
an entry only if its root signature verifies and its version is above the one
it holds, so a replayed older entry, a forged entry or a bare tombstone never
wins. Bad records are skipped and counted (:class:`Outcome`), never fatal.

Key lifecycle, decided precisely (``signed_at`` is the envelope's ``created_at``):

* ``ACTIVE``  — verifies; an ACTIVE encryption key may be chosen for new messages.
* ``RETIRED`` — ``not_after`` is the retirement instant. Signatures made at or
  before it still verify (in-flight messages stay valid until they expire);
  later ones are refused (REVOKED_KEY). Never chosen for new encryption; the
  holder keeps the private key to decrypt in-flight messages.
* ``REVOKED`` — refused at once, whatever the timestamp (REVOKED_KEY).
  Revocation is terminal: no later record makes the key usable again. It is
  also the only deletion: the directory never forgets a key it has seen.

Because freshness caps a message's lifetime, a retired key can be abused for at
most that lifetime after retirement; a compromised key must be *revoked*.
A suspended participant's signatures are refused (SUSPENDED) whatever key made them.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import os
import secrets
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from infra.core.errors import CodecError, ConfigError, EnvelopeRejection, Reason

log = logging.getLogger("renkei.keys")

ROOT_PARTICIPANT = "root"
ENTRY_SIGNATURE_DOMAIN = b"renkei key-directory entry v1\x00"
STATUS_KEY_PREFIX = "participant:"
"""Kafka key of a participant-status record: ``participant:<id>`` (a key id has three ``:`` parts, this two)."""


class Purpose(str, Enum):
    SIGN = "SIGN"
    ENCRYPT = "ENCRYPT"


class Status(str, Enum):
    ACTIVE = "ACTIVE"
    RETIRED = "RETIRED"
    REVOKED = "REVOKED"


_STATUS_RANK = {Status.ACTIVE: 0, Status.RETIRED: 1, Status.REVOKED: 2}

ED25519 = "Ed25519"
X25519 = "X25519"  # HPKE DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM
MLKEM768_X25519 = "MLKEM768-X25519"  # HPKE ML-KEM-768+X25519 hybrid, HKDF-SHA256, AES-256-GCM

_KEM_NAMES = {"x25519": X25519, "mlkem768-x25519": MLKEM768_X25519}
_SUITES = {
    X25519: hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM),
    MLKEM768_X25519: hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
}
_MLKEM768_PUB_LEN = 1184


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def now_epoch_ms() -> int:
    return (datetime.now(UTC) - _EPOCH) // _MS


def to_epoch_ms(value: datetime | int | None) -> int | None:
    """Epoch milliseconds, exactly (no float rounding)."""
    if value is None or isinstance(value, int):
        return value
    return (value - _EPOCH) // _MS


def _from_epoch_ms(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, UTC)


def make_key_id(participant_id: str, purpose: Purpose, public_key: bytes) -> str:
    """Short, stable key id: ``<participant>:<purpose>:<16 hex of SHA-256(public key)>``."""
    return f"{participant_id}:{purpose.value.lower()}:{hashlib.sha256(public_key).digest()[:8].hex()}"


# --------------------------------------------------------------------------- public keys


@dataclass(frozen=True)
class KeyEntry:
    """One public key as listed in the key directory."""

    participant_id: str
    key_id: str
    purpose: Purpose
    algorithm: str
    public_key: bytes
    status: Status
    not_before: int  # epoch millis
    not_after: int | None = None  # epoch millis; the retirement instant for RETIRED keys
    version: int = 1  # per key id; each change of the entry is one higher (see KeyDirectory)

    def __repr__(self) -> str:
        return (
            f"KeyEntry({self.key_id!r}, {self.purpose.value}, {self.algorithm}, {self.status.value}, "
            f"v{self.version}, not_before={self.not_before}, not_after={self.not_after})"
        )

    @property
    def record_key(self) -> str:
        """The Kafka key of its record on ``renkei.keys``: the key id."""
        return self.key_id

    def to_record(self) -> dict:
        return {
            "participant_id": self.participant_id,
            "key_id": self.key_id,
            "purpose": self.purpose.value,
            "algorithm": self.algorithm,
            "public_key": self.public_key,
            "status": self.status.value,
            "not_before": _from_epoch_ms(self.not_before),
            "not_after": _from_epoch_ms(self.not_after),
            "version": self.version,
        }

    @classmethod
    def from_record(cls, record: dict, *, check_key_id: bool = True) -> KeyEntry:
        try:
            purpose = Purpose(record["purpose"])
            status = _STATUS_FROM_WIRE.get(record["status"], Status.REVOKED)  # UNKNOWN -> refused
            entry = cls(
                participant_id=record["participant_id"],
                key_id=record["key_id"],
                purpose=purpose,
                algorithm=record["algorithm"],
                public_key=bytes(record["public_key"]),
                status=status,
                not_before=to_epoch_ms(record["not_before"]),
                not_after=to_epoch_ms(record.get("not_after")),
                version=int(record.get("version", 0)),
            )
        except (KeyError, ValueError, TypeError):
            raise EnvelopeRejection(Reason.MALFORMED, "key directory entry has a missing or unusable field") from None
        if check_key_id and not entry.key_id_matches():
            raise EnvelopeRejection(Reason.MALFORMED, "key directory entry: key id does not match its public key")
        return entry

    def key_id_matches(self) -> bool:
        return self.key_id == make_key_id(self.participant_id, self.purpose, self.public_key)


_STATUS_FROM_WIRE = {s.value: s for s in Status}


class ParticipantState(str, Enum):
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"


def status_record_key(participant_id: str) -> str:
    return STATUS_KEY_PREFIX + participant_id


@dataclass(frozen=True)
class ParticipantStatus:
    """A participant's standing on the bus as the root published it (``renkei participants suspend|resume``)."""

    participant_id: str
    state: ParticipantState
    version: int  # per participant; each change one higher
    changed_at: int  # epoch millis

    @property
    def suspended(self) -> bool:
        return self.state is not ParticipantState.ACTIVE

    @property
    def record_key(self) -> str:
        return status_record_key(self.participant_id)

    def to_record(self) -> dict:
        return {"participant_id": self.participant_id, "state": self.state.value, "version": self.version,
                "changed_at": _from_epoch_ms(self.changed_at)}

    @classmethod
    def from_record(cls, record: dict) -> ParticipantStatus:
        try:
            return cls(
                participant_id=record["participant_id"],
                # A state this reader does not know (UNKNOWN) fails closed: suspended.
                state=_STATE_FROM_WIRE.get(record["state"], ParticipantState.SUSPENDED),
                version=int(record["version"]),
                changed_at=to_epoch_ms(record["changed_at"]),
            )
        except (KeyError, ValueError, TypeError):
            raise EnvelopeRejection(Reason.MALFORMED, "participant status has a missing or unusable field") from None


_STATE_FROM_WIRE = {s.value: s for s in ParticipantState}

DirectoryEntry = KeyEntry | ParticipantStatus
_ENTRY_SCHEMAS = {KeyEntry: "key_directory_entry", ParticipantStatus: "participant_status"}


class SigningPublicKey:
    """A verifier for one Ed25519 key from the directory."""

    __slots__ = ("key_id", "participant_id", "_key", "_entry")

    def __init__(self, entry: KeyEntry) -> None:
        if entry.purpose is not Purpose.SIGN or entry.algorithm != ED25519:
            raise EnvelopeRejection(Reason.MALFORMED, "key directory entry: not an Ed25519 signing key")
        self.key_id = entry.key_id
        self.participant_id = entry.participant_id
        self._entry = entry
        try:
            self._key = ed25519.Ed25519PublicKey.from_public_bytes(entry.public_key)
        except ValueError:
            raise EnvelopeRejection(Reason.MALFORMED, "key directory entry: bad Ed25519 public key") from None

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"SigningPublicKey({self.key_id!r})"


class EncryptionPublicKey:
    """An HPKE recipient key from the directory: ``seal(plaintext, info)``."""

    __slots__ = ("key_id", "participant_id", "algorithm", "_key", "_suite")

    def __init__(self, entry: KeyEntry) -> None:
        if entry.purpose is not Purpose.ENCRYPT or entry.algorithm not in _SUITES:
            raise EnvelopeRejection(Reason.MALFORMED, "key directory entry: not a supported HPKE key")
        self.key_id = entry.key_id
        self.participant_id = entry.participant_id
        self.algorithm = entry.algorithm
        self._suite = _SUITES[entry.algorithm]
        raw = entry.public_key
        try:
            if entry.algorithm == X25519:
                self._key = x25519.X25519PublicKey.from_public_bytes(raw)
            else:
                self._key = hpke.MLKEM768X25519PublicKey(
                    mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM768_PUB_LEN]),
                    x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM768_PUB_LEN:]),
                )
        except ValueError:
            raise EnvelopeRejection(Reason.MALFORMED, "key directory entry: bad HPKE public key") from None

    def seal(self, plaintext: bytes, info: bytes) -> bytes:
        """HPKE base-mode encryption (RFC 9180); output is encapsulated key then ciphertext."""
        return self._suite.encrypt(plaintext, self._key, info=info)

    def __repr__(self) -> str:
        return f"EncryptionPublicKey({self.key_id!r}, {self.algorithm})"


# --------------------------------------------------------------------------- private keys


class SigningKey:
    __slots__ = ("key_id", "private", "public_raw", "created_at_ms", "retired_at_ms")

    def __init__(self, participant_id: str, private: ed25519.Ed25519PrivateKey, created_at_ms: int, retired_at_ms: int | None = None):
        self.private = private
        self.public_raw = private.public_key().public_bytes_raw()
        self.key_id = make_key_id(participant_id, Purpose.SIGN, self.public_raw)
        self.created_at_ms = created_at_ms
        self.retired_at_ms = retired_at_ms

    def secret(self) -> bytes:
        return self.private.private_bytes_raw()


class DecryptionKey:
    __slots__ = ("key_id", "algorithm", "hpke_private", "public_raw", "_secret", "created_at_ms", "retired_at_ms")

    def __init__(self, participant_id: str, algorithm: str, secret: bytes, created_at_ms: int, retired_at_ms: int | None = None):
        self.algorithm = algorithm
        self._secret = secret
        if algorithm == X25519:
            priv = x25519.X25519PrivateKey.from_private_bytes(secret)
            self.hpke_private = priv
            self.public_raw = priv.public_key().public_bytes_raw()
        elif algorithm == MLKEM768_X25519:
            kem = mlkem.MLKEM768PrivateKey.from_seed_bytes(secret[:64])
            dh = x25519.X25519PrivateKey.from_private_bytes(secret[64:])
            self.hpke_private = hpke.MLKEM768X25519PrivateKey(kem, dh)
            self.public_raw = kem.public_key().public_bytes_raw() + dh.public_key().public_bytes_raw()
        else:
            raise ConfigError(f"unsupported encryption algorithm {algorithm!r}")
        self.key_id = make_key_id(participant_id, Purpose.ENCRYPT, self.public_raw)
        self.created_at_ms = created_at_ms
        self.retired_at_ms = retired_at_ms

    @staticmethod
    def new_secret(algorithm: str) -> bytes:
        if algorithm == X25519:
            return x25519.X25519PrivateKey.generate().private_bytes_raw()
        return mlkem.MLKEM768PrivateKey.generate().private_bytes_raw() + x25519.X25519PrivateKey.generate().private_bytes_raw()

    def secret(self) -> bytes:
        return self._secret


class Keyset:
    """A participant's private keys: one primary signing and one primary encryption key, plus older ones."""

    def __init__(self, participant_id: str, kem: str, signing: list[SigningKey], encryption: list[DecryptionKey]) -> None:
        if not signing or not encryption:
            raise ConfigError("a keyset needs at least one signing and one encryption key")
        self.participant_id = participant_id
        self.kem = kem
        self._signing = signing  # [0] is primary
        self._encryption = encryption  # [0] is primary
        self._enc_by_id = {k.key_id: k for k in encryption}
        self._pending: Keyset | None = None  # rotated keys taken for decryption, primaries not yet switched

    @classmethod
    def generate(cls, participant_id: str, kem: str = "x25519", *, now: datetime | int | None = None) -> Keyset:
        if kem not in _KEM_NAMES:
            raise ConfigError(f"kem must be one of {sorted(_KEM_NAMES)}")
        if not participant_id or ":" in participant_id:
            raise ConfigError("participant id must be non-empty and contain no ':'")
        at_ms = to_epoch_ms(now) if now is not None else now_epoch_ms()
        alg = _KEM_NAMES[kem]
        return cls(
            participant_id,
            kem,
            [SigningKey(participant_id, ed25519.Ed25519PrivateKey.generate(), at_ms)],
            [DecryptionKey(participant_id, alg, DecryptionKey.new_secret(alg), at_ms)],
        )

    def __repr__(self) -> str:
        return (
            f"Keyset({self.participant_id!r}, kem={self.kem!r}, signing={self.signing_key_id!r}, "
            f"encryption={self.encryption_key_id!r}, older={len(self._signing) + len(self._encryption) - 2})"
        )

    # -- primitives
    @property
    def signing_key_id(self) -> str:
        return self._signing[0].key_id

    @property
    def encryption_key_id(self) -> str:
        return self._encryption[0].key_id

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature with the primary signing key (id: ``signing_key_id``)."""
        return self._signing[0].private.sign(data)

    def has_encryption_key(self, key_id: str) -> bool:
        return key_id in self._enc_by_id

    def decrypt(self, key_id: str, ciphertext: bytes, info: bytes) -> bytes:
        """HPKE-open ``ciphertext`` sealed to our key ``key_id`` with ``info``; UNDECRYPTABLE otherwise."""
        key = self._enc_by_id.get(key_id)
        if key is None:
            raise EnvelopeRejection(Reason.UNDECRYPTABLE, "sealed to an encryption key this keyset does not hold")
        try:
            return _SUITES[key.algorithm].decrypt(ciphertext, key.hpke_private, info=info)
        except (InvalidTag, ValueError):
            raise EnvelopeRejection(
                Reason.UNDECRYPTABLE, "ciphertext does not open under our key with these routing fields"
            ) from None

    # -- lifecycle
    def rotate(self, *, now: datetime | int | None = None, activate_at: datetime | int | None = None,
               retire_at: datetime | int | None = None) -> None:
        """New primary signing and encryption keys; the old ones are kept, marked retired.

        The new keys' ``not_before`` is ``activate_at`` (default ``now``): senders seal to the new
        encryption key from then on, and a running holder switches its signing key then
        (:meth:`update_from`). The old keys retire at ``retire_at`` (default: the activation), so
        what they signed until then still verifies.
        """
        at_ms = to_epoch_ms(now) if now is not None else now_epoch_ms()
        active_at_ms = to_epoch_ms(activate_at) if activate_at is not None else at_ms
        retired_at_ms = to_epoch_ms(retire_at) if retire_at is not None else active_at_ms
        alg = self._encryption[0].algorithm
        for k in self._signing + self._encryption:
            if k.retired_at_ms is None:
                k.retired_at_ms = retired_at_ms
        self._signing.insert(0, SigningKey(self.participant_id, ed25519.Ed25519PrivateKey.generate(), active_at_ms))
        new = DecryptionKey(self.participant_id, alg, DecryptionKey.new_secret(alg), active_at_ms)
        self._encryption.insert(0, new)
        self._enc_by_id[new.key_id] = new

    def forget(self, key_id: str) -> None:
        """Destroy an older (non-primary) key once nothing in flight can need it."""
        if key_id in (self.signing_key_id, self.encryption_key_id):
            raise ConfigError("cannot forget a primary key; rotate first")
        self._signing = [k for k in self._signing if k.key_id != key_id]
        self._encryption = [k for k in self._encryption if k.key_id != key_id]
        self._enc_by_id.pop(key_id, None)

    def public_entries(self) -> list[KeyEntry]:
        """Directory entries for every key: primaries ACTIVE, older keys RETIRED at their rotation time.

        Versions follow the lifecycle (ACTIVE 1, RETIRED 2), so publishing a keyset's entries again is
        idempotent and a rotation published from the keyset supersedes the ACTIVE entry; later changes
        (revocation, retirement by ops) take the next version after what the directory holds.
        """
        out = []
        for purpose, keys, alg in (
            (Purpose.SIGN, self._signing, lambda k: ED25519),
            (Purpose.ENCRYPT, self._encryption, lambda k: k.algorithm),
        ):
            for i, k in enumerate(keys):
                out.append(
                    KeyEntry(
                        participant_id=self.participant_id,
                        key_id=k.key_id,
                        purpose=purpose,
                        algorithm=alg(k),
                        public_key=k.public_raw,
                        status=Status.ACTIVE if i == 0 else Status.RETIRED,
                        not_before=k.created_at_ms,
                        not_after=None if i == 0 else k.retired_at_ms,
                        version=1 if i == 0 else 2,
                    )
                )
        return out

    def key_ids(self) -> set[str]:
        """Every key id this keyset holds, including rotated keys not switched to yet."""
        held = {k.key_id for k in self._signing + self._encryption}
        if self._pending is not None:
            held |= self._pending.key_ids()
        return held

    def update_from(self, other: Keyset, *, now: datetime | int | None = None) -> None:
        """Take ``other``'s keys (this participant's key file, rotated by another process), in place.

        Every Sealer and Opener holding this keyset opens what is sealed to any of ``other``'s keys
        at once, and signs with ``other``'s primary once its ``not_before`` has come (until then with
        the current one, which the directory still accepts): no one has to be rebuilt, and nothing
        is signed with a key that other processes may not know yet.
        """
        if other.participant_id != self.participant_id:
            raise ConfigError("a keyset can only take the keys of the same participant")
        for k in other._encryption:
            self._enc_by_id.setdefault(k.key_id, k)
        self._pending = other
        self.switch_due(now=now)

    def switch_due(self, *, now: datetime | int | None = None) -> bool:
        """Switch to the keys taken by :meth:`update_from` once they are active. Returns whether it switched."""
        other = self._pending
        if other is None or other._signing[0].created_at_ms > (to_epoch_ms(now) if now is not None else now_epoch_ms()):
            return False
        self.kem = other.kem
        self._enc_by_id = dict(other._enc_by_id)
        self._encryption = list(other._encryption)
        self._signing = list(other._signing)
        self._pending = None
        return True

    # -- storage
    def save(self, path: str | os.PathLike, passphrase: bytes, *, salt: bytes | None = None) -> None:
        """Write the keyset encrypted (scrypt + AES-256-GCM) to ``path``, atomically, mode 0600."""
        payload = {
            "participant_id": self.participant_id,
            "kem": self.kem,
            "signing": [_key_json(k, ED25519) for k in self._signing],
            "encryption": [_key_json(k, k.algorithm) for k in self._encryption],
        }
        write_encrypted(path, b"keyset", json.dumps(payload).encode(), passphrase, salt=salt)

    @classmethod
    def load(cls, path: str | os.PathLike, passphrase: bytes) -> Keyset:
        p = json.loads(read_encrypted(path, b"keyset", passphrase))
        pid = p["participant_id"]
        signing = [
            SigningKey(pid, ed25519.Ed25519PrivateKey.from_private_bytes(_b64d(k["secret"])), k["created_at"], k["retired_at"])
            for k in p["signing"]
        ]
        encryption = [
            DecryptionKey(pid, k["algorithm"], _b64d(k["secret"]), k["created_at"], k["retired_at"]) for k in p["encryption"]
        ]
        for stored, k in zip(p["signing"] + p["encryption"], signing + encryption, strict=True):
            if stored["key_id"] != k.key_id:
                raise ConfigError(f"keyset file {os.fspath(path)!r} is inconsistent (key id mismatch)")
        return cls(pid, p["kem"], signing, encryption)


def _key_json(k, algorithm: str) -> dict:
    return {
        "key_id": k.key_id,
        "algorithm": algorithm,
        "secret": base64.b64encode(k.secret()).decode(),
        "created_at": k.created_at_ms,
        "retired_at": k.retired_at_ms,
    }


def _b64d(s: str) -> bytes:
    return base64.b64decode(s.encode())


# --------------------------------------------------------------------------- encrypted files

_FILE_MAGIC = b"RENKEI-ENCRYPTED-KEY v1\n"
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**15, 8, 1


@functools.lru_cache(maxsize=64)
def _file_key(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    # Cached: a key store writes its keysets under one store salt (KeyStore), so a process
    # serving 1,000 bank identities derives scrypt once, not 1,000 times (~0.12 s each).
    if not isinstance(passphrase, bytes) or not passphrase:
        raise ConfigError("a non-empty passphrase (bytes) is required for key files")
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


def write_encrypted(path: str | os.PathLike, kind: bytes, plaintext: bytes, passphrase: bytes, *,
                    salt: bytes | None = None) -> None:
    """``magic | header JSON | AES-256-GCM(scrypt(passphrase), plaintext, aad=magic+header)``; atomic, 0600.

    ``salt``: a random one per file by default; a key store passes its own store-wide salt so
    that its files share one scrypt derivation (each file still has its own random nonce).
    """
    salt, nonce = salt or secrets.token_bytes(16), secrets.token_bytes(12)
    header = json.dumps(
        {"kind": kind.decode(), "kdf": "scrypt", "n": _SCRYPT_N, "r": _SCRYPT_R, "p": _SCRYPT_P,
         "salt": base64.b64encode(salt).decode(), "nonce": base64.b64encode(nonce).decode()}
    ).encode() + b"\n"
    key = _file_key(passphrase, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    write_atomic(path, _FILE_MAGIC + header + AESGCM(key).encrypt(nonce, plaintext, _FILE_MAGIC + header))


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: a 0600 temp file in the same folder, fsynced,
    renamed over ``path``, the folder fsynced (a crash leaves the old file or the new one)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates 0600
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_encrypted(path: str | os.PathLike, kind: bytes, passphrase: bytes) -> bytes:
    where = os.fspath(path)
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {where!r}: {exc.strerror}") from None
    try:
        if not blob.startswith(_FILE_MAGIC):
            raise ValueError
        header, _, ct = blob[len(_FILE_MAGIC):].partition(b"\n")
        h = json.loads(header)
        if h["kind"] != kind.decode() or h["kdf"] != "scrypt":
            raise ValueError
        salt, nonce = base64.b64decode(h["salt"]), base64.b64decode(h["nonce"])
        n, r, p = int(h["n"]), int(h["r"]), int(h["p"])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{where!r} is not a Renkei {kind.decode()} file") from None
    key = _file_key(passphrase, salt, n, r, p)
    try:
        return AESGCM(key).decrypt(nonce, ct, _FILE_MAGIC + header + b"\n")
    except InvalidTag:
        raise ConfigError(f"cannot decrypt {where!r}: wrong passphrase or the file was altered") from None


# --------------------------------------------------------------------------- root and directory


class RootAuthority:
    """The platform root key: signs key directory entries. Kept offline / in an HSM in production."""

    def __init__(self, private: ed25519.Ed25519PrivateKey) -> None:
        self._private = private
        self.public_key = private.public_key().public_bytes_raw()
        self.key_id = make_key_id(ROOT_PARTICIPANT, Purpose.SIGN, self.public_key)

    @classmethod
    def generate(cls) -> RootAuthority:
        return cls(ed25519.Ed25519PrivateKey.generate())

    def __repr__(self) -> str:
        return f"RootAuthority({self.key_id!r})"

    def save(self, path: str | os.PathLike, passphrase: bytes) -> None:
        write_encrypted(path, b"root", self._private.private_bytes_raw(), passphrase)

    @classmethod
    def load(cls, path: str | os.PathLike, passphrase: bytes) -> RootAuthority:
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(read_encrypted(path, b"root", passphrase)))

    def sign_entry(self, entry: DirectoryEntry) -> bytes:
        """One ``signed_key_entry`` record (the value published on ``renkei.keys``).

        The signed bytes are the entry's single-object encoding, whose fingerprint names its schema:
        a key entry cannot be passed off as a participant status, or the other way round.
        """
        from schemas import codec

        entry_bytes = codec.encode(_ENTRY_SCHEMAS[type(entry)], entry.to_record())
        return codec.encode(
            "signed_key_entry",
            {
                "entry": entry_bytes,
                "root_key_id": self.key_id,
                "root_signature": self._private.sign(ENTRY_SIGNATURE_DOMAIN + entry_bytes),
            },
        )

    def to_records(self, entries: Iterable[DirectoryEntry]) -> list[tuple[str, bytes]]:
        """``(kafka key, value)`` pairs for the compacted ``renkei.keys`` topic."""
        return [(e.record_key, self.sign_entry(e)) for e in entries]

    def snapshot(self, entries: Iterable[DirectoryEntry], *, now: datetime | None = None) -> bytes:
        """The whole directory as one ``key_directory_snapshot`` record."""
        return encode_snapshot([self.sign_entry(e) for e in entries], now=now)


def encode_snapshot(signed_values: Iterable[bytes], *, now: datetime | None = None) -> bytes:
    """A ``key_directory_snapshot`` of already signed records (each still verified on load)."""
    from schemas import codec

    return codec.encode("key_directory_snapshot", {"entries": list(signed_values), "issued_at": now or datetime.now(UTC)})


def signed_record_key(value: bytes) -> str:
    """The Kafka key a signed record belongs under (its entry's key id or ``participant:<id>``), unverified.

    For records a :class:`KeyDirectory` has already applied (republishing them from a journal).
    """
    from schemas import codec

    entry_bytes = codec.decode(value, "signed_key_entry")["entry"]
    name, _ = codec.writer_name(entry_bytes)
    record = codec.decode(entry_bytes, name)
    return status_record_key(record["participant_id"]) if name == "participant_status" else record["key_id"]


def decode_snapshot(data: bytes) -> list[bytes]:
    """The signed records of a snapshot, unverified (``KeyDirectory.apply_record`` verifies each)."""
    from schemas import codec

    return list(codec.decode(data, "key_directory_snapshot")["entries"])


class Outcome(str, Enum):
    """What applying one ``renkei.keys`` record did.

    Everything but APPLIED and DUPLICATE is a skip: the record changes nothing, is counted in
    ``KeyDirectory.skipped`` and logged once. The skip values are the closed label set of the
    ``renkei_key_directory_skipped_total{reason}`` metric.
    """

    APPLIED = "applied"
    DUPLICATE = "duplicate"  # the very record already held: a re-read, or a republished copy
    MALFORMED = "malformed"  # not a signed entry: junk bytes, unknown schema, unusable fields
    TOMBSTONE = "tombstone"  # a bare Kafka tombstone: a deletion is a signed REVOKED entry
    UNKNOWN_ROOT = "unknown_root"  # signed by a root key this reader does not trust
    BAD_SIGNATURE = "bad_signature"  # the root signature does not verify
    MISMATCH = "mismatch"  # Kafka key is not the entry's, key id is not its key's, or other key material
    STALE = "stale"  # version not above the one held (a replay), or a key status moving backwards

    @property
    def skipped(self) -> bool:
        return self not in (Outcome.APPLIED, Outcome.DUPLICATE)


SKIP_REASONS = frozenset(o.value for o in Outcome if o.skipped)

_STRICT_REASONS = {Outcome.UNKNOWN_ROOT: Reason.UNKNOWN_KEY, Outcome.BAD_SIGNATURE: Reason.BAD_SIGNATURE}


@dataclass(frozen=True)
class _Held:
    version: int
    value: bytes | None  # the signed record as read (None: added locally, e.g. in tests)


class KeyDirectory:
    """Verified public keys and participant statuses, with lifecycle checks on every lookup.

    ``apply_record`` is the only way records from outside get in: root signature first, then the
    version (strictly above the one held, per Kafka key), then the lifecycle (a key's material never
    changes, its status never moves back). It never raises for a bad record: it returns the
    :class:`Outcome`, counts skips in ``skipped`` and logs one line each.
    """

    def __init__(self, root_public_key: bytes) -> None:
        self._root = ed25519.Ed25519PublicKey.from_public_bytes(root_public_key)
        self._root_key_id = make_key_id(ROOT_PARTICIPANT, Purpose.SIGN, root_public_key)
        self._entries: dict[str, KeyEntry] = {}
        self._verifiers: dict[str, SigningPublicKey | EncryptionPublicKey] = {}
        self._ids_by_participant: dict[str, set[str]] = {}
        self._held: dict[str, _Held] = {}  # Kafka key -> what we hold for it
        self._held_values: set[bytes] = set()  # the signed records held: a copy is a duplicate at once
        self._statuses: dict[str, ParticipantStatus] = {}
        self.suspensions: dict[str, bool] = {}
        """Participant id -> suspended, as published; a live mapping (``Policy.follow`` reads it)."""
        self.refuse_suspended_signers = True
        """Receivers refuse a suspended participant's signatures here (SUSPENDED). The hub turns it off
        (``Policy.follow``): its policy refuses them after verifying, so the sender gets a notice."""
        self.skipped: Counter[str] = Counter()
        """Records skipped since this directory was built, by :class:`Outcome` value."""
        self.source_offsets: dict[int, int] = {}
        """Keys-topic partition -> next offset, where ``infra.platform.keystore.load_directory`` stopped reading."""

    @classmethod
    def verify_and_load(cls, signed_bytes: bytes, root_public_key: bytes) -> KeyDirectory:
        """Load a ``RootAuthority.snapshot`` strictly: any entry that does not apply is an error.

        Raises EnvelopeRejection UNKNOWN_KEY (another root), BAD_SIGNATURE or MALFORMED.
        """
        directory = cls(root_public_key)
        for value in decode_snapshot(signed_bytes):
            outcome, detail = directory._apply(None, value)
            if outcome.skipped:
                raise EnvelopeRejection(_STRICT_REASONS.get(outcome, Reason.MALFORMED), f"key directory snapshot: {detail}")
        return directory

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        revoked = sum(e.status is Status.REVOKED for e in self._entries.values())
        return f"KeyDirectory({len(self._entries)} keys, {revoked} revoked, {len(self._statuses)} statuses)"

    def entries(self) -> list[KeyEntry]:
        return list(self._entries.values())

    def entry(self, key_id: str) -> KeyEntry | None:
        return self._entries.get(key_id)

    def key_ids(self, participant_id: str) -> set[str]:
        """Every key id the directory lists for ``participant_id``, whatever its status."""
        return set(self._ids_by_participant.get(participant_id, ()))

    def statuses(self) -> list[ParticipantStatus]:
        return list(self._statuses.values())

    def status(self, participant_id: str) -> ParticipantStatus | None:
        return self._statuses.get(participant_id)

    def version(self, record_key: str) -> int:
        """The version held for a Kafka key (a key id, or ``participant:<id>``); 0 if none."""
        held = self._held.get(record_key)
        return held.version if held is not None else 0

    def signed_records(self) -> list[tuple[str, bytes]]:
        """``(kafka key, signed value)`` of every record held as read: what a republish writes again."""
        return [(k, h.value) for k, h in self._held.items() if h.value is not None]

    def held_value(self, record_key: str) -> bytes | None:
        held = self._held.get(record_key)
        return held.value if held is not None else None

    # -- records from outside
    def apply_record(self, key: str | bytes | None, value: bytes | None, *, where: str = "") -> Outcome:
        """Apply one ``renkei.keys`` record; ``where`` (e.g. ``offset 17``) goes into the skip log line."""
        outcome, detail = self._apply(key, value)
        if outcome.skipped:
            self.skipped[outcome.value] += 1
            log.warning("key directory record %sskipped (%s): %s", f"at {where} " if where else "", outcome.value,
                        detail)
        return outcome

    def _apply(self, key: str | bytes | None, value: bytes | None) -> tuple[Outcome, str]:
        from schemas import codec

        if isinstance(key, bytes):
            key = key.decode("utf-8", "replace")
        if value is None:
            return Outcome.TOMBSTONE, "a bare tombstone deletes nothing; a deletion is a root-signed REVOKED entry"
        if value in self._held_values and (key is None or self.held_value(key) == value):
            return Outcome.DUPLICATE, ""  # verified when it was applied; re-reads cost no signature check
        try:
            signed = codec.decode(value, "signed_key_entry")
        except CodecError as exc:
            return Outcome.MALFORMED, f"not a signed key directory entry ({exc.code})"
        if signed["root_key_id"] != self._root_key_id:
            return Outcome.UNKNOWN_ROOT, "signed by a root key this directory does not trust"
        try:
            self._root.verify(signed["root_signature"], ENTRY_SIGNATURE_DOMAIN + signed["entry"])
        except InvalidSignature:
            return Outcome.BAD_SIGNATURE, "the root signature does not verify"
        try:
            name, _ = codec.writer_name(signed["entry"])
            if name == "key_directory_entry":
                entry: DirectoryEntry = KeyEntry.from_record(codec.decode(signed["entry"], name), check_key_id=False)
                if not entry.key_id_matches():
                    return Outcome.MISMATCH, "the key id does not match its public key"
            elif name == "participant_status":
                entry = ParticipantStatus.from_record(codec.decode(signed["entry"], name))
            else:
                return Outcome.MALFORMED, f"a signed {name} is not a directory entry"
        except (CodecError, EnvelopeRejection) as exc:
            return Outcome.MALFORMED, f"the signed entry is unusable ({exc.code})"
        if key is not None and key != entry.record_key:
            return Outcome.MISMATCH, "the Kafka key is not the entry's key id"
        return self._accept(entry, bytes(value))

    def apply_signed(self, entry: DirectoryEntry, value: bytes) -> Outcome:
        """Apply a record this process has just signed with the root key (``RootAuthority.sign_entry``):
        the version and lifecycle rules apply, the signature is not checked again."""
        outcome, detail = self._accept(entry, value)
        if outcome.skipped:
            self.skipped[outcome.value] += 1
            log.warning("key directory entry %s not applied (%s): %s", entry.record_key, outcome.value, detail)
        return outcome

    def _accept(self, entry: DirectoryEntry, value: bytes) -> tuple[Outcome, str]:
        held = self._held.get(entry.record_key)
        if held is not None:
            if held.value == value:
                return Outcome.DUPLICATE, ""
            if entry.version <= held.version:
                return Outcome.STALE, f"version {entry.version} is not above the version {held.version} held"
        if isinstance(entry, KeyEntry):
            outcome, detail = self._put(entry)
        else:
            outcome, detail = self._put_status(entry), ""
        if outcome is Outcome.APPLIED:
            if held is not None and held.value is not None:
                self._held_values.discard(held.value)
            self._held[entry.record_key] = _Held(entry.version, value)
            self._held_values.add(value)
        return outcome, detail

    def add(self, entry: DirectoryEntry) -> bool:
        """Add a locally trusted entry (tests, bootstrap from a verified source). Returns whether it applied."""
        held = self._held.get(entry.record_key)
        if held is not None and entry.version <= held.version:
            return False
        outcome = self._put(entry)[0] if isinstance(entry, KeyEntry) else self._put_status(entry)
        if outcome is Outcome.APPLIED:
            self._held[entry.record_key] = _Held(entry.version, None)
        return outcome is Outcome.APPLIED

    def _put(self, entry: KeyEntry) -> tuple[Outcome, str]:
        old = self._entries.get(entry.key_id)
        if old is not None:
            if (old.participant_id, old.purpose, old.algorithm, old.public_key) != (
                entry.participant_id, entry.purpose, entry.algorithm, entry.public_key
            ):
                return Outcome.MISMATCH, "the entry changes an existing key's material"
            if _STATUS_RANK[entry.status] < _STATUS_RANK[old.status]:
                return Outcome.STALE, f"status {entry.status.value} would move back from {old.status.value}"
        try:
            verifier = SigningPublicKey(entry) if entry.purpose is Purpose.SIGN else EncryptionPublicKey(entry)
        except EnvelopeRejection as exc:
            return Outcome.MALFORMED, exc.message
        self._entries[entry.key_id] = entry
        self._verifiers[entry.key_id] = verifier
        self._ids_by_participant.setdefault(entry.participant_id, set()).add(entry.key_id)
        return Outcome.APPLIED, ""

    def _put_status(self, status: ParticipantStatus) -> Outcome:
        self._statuses[status.participant_id] = status
        self.suspensions[status.participant_id] = status.suspended
        return Outcome.APPLIED

    # -- local changes (tests; the published record is what every other process follows)
    def revoke(self, key_id: str) -> None:
        """Refuse ``key_id`` from now on, in this process (publish the root-signed record too)."""
        entry = self._entries.get(key_id)
        if entry is not None:
            self._entries[key_id] = replace(entry, status=Status.REVOKED)

    def retire(self, key_id: str, *, at: datetime | int | None = None) -> None:
        """Mark ``key_id`` retired at ``at`` (default now): see the module docstring for what that allows."""
        entry = self._entries.get(key_id)
        if entry is None:
            raise EnvelopeRejection(Reason.UNKNOWN_KEY, "no such key in the directory")
        if entry.status is Status.ACTIVE:
            self._entries[key_id] = replace(entry, status=Status.RETIRED, not_after=to_epoch_ms(at) if at is not None else now_epoch_ms())

    # -- lookups
    def _usable(self, key_id: str, purpose: Purpose, at_ms: int):
        entry = self._entries.get(key_id)
        if entry is None or entry.purpose is not purpose:
            raise EnvelopeRejection(Reason.UNKNOWN_KEY, f"no {purpose.value.lower()} key with this id in the directory")
        if entry.status is Status.REVOKED:
            raise EnvelopeRejection(Reason.REVOKED_KEY, f"{purpose.value.lower()} key has been revoked")
        if entry.not_after is not None and at_ms > entry.not_after:
            raise EnvelopeRejection(
                Reason.REVOKED_KEY, f"{purpose.value.lower()} key was retired before the message was created"
            )
        return self._verifiers[key_id]

    def signing_key(self, key_id: str, *, signed_at: datetime | int) -> SigningPublicKey:
        """Verifier for ``key_id`` for a signature made at ``signed_at``.

        UNKNOWN_KEY if absent; REVOKED_KEY if revoked, or retired/expired before ``signed_at``;
        SUSPENDED if its participant is suspended (whatever the time: suspension is immediate),
        unless ``refuse_suspended_signers`` is off.
        """
        key = self._usable(key_id, Purpose.SIGN, to_epoch_ms(signed_at))
        if self.refuse_suspended_signers and self.suspensions.get(key.participant_id):
            raise EnvelopeRejection(Reason.SUSPENDED, f"participant {key.participant_id} is suspended")
        return key

    def recipient_key(self, key_id: str, *, sealed_at: datetime | int) -> EncryptionPublicKey:
        """The encryption key ``key_id``, checked as for signing keys (the hub checks what senders sealed to)."""
        return self._usable(key_id, Purpose.ENCRYPT, to_epoch_ms(sealed_at))

    def encryption_key(self, participant_id: str) -> EncryptionPublicKey:
        """``participant_id``'s current encryption key: what new messages are sealed to.

        The newest (by ``not_before``) of its keys that are ACTIVE, or RETIRED with ``not_after``
        still ahead, preferring those already past their ``not_before``: after a rotation senders keep
        sealing to the old key until the new one's ``not_before``, by which time the holder has
        taken the new keys. A revoked key is never chosen.
        """
        best = None
        at_ms = now_epoch_ms()
        for key_id in self._ids_by_participant.get(participant_id, ()):
            entry = self._entries[key_id]
            if entry.purpose is not Purpose.ENCRYPT or entry.status is Status.REVOKED:
                continue
            if entry.status is Status.RETIRED and (entry.not_after is None or entry.not_after <= at_ms):
                continue
            if entry.status is Status.ACTIVE and entry.not_after is not None and entry.not_after <= at_ms:
                continue
            rank = (entry.not_before <= at_ms, entry.not_before, key_id)
            if best is None or rank > best[0]:
                best = (rank, entry)
        if best is None:
            raise EnvelopeRejection(Reason.UNKNOWN_KEY, "participant has no active encryption key in the directory")
        return self._verifiers[best[1].key_id]
