"""A small bus for envelope tests: root, keysets, directory, token authority, a settable clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from infra.core.errors import EnvelopeRejection, Reason
from infra.crypto import layout
from infra.crypto.envelope import HubForwarder, MemoryReplayGuard, Opener, Sealer, Verifier
from infra.crypto.keys import KeyDirectory, Keyset, RootAuthority
from infra.crypto.tokens import TokenAuthority
from infra.domain.participants import Kind, Participant, Participants
from infra.domain.policy import Policy
from infra.domain.procedures import Procedure, Procedures
from schemas import codec
from schemas.types import BODY_SCHEMA
from tests.unit.leakguard import used

T0 = 1_750_000_000.0  # seconds
PROCEDURE = "test-benefit"  # every agency of the world is entitled to it (world_policy)
OTHER_PROCEDURE = "agency-b-benefit"  # only agency-b is
MY_NUMBER = used("123456789018")
OTHER_MY_NUMBER = used("987654321093")


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class World:
    PARTICIPANTS = {
        "hub": "x25519",
        "agency-a": "x25519",
        "agency-b": "x25519",
        "registry": "mlkem768-x25519",
        "bank-1": "x25519",
        "bank-2": "mlkem768-x25519",
        "bank-3": "x25519",
        "dicj": "x25519",
        "portal": "x25519",
    }

    def __init__(self) -> None:
        self.clock = Clock()
        self.root = RootAuthority.generate()
        self.keys = {p: Keyset.generate(p, kem, now=int(T0 * 1000) - 86_400_000) for p, kem in self.PARTICIPANTS.items()}
        self.directory = self.fresh_directory()
        self.participants = Participants([participant(p) for p in self.PARTICIPANTS])
        self.tokens = TokenAuthority(bytes(32) + b"link", bytes(32) + b"master")
        self.hub = HubForwarder(self.keys["hub"], self.directory, clock=self.clock)
        self.ingress = Verifier(self.directory, clock=self.clock)

    def fresh_directory(self) -> KeyDirectory:
        entries = [e for k in self.keys.values() for e in k.public_entries()]
        return KeyDirectory.verify_and_load(self.root.snapshot(entries), self.root.public_key)

    def publish(self, keyset: Keyset) -> None:
        for key, value in self.root.to_records(keyset.public_entries()):
            self.directory.apply_record(key, value)

    def token(self, participant: str, my_number: str = MY_NUMBER) -> str:
        return self.tokens.token_for(my_number, participant)

    def sealer(self, participant: str) -> Sealer:
        return Sealer(self.keys[participant], self.directory, clock=self.clock)

    def opener(self, participant: str, **options: Any) -> Opener:
        options.setdefault("participants", self.participants)
        return Opener(self.keys[participant], self.directory, MemoryReplayGuard(), clock=self.clock, **options)

    def seal(self, sender: str = "agency-a", to: str = "registry", type_: str = "provision.inquiry", **kw: Any) -> bytes:
        body = kw.pop("body") if "body" in kw else example_body(type_)
        return self.sealer(sender).seal(
            body,
            type=type_,
            to=to,
            subject=kw.pop("subject", self.token(sender)),
            data_item=kw.pop("data_item", "public_funds_account"),
            basis=kw.pop("basis", "koza-toroku-ho-9"),
            **kw,
        )

    def forward(self, envelope: bytes, recipient: str | None = None) -> bytes:
        """Hub ingress verification, token translation and countersigned forwarding."""
        verified = self.ingress.verify(envelope)
        meta = verified.meta
        to = recipient or meta.recipient
        return self.hub.forward(verified, self.tokens.translate(meta.subject, meta.sender, to), recipient=recipient)

    def countersign(self, envelope: bytes, *, forwarded_at_ms: int | None = None) -> bytes:
        """What a holder of the hub's signing key can build WITHOUT the hub's ingress checks.

        A single-recipient envelope, re-addressed to the recipient's token and countersigned as
        is: the receiver's own checks are then all that stands between it and the message.
        """
        r = codec.decode(envelope, "envelope")
        mid, cid = str(r["message_id"]), str(r["correlation_id"])
        binding = layout.single_binding(r["recipient"], r["recipient_key_id"])
        origin_leaf = layout.origin_leaf(r, mid, cid, layout.ms(r["created_at"]), layout.ms(r["expires_at"]), binding)
        if r["sender"] != "hub":  # the hub seals its own messages in the recipient's token space already
            r["subject"] = self.tokens.translate(r["subject"], r["sender"], r["recipient"])
        at = int(self.clock() * 1000) if forwarded_at_ms is None else forwarded_at_ms
        hub = self.keys["hub"]
        leaf = layout.hub_leaf(origin_leaf, r, b"", at, hub.signing_key_id)
        r["countersignature"] = {"key_id": hub.signing_key_id, "forwarded_at": at,
                                 "signature": layout.tree_signatures(hub, layout.HUB_ROOT, [leaf])[0]}
        return codec.encode("envelope", r)


@pytest.fixture(scope="module")
def world() -> World:
    """One world per test module (key generation is the slow part); import it with ``fresh_clock``."""
    return World()


@pytest.fixture(autouse=True)
def fresh_clock(request: pytest.FixtureRequest) -> None:
    """Every test of a module that imports it starts at T0 (when it uses ``world``)."""
    if "world" in request.fixturenames:
        request.getfixturevalue("world").clock.now = T0


def rejected(fn: Any, *args: Any) -> Reason:
    """The reason ``fn(*args)`` is refused with (it must be)."""
    with pytest.raises(EnvelopeRejection) as info:
        fn(*args)
    return info.value.reason


def participant(pid: str) -> Participant:
    """The world's participants, of the kind their id names (``bank-N`` has bank code ``000N``)."""
    if pid.startswith("bank-"):
        return Participant(pid, Kind.BANK, pid, bank_code=f"{int(pid[5:]):04d}")
    kind = Kind.AGENCY if pid.startswith("agency-") else Kind(pid)
    return Participant(pid, kind, pid)


