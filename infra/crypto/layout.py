"""The envelope's signed layout: domain separation, the leaves that are signed, the bound HPKE infos.

Every byte that a signature or an AEAD binds is laid out here and nowhere else; the primitives
(``infra.crypto.seal``, ``verify``, ``open``, ``forward`` and ``legs``) call these functions and never concatenate
bytes of their own. Changing anything here changes the bytes on the wire: tests/unit/crypto/test_envelope_golden.py
pins them. The full layout is in the docstring of ``infra.crypto.envelope`` and docs/security.md.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from typing import TYPE_CHECKING

from infra.crypto import merkle

if TYPE_CHECKING:
    from infra.crypto.keys import Keyset

ORIGIN = b"renkei envelope origin v1\x00"
ORIGIN_V2 = b"renkei envelope origin v2\x00"  # with procedure and outcome
HUB = b"renkei envelope hub v1\x00"
HUB_V2 = b"renkei envelope hub v2\x00"  # a leg with ids of its own
ORIGIN_ROOT = b"renkei batch root origin v1\x00"
HUB_ROOT = b"renkei batch root hub v1\x00"
SUBJECT = b"renkei subject v1\x00"
BODY_INFO = b"renkei body v1\x00"
WRAP_INFO = b"renkei wrap v1\x00"
WRAP_LEAF = b"renkei wrap leaf v1\x00"
DATA_AAD = b"renkei data v1\x00"
LEG_KEY_INFO = b"renkei leg key v1\x00"
LEG_AAD = b"renkei leg v1\x00"
NO_VALUE, VALUE = b"\x00", b"\x01"

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)


def lp(value: str) -> bytes:
    raw = value.encode()
    return len(raw).to_bytes(4, "big") + raw


def ms(value: datetime | int) -> int:
    return value if isinstance(value, int) else (value - EPOCH) // MS


def subject_commitment(message_id: str, subject: str) -> bytes:
    return sha256(SUBJECT + lp(message_id) + lp(subject)).digest()


def body_info(mid: str, type_: str, sender: str, recipient: str, key_id: str) -> bytes:
    return BODY_INFO + lp(mid) + lp(type_) + lp(sender) + lp(recipient) + lp(key_id)


def wrap_info(mid: str, type_: str, sender: str, recipient: str, key_id: str) -> bytes:
    return WRAP_INFO + lp(mid) + lp(type_) + lp(sender) + lp(recipient) + lp(key_id)


def wrap_leaf(wrap: dict) -> bytes:
    return merkle.leaf_hash(
        WRAP_LEAF + lp(wrap["recipient"]) + lp(wrap["recipient_key_id"]) + wrap["wrapped_key"]
    )


def opt(value: str | None) -> bytes:
    return NO_VALUE if value is None else VALUE + lp(value)


def origin_leaf(r: dict, mid: str, cid: str, created: int, expires: int, recipient_binding: bytes) -> bytes:
    procedure, outcome = r.get("procedure"), r.get("outcome")
    extra = b"" if procedure is None and outcome is None else opt(procedure) + opt(outcome)
    return merkle.leaf_hash(
        b"".join(
            (
                ORIGIN_V2 if extra else ORIGIN,
                lp(mid),
                lp(cid),
                lp(r["type"]),
                lp(r["sender"]),
                recipient_binding,
                lp_bytes(r["subject_commitment"]),
                lp(r["data_item"]),
                lp(r["legal_basis"]),
                created.to_bytes(8, "big", signed=True),
                expires.to_bytes(8, "big", signed=True),
                lp(r["sender_key_id"]),
                sha256(r["body"]).digest(),
                extra,
            )
        )
    )


def lp_bytes(raw: bytes) -> bytes:
    return len(raw).to_bytes(4, "big") + raw


def single_binding(recipient: str, key_id: str) -> bytes:
    return b"1" + lp(recipient) + lp(key_id)


def fanout_binding(count: int, wraps_root: bytes) -> bytes:
    # The count is bound too: RFC 9162 paths alone do not fix the tree size.
    return b"N" + count.to_bytes(4, "big") + wraps_root


def hub_leaf(origin_leaf: bytes, r: dict, wrap_leaf: bytes, forwarded_at: int, hub_key_id: str) -> bytes:
    leg = r.get("leg")
    own_ids = b"" if leg is None else b"".join((
        lp(r["message_id"]), lp(r["correlation_id"]),
        sha256(leg["leg_key"]).digest(), sha256(leg["sealed_origin"]).digest(),
    ))
    return merkle.leaf_hash(
        b"".join(
            (
                HUB_V2 if leg is not None else HUB,
                origin_leaf,
                lp(r["subject"]),
                lp(r["recipient"]),
                lp(r["recipient_key_id"]),
                wrap_leaf,
                forwarded_at.to_bytes(8, "big", signed=True),
                lp(hub_key_id),
                own_ids,
            )
        )
    )


def leg_key_info(hub_id: str, recipient: str, key_id: str) -> bytes:
    return LEG_KEY_INFO + lp(hub_id) + lp(recipient) + lp(key_id)


def leg_aad(r: dict) -> bytes:
    return (LEG_AAD + lp(r["message_id"]) + lp(r["correlation_id"]) + lp(r["recipient"])
            + lp(r["recipient_key_id"]) + lp(r["sender"]))


def origin_plaintext(mid: str, cid: str, procedure: str | None, outcome: str | None) -> bytes:
    # Canonical UUID strings (checked on ingress): their hex is their 16 bytes.
    return bytes.fromhex(mid.replace("-", "") + cid.replace("-", "")) + opt(procedure) + opt(outcome)


def origin_from_plaintext(raw: bytes) -> tuple[str, str, str | None, str | None]:
    """Inverse of ``origin_plaintext``; the bytes were authenticated (AES-GCM) under the leg key."""
    mid, cid = str(uuid.UUID(bytes=raw[:16])), str(uuid.UUID(bytes=raw[16:32]))
    values: list[str | None] = []
    at = 32
    for _ in range(2):
        if raw[at:at + 1] == NO_VALUE:
            values.append(None)
            at += 1
        else:
            n = int.from_bytes(raw[at + 1:at + 5], "big")
            values.append(raw[at + 5:at + 5 + n].decode())
            at += 5 + n
    if at != len(raw):
        raise ValueError("trailing bytes")
    return mid, cid, values[0], values[1]


def root_tbs(domain: bytes, count: int, root: bytes) -> bytes:
    return domain + count.to_bytes(4, "big") + root


def tree_signatures(keyset: Keyset, domain: bytes, leaves: list[bytes]) -> list[dict]:
    root, paths = merkle.build(leaves)
    signature = keyset.sign(root_tbs(domain, len(leaves), root))
    n = len(leaves)
    return [
        {"proof": {"leaf_index": i, "leaf_count": n, "siblings": paths[i]}, "root_signature": signature}
        for i in range(n)
    ]
