"""The portal's login cards: a stand-in for the My Number card's user certificate (利用者証明用電子証明書).

A card binds a card id to the person's PORTAL token (never the My Number) and a
4-digit PIN (scrypt, salted).  The rules are the My Number card's:

- three wrong PINs in a row lock the card (``CARD_LOCKED``); a right PIN
  resets the count (wrong, right, wrong, wrong leaves it usable);
- a locked card is unlocked only at the counter (``renkei portal card
  unlock``): the person shows their My Number, which must give the card's
  token, and sets a new PIN — the My Number plus presence at the counter is
  this design's PUK;
- a card reported lost is suspended at once (``CARD_SUSPENDED``) and every
  session of it ends; unlocking at the counter (card found) lifts it.

No card-id enumeration: an id that names no card answers exactly as a card with
a wrong PIN does — the same scrypt work, the same reason and tries-left
countdown, and it "locks" after three tries too (its count is kept in
``portal_unknown_cards`` under the id's SHA-256).  The remaining gap is the
card rule itself: whoever knows a card id can lock that card with three
guesses.  The page therefore limits login failures per client address
(:mod:`connectors.portal_throttle`) so that nobody can lock cards in bulk, and
the person unlocks theirs at the counter (docs/portal.md, "Security").
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import Enum
from typing import Any

from connectors.portal_sessions import end_sessions
from infra.core.errors import Reason, Rejection, ValidationError

MAX_PIN_TRIES = 3
_CARD_RE = re.compile(r"[A-Za-z0-9-]{4,32}")
_PIN_RE = re.compile(r"[0-9]{4}")
_NO_CARD_SALT = hashlib.sha256(b"renkei portal: an id that names no card").digest()[:16]
_NO_CARD_HASH = bytes(32)


class CardState(str, Enum):
    ACTIVE = "ACTIVE"
    LOCKED = "LOCKED"  # three wrong PINs, or locked by the issuer
    SUSPENDED = "SUSPENDED"  # reported lost


@dataclass(frozen=True)
class Login:
    """What one login attempt came to: the person's portal token, or the reason and the tries left."""

    token: str | None
    reason: Reason | None = None
    tries_left: int | None = None

    @property
    def ok(self) -> bool:
        return self.token is not None

    @property
    def counted(self) -> bool:
        """A wrong PIN (or a try on a locked card): what the per-client throttle counts."""
        return self.reason in (Reason.WRONG_PIN, Reason.CARD_LOCKED)


def validate_card_id(value: Any, field: str = "card_id") -> str:
    if not isinstance(value, str) or not _CARD_RE.fullmatch(value):
        raise ValidationError(field, "4 to 32 ASCII letters, digits or '-'")
    return value


def validate_pin(value: Any, field: str = "pin") -> str:
    if not isinstance(value, str) or not _PIN_RE.fullmatch(value):
        raise ValidationError(field, "4 ASCII digits")
    return value