def example_body(type_: str) -> dict:
    """A schema-valid body for a message type, built from its Avro schema."""
    return _example(codec.schema(BODY_SCHEMA[type_]), {})


def _example(schema: Any, named: dict) -> Any:
    if isinstance(schema, list):
        return _example(next(s for s in schema if s != "null") if len(schema) > 1 else schema[0], named)
    if isinstance(schema, str):
        if schema in named:
            return _example(named[schema], named)
        return {
            "string": "x",
            "bytes": b"\x01\x02",
            "int": 1,
            "long": 2,
            "boolean": True,
            "float": 1.5,
            "double": 2.5,
            "null": None,
        }[schema]
    kind = schema["type"]
    logical = schema.get("logicalType")
    if logical in ("timestamp-millis", "timestamp-micros"):
        return datetime(2025, 4, 1, tzinfo=UTC)
    if logical == "uuid":
        return "6f1c1e4e-2f4a-4b8a-9d7e-1b2c3d4e5f60"
    if logical == "date":
        return datetime(2025, 4, 1).date()
    if kind == "record":
        named[schema["name"]] = schema
        return {f["name"]: _example(f["type"], named) for f in schema["fields"]}
    if kind == "enum":
        named[schema["name"]] = schema
        return schema["symbols"][0]
    if kind == "array":
        return [_example(schema["items"], named)]
    if kind == "map":
        return {"k": _example(schema["values"], named)}
    if kind == "fixed":
        named[schema["name"]] = schema
        return b"\x00" * schema["size"]
    return _example(kind, named)


def world_policy() -> Policy:
    """The shipped rules with a catalogue for this world's agencies (agency-a, agency-b)."""
    text = dict(name_ja="試験給付", name_en="Test benefit", legal_basis="試験法 第1条", purpose_ja="試験のため",
                purpose_en="for the tests")
    catalogue = Procedures([Procedure(PROCEDURE, agencies=frozenset({"kind:agency"}), **text),
                            Procedure(OTHER_PROCEDURE, agencies=frozenset({"agency-b"}), **text)])
    return Policy(Policy.load().rules, catalogue)
