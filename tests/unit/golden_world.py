"""Deterministic sealing for golden-bytes tests: fixed keys, ids, clock, data keys, nonces and an HPKE stand-in.

Every random input of sealing and forwarding is fixed, so the same inputs give the same bytes on every run
and a refactoring of the envelope code can be shown not to change one byte on the wire.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infra.crypto import keys
from infra.crypto.envelope import HubForwarder, LegIds, Sealer, Verifier
from tests.unit.envelope_world import T0

PARTICIPANTS = ("agency-a", "registry", "bank-1", "bank-2")


def fixed_keyset(pid: str) -> keys.Keyset:
    seed = hashlib.sha256(pid.encode()).digest()
    at = int(T0 * 1000) - 86_400_000
    return keys.Keyset(pid, "x25519", [keys.SigningKey(pid, ed25519.Ed25519PrivateKey.from_private_bytes(seed), at)],
                    [keys.DecryptionKey(pid, keys.X25519, hashlib.sha256(b"enc" + seed).digest(), at)])


@dataclass
class Golden:
    sets: dict[str, keys.Keyset]
    directory: keys.KeyDirectory
    issued: int = 0  # fresh message ids handed out since the last restart()

    def fresh_id(self) -> uuid.UUID:
        self.issued += 1
        return uuid.UUID(int=0x100 + self.issued, version=4)

    def restart(self) -> Golden:
        """Hand out the same fresh ids again, so the same calls seal the same bytes."""
        self.issued = 0
        return self

    def sealer(self, pid: str = "agency-a") -> Sealer:
        return Sealer(self.sets[pid], self.directory, clock=lambda: T0)

    def hub(self) -> GoldenHub:
        return GoldenHub(HubForwarder(self.sets["hub"], self.directory, clock=lambda: T0 + 1),
                         Verifier(self.directory, clock=lambda: T0 + 1))


@dataclass
class GoldenHub:
    """The hub's two steps as the gateway runs them: ingress verification, then forwarding what it returned."""

    forwarder: HubForwarder
    ingress: Verifier

    def forward(self, envelope: bytes, new_subject: str, *, recipient: str | None = None,
                leg: LegIds | None = None) -> bytes:
        return self.forwarder.forward(self.ingress.verify(envelope), new_subject, recipient=recipient, leg=leg)

    def forward_batch(self, items: list[tuple[bytes, str]]) -> list[bytes]:
        return self.forwarder.forward_batch([(self.ingress.verify(envelope), subject) for envelope, subject in items])


def digests(envelopes: list[bytes]) -> list[tuple[str, int]]:
    return [(hashlib.sha256(e).hexdigest(), len(e)) for e in envelopes]


@pytest.fixture
def golden(monkeypatch) -> Golden:
    """Fixed keys for four participants and the hub; HPKE, data keys, nonces and fresh ids made deterministic."""
    monkeypatch.setattr(keys.EncryptionPublicKey, "seal", lambda self, plaintext, info: hashlib.sha256(info).digest()
                        + plaintext)
    monkeypatch.setattr(secrets, "token_bytes", lambda n=32: bytes(n))
    monkeypatch.setattr(AESGCM, "generate_key", staticmethod(lambda bit_length: bytes(bit_length // 8)))
    root = keys.RootAuthority(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32)))
    sets = {p: fixed_keyset(p) for p in (*PARTICIPANTS, "hub")}
    directory = keys.KeyDirectory.verify_and_load(
        root.snapshot([e for k in sets.values() for e in k.public_entries()], now=datetime.fromtimestamp(T0, UTC)),
        root.public_key)
    world = Golden(sets, directory)
    monkeypatch.setattr(uuid, "uuid4", world.fresh_id)
    return world
