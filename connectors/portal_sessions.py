"""Portal sessions: a random 256-bit cookie, stored only as its SHA-256, ended by time, logout or the card.

- The cookie value is ``secrets.token_urlsafe(32)``; ``portal_sessions`` keeps
  ``SHA-256(value)``, so a copy of the database opens no session.
- A session ends after :data:`IDLE_LIMIT` without a request, at
  :data:`ABSOLUTE_LIMIT` after login whatever happens, at logout, and at once
  when its card is locked or reported lost (:func:`end_sessions`; the lookup
  also requires the card to be ACTIVE, so a lock ends them even mid-request).
- Every state-changing request carries the session's CSRF token
  (:func:`csrf_token`: an HMAC of the cookie value, so nothing more is stored)
  in the ``X-CSRF-Token`` header; the page reads it from ``/api/me`` (same
  origin only).  The cookie itself is HttpOnly, SameSite=Strict, and Secure
  when served over TLS (``connectors.portal``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

IDLE_LIMIT = timedelta(minutes=15)
ABSOLUTE_LIMIT = timedelta(hours=2)


def session_hash(value: str) -> bytes:
    """What the database keeps of a session cookie."""
    return hashlib.sha256(value.encode()).digest()


def csrf_token(value: str) -> str:
    """The CSRF token of the session whose cookie is ``value`` (derived, never stored)."""
    mac = hmac.new(value.encode(), b"renkei portal csrf v1", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def csrf_matches(value: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(csrf_token(value), presented)


@dataclass(frozen=True)
class Session:
    """A live session: whose card, the person's portal token, when it started."""

    card_id: str
    token: str
    created_at: datetime


async def end_sessions(conn: Any, card_id: str) -> int:
    """End every session of ``card_id`` (its card was locked or reported lost); the number ended."""
    done = await conn.execute("DELETE FROM portal_sessions WHERE card_id = $1", card_id)
    return int(done.split()[-1])


class Sessions:
    """Open, find (and keep alive), close and purge sessions in the portal's database."""

    def __init__(self, pool: Any, *, idle: timedelta = IDLE_LIMIT, absolute: timedelta = ABSOLUTE_LIMIT) -> None:
        self.pool = pool
        self.idle, self.absolute = idle, absolute

    async def open(self, conn: Any, card_id: str) -> str:
        """A new session for ``card_id`` in ``conn``'s transaction; returns the cookie value (never stored)."""
        value = secrets.token_urlsafe(32)
        await conn.execute("INSERT INTO portal_sessions (session_hash, card_id) VALUES ($1, $2)",
                           session_hash(value), card_id)
        return value

    async def find(self, value: str | None) -> Session | None:
        """The live session of cookie ``value`` (its idle clock restarts), or None: unknown, expired, card unusable."""
        if not value:
            return None
        row = await self.pool.fetchrow(
            "UPDATE portal_sessions s SET last_seen_at = now() FROM portal_people p "
            "WHERE s.session_hash = $1 AND p.card_id = s.card_id AND p.state = 'ACTIVE' "
            "AND s.last_seen_at > now() - $2::interval AND s.created_at > now() - $3::interval "
            "RETURNING s.card_id, p.token, s.created_at", session_hash(value), self.idle, self.absolute)
        if row is None:
            await self.close(value)  # expired or its card locked: nothing to keep
            return None
        return Session(row["card_id"], row["token"], row["created_at"])

    async def close(self, value: str | None) -> None:
        if value:
            await self.pool.execute("DELETE FROM portal_sessions WHERE session_hash = $1", session_hash(value))

    async def purge_expired(self) -> int:
        """Delete sessions past either limit (the portal does it now and then); the number deleted."""
        done = await self.pool.execute(
            "DELETE FROM portal_sessions WHERE last_seen_at <= now() - $1::interval "
            "OR created_at <= now() - $2::interval", self.idle, self.absolute)
        return int(done.split()[-1])


__all__ = ["ABSOLUTE_LIMIT", "IDLE_LIMIT", "Session", "Sessions", "csrf_matches", "csrf_token", "end_sessions",
           "session_hash"]