def pin_hash(pin: str, salt: bytes) -> bytes:
    """scrypt (N=2^14, r=8): about 50 ms and 16 MiB per guess, so a stolen table is slow to brute-force."""
    return hashlib.scrypt(pin.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


async def _pin_matches(pin: str, salt: bytes, expected: bytes) -> bool:
    return hmac.compare_digest(await asyncio.to_thread(pin_hash, pin, salt), expected)


class CardStore:
    """Cards in the portal's database (``portal_people``): issue, log in, lock, report lost, unlock."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def issue(self, card_id: str, token: str, pin: str) -> None:
        """Issue a card for the person whose portal token is ``token``; ``CARD_EXISTS`` if the id is taken."""
        validate_card_id(card_id)
        validate_pin(pin)
        salt = secrets.token_bytes(16)
        digest = await asyncio.to_thread(pin_hash, pin, salt)
        async with self.pool.acquire() as conn, conn.transaction():
            issued = await conn.fetchval(
                "INSERT INTO portal_people (card_id, token, pin_salt, pin_hash) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (card_id) DO NOTHING RETURNING 1", card_id, token, salt, digest)
            if issued is None:
                raise Rejection(Reason.CARD_EXISTS, "a card with this id was issued already; choose another id")
            await conn.execute("DELETE FROM portal_unknown_cards WHERE card_key = $1", _card_key(card_id))

    async def login(self, card_id: str, pin: str) -> Login:
        """Check ``pin`` against the card, counting wrong PINs (module docstring). Never raises for a bad guess."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT token, pin_salt, pin_hash, failed, state FROM portal_people "
                                      "WHERE card_id = $1 FOR UPDATE", card_id)
            if row is None:
                return await self._no_such_card(conn, card_id, pin)
            if row["state"] == CardState.LOCKED.value:
                return Login(None, Reason.CARD_LOCKED)
            if not await _pin_matches(pin, bytes(row["pin_salt"]), bytes(row["pin_hash"])):
                failed = row["failed"] + 1
                if failed >= MAX_PIN_TRIES:
                    await conn.execute("UPDATE portal_people SET failed = $2, state = 'LOCKED', "
                                       "state_changed_at = now() WHERE card_id = $1", card_id, failed)
                    await end_sessions(conn, card_id)
                    return Login(None, Reason.CARD_LOCKED, 0)
                await conn.execute("UPDATE portal_people SET failed = $2 WHERE card_id = $1", card_id, failed)
                return Login(None, Reason.WRONG_PIN, MAX_PIN_TRIES - failed)
            if row["failed"]:
                await conn.execute("UPDATE portal_people SET failed = 0 WHERE card_id = $1", card_id)
            if row["state"] == CardState.SUSPENDED.value:
                return Login(None, Reason.CARD_SUSPENDED)
            return Login(row["token"])

    async def _no_such_card(self, conn: Any, card_id: str, pin: str) -> Login:
        """The same answers, work and countdown as a real card with a wrong PIN."""
        key = _card_key(card_id)
        failed = await conn.fetchval("SELECT failed FROM portal_unknown_cards WHERE card_key = $1 FOR UPDATE", key)
        if failed is not None and failed >= MAX_PIN_TRIES:
            return Login(None, Reason.CARD_LOCKED)
        await _pin_matches(pin, _NO_CARD_SALT, _NO_CARD_HASH)  # the work a real card costs; never matches
        failed = await conn.fetchval(
            "INSERT INTO portal_unknown_cards (card_key, failed) VALUES ($1, 1) ON CONFLICT (card_key) DO UPDATE "
            "SET failed = portal_unknown_cards.failed + 1, updated_at = now() RETURNING failed", key)
        if failed >= MAX_PIN_TRIES:
            return Login(None, Reason.CARD_LOCKED, 0)
        return Login(None, Reason.WRONG_PIN, MAX_PIN_TRIES - failed)

    async def _set_state(self, card_id: str, state: CardState) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            found = await conn.fetchval("UPDATE portal_people SET state = $2, state_changed_at = now() "
                                        "WHERE card_id = $1 RETURNING 1", card_id, state.value)
            if found is None:
                raise Rejection(Reason.UNKNOWN_CARD, "no card with this id was issued")
            await end_sessions(conn, card_id)

    async def lock(self, card_id: str) -> None:
        """Lock the card (the issuer, e.g. on the person's request); its sessions end."""
        await self._set_state(card_id, CardState.LOCKED)

    async def report_lost(self, card_id: str) -> None:
        """Suspend a lost card at once: every session of it ends, no login until it is unlocked."""
        await self._set_state(card_id, CardState.SUSPENDED)

    async def unlock(self, card_id: str, token: str, new_pin: str) -> None:
        """At the counter: the person's portal ``token`` (from the My Number they show) must be the card's;
        the card becomes ACTIVE with ``new_pin`` and no wrong PINs counted."""
        validate_pin(new_pin)
        salt = secrets.token_bytes(16)
        digest = await asyncio.to_thread(pin_hash, new_pin, salt)
        async with self.pool.acquire() as conn, conn.transaction():
            held = await conn.fetchval("SELECT token FROM portal_people WHERE card_id = $1 FOR UPDATE", card_id)
            if held is None:
                raise Rejection(Reason.UNKNOWN_CARD, "no card with this id was issued")
            if not hmac.compare_digest(held.encode(), token.encode()):
                raise Rejection(Reason.NOT_CARD_HOLDER, "the My Number shown is not the card holder's; "
                                                        "the card stays as it was")
            await conn.execute("UPDATE portal_people SET pin_salt = $2, pin_hash = $3, failed = 0, state = 'ACTIVE', "
                               "state_changed_at = now() WHERE card_id = $1", card_id, salt, digest)

    async def state(self, card_id: str) -> tuple[CardState, int] | None:
        """``(state, wrong PINs counted)`` of an issued card; None when the id names no card (ops use only)."""
        row = await self.pool.fetchrow("SELECT state, failed FROM portal_people WHERE card_id = $1", card_id)
        return None if row is None else (CardState(row["state"]), row["failed"])


def _card_key(card_id: str) -> bytes:
    return hashlib.sha256(b"renkei portal card id|" + card_id.encode()).digest()


__all__ = ["MAX_PIN_TRIES", "CardState", "CardStore", "Login", "pin_hash", "validate_card_id", "validate_pin"]
