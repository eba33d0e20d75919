"""Per-bank HTTP request signatures for the bank HTTP channel (HMAC-SHA256 over TLS).

Every call between a bank's own systems and its HTTP channel connector, in both
directions, carries::

    Authorization: RENKEI-HMAC-SHA256 KeyId=<key id>, Timestamp=<unix seconds>, Nonce=<16-64 hex>, Signature=<hex>

where ``Signature`` is ``HMAC-SHA256(key, canonical)`` and ``canonical`` is the
UTF-8 of these lines joined by ``\\n``::

    RENKEI-HMAC-SHA256
    <direction>            bank-to-renkei | renkei-to-bank (a request is never valid the other way)
    <METHOD>               upper case
    <path and query>       as sent, e.g. /v1/registrations/k-1
    <timestamp>
    <nonce>
    <key id>
    <SHA-256 of the body, lower-case hex>   (of the empty string when there is none)

The receiver refuses (HTTP 401, ``{"reason", "message"}``) before it reads
anything else: no or unparsable header → ``AUTH_REQUIRED``; a key id that is not
this bank's → ``UNKNOWN_KEY``; a timestamp more than ``max_skew_s`` (300 s) away
→ ``EXPIRED``; a wrong signature → ``BAD_SIGNATURE``; a nonce already used within
the window → ``REPLAYED``.  Comparison is constant-time.  Keys are per bank,
rotate by key id (:class:`ChannelKeys`): the newest signs, every listed one verifies.
Why this and not mutual TLS: docs/security.md, "Bank channels".
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

SCHEME = "RENKEI-HMAC-SHA256"
TO_RENKEI = "bank-to-renkei"
TO_BANK = "renkei-to-bank"
MAX_SKEW_S = 300
"""How far a request's timestamp may be from the receiver's clock; nonces are remembered this long (twice)."""

_HEADER = re.compile(
    r"RENKEI-HMAC-SHA256\s+KeyId=([A-Za-z0-9._-]{1,64}),\s*Timestamp=([0-9]{1,12}),\s*"
    r"Nonce=([0-9a-f]{16,64}),\s*Signature=([0-9a-f]{64})")


@dataclass(frozen=True)
class ChannelKey:
    """One HMAC key of a bank's channel; the secret never appears in a repr."""

    key_id: str
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class ChannelKeys:
    """A bank's channel keys, oldest first: the last one signs, all of them verify (rotation)."""

    bank_id: str
    keys: tuple[ChannelKey, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError(f"{self.bank_id}: a channel needs at least one key")

    @property
    def current(self) -> ChannelKey:
        return self.keys[-1]

    def get(self, key_id: str) -> ChannelKey | None:
        return next((k for k in self.keys if k.key_id == key_id), None)


class AuthFailed(Exception):
    """A request that does not authenticate: ``reason`` is the 401's reason code, the message safe to show."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def canonical(direction: str, method: str, path: str, timestamp: str, nonce: str, key_id: str, body: bytes) -> bytes:
    """The bytes a signature covers (see the module docstring)."""
    return "\n".join([SCHEME, direction, method.upper(), path, timestamp, nonce, key_id,
                      hashlib.sha256(body).hexdigest()]).encode()


def sign(key: ChannelKey, direction: str, method: str, path: str, body: bytes = b"", *,
         now: float | None = None, nonce: str | None = None) -> str:
    """The ``Authorization`` header value for one request (a fresh nonce each call)."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_hex(16)
    mac = hmac.new(key.secret, canonical(direction, method, path, timestamp, nonce, key.key_id, body),
                   hashlib.sha256).hexdigest()
    return f"{SCHEME} KeyId={key.key_id}, Timestamp={timestamp}, Nonce={nonce}, Signature={mac}"


@dataclass(frozen=True)
class Verified:
    """An authenticated request: which key signed it, and its nonce (remember it: :class:`NonceCache`)."""

    key_id: str
    nonce: str
    timestamp: int


def verify(keys: ChannelKeys, header: str | None, direction: str, method: str, path: str, body: bytes, *,
           now: float | None = None, max_skew_s: int = MAX_SKEW_S) -> Verified:
    """Check one request's ``Authorization`` header; :class:`AuthFailed` with the reason code if it fails.

    Replay (a nonce seen before) is the caller's check, after this one (:class:`NonceCache`).
    """
    found = _HEADER.fullmatch((header or "").strip())
    if found is None:
        raise AuthFailed("AUTH_REQUIRED", f"sign the request: Authorization: {SCHEME} KeyId=…, Timestamp=…, "
                                          "Nonce=…, Signature=… (docs/connectors.md)")
    key_id, timestamp, nonce, signature = found.groups()
    key = keys.get(key_id)
    if key is None:
        raise AuthFailed("UNKNOWN_KEY", f"the KeyId is not a channel key of {keys.bank_id}")  # not echoed
    clock = time.time() if now is None else now
    if abs(clock - int(timestamp)) > max_skew_s:
        raise AuthFailed("EXPIRED", f"the request's timestamp is more than {max_skew_s} s from the receiver's clock")
    expected = hmac.new(key.secret, canonical(direction, method, path, timestamp, nonce, key_id, body),
                        hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise AuthFailed("BAD_SIGNATURE", "the signature does not match the request")
    return Verified(key_id, nonce, int(timestamp))


class NonceCache:
    """Nonces seen within the replay window, in memory (one process serves one bank's channel).

    A nonce is kept ``2 * max_skew_s``: any request older than that is refused as EXPIRED anyway.
    """

    def __init__(self, max_skew_s: int = MAX_SKEW_S, clock: Callable[[], float] = time.time) -> None:
        self.ttl = 2 * max_skew_s
        self.clock = clock
        self._seen: dict[tuple[str, str], float] = {}

    def check_and_remember(self, verified: Verified) -> None:
        now = self.clock()
        if len(self._seen) > 10_000:
            self._seen = {k: t for k, t in self._seen.items() if now - t < self.ttl}
        key = (verified.key_id, verified.nonce)
        seen = self._seen.get(key)
        if seen is not None and now - seen < self.ttl:
            raise AuthFailed("REPLAYED", "this request (its nonce) was used before; sign every request anew")
        self._seen[key] = now


def keys_from(bank_id: str, pairs: Iterable[tuple[str, bytes]] | Mapping[str, bytes]) -> ChannelKeys:
    """``ChannelKeys`` from ``(key id, secret)`` pairs, oldest first."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    return ChannelKeys(bank_id, tuple(ChannelKey(k, bytes(v)) for k, v in items))


__all__ = ["MAX_SKEW_S", "SCHEME", "TO_BANK", "TO_RENKEI", "AuthFailed", "ChannelKey", "ChannelKeys", "NonceCache",
           "Verified", "canonical", "keys_from", "sign", "verify"]
