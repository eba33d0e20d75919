"""番号変更: a person's tokens survive the replacement of their My Number.

A My Number that leaked may be replaced (番号法 §7-2).  The real system
derives tokens from the 住民票コード, which does not change with the number;
here the person's id is the token authority's link id of the FIRST My Number
(``TokenAuthority.link_id``), and a number change is one row of
``identity_relinks`` in the hub's schema:

- ``retired_key`` — a keyed hash of the replaced number: token issuance for
  it is refused from then on (NUMBER_RETIRED), so a leaked number is useless;
- ``current_key`` — a keyed hash of the new number: token issuance for it
  answers the person's existing tokens (the same for every participant as
  before), so their registration, numbering and provision records follow;
- ``person`` — the person's id, sealed (AES-SIV) under a hub secret.

No number is stored: both keys are HMAC-SHA256 under a secret derived from
the token authority's master secret (``TokenAuthority.hub_secret``), so the
table is useless without the hub's keys.  A second change (B → C) retires B
and links C to the same person; a number is retired once and linked once.

Who may write a row: only ``renkei identity relink`` (:mod:`infra.cli.identity_cli`),
which needs the token authority's secret (the hub's key store and its
passphrase) and the hub's PostgreSQL role — the hub's operator, acting on
J-LIS's notification of the change (the J-LIS stand-in is outside the
platform's trust: the platform never takes a number change from the bus or
from a participant).  Every change is audited (the ops audit trail, before it
commits).  The hub reads the table before answering token requests
(:meth:`NumberChanges.refresh`, incremental), so a change applies to every
token request the hub takes after it commits.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from infra.core.errors import Reason, Rejection
from infra.domain.validation import validate_my_number

__all__ = ["IDENTITY_MIGRATIONS", "NumberChanges", "Relink"]

IDENTITY_MIGRATIONS = [
    """
    CREATE TABLE identity_relinks (
        id          bigserial PRIMARY KEY,
        retired_key bytea NOT NULL UNIQUE,
        current_key bytea NOT NULL UNIQUE,
        person      bytea NOT NULL,
        via         text NOT NULL CHECK (via IN ('operator', 'jlis-notice')),
        notice      text,
        actor       text NOT NULL,
        reason      text NOT NULL,
        audit_id    uuid NOT NULL,
        relinked_at timestamptz NOT NULL DEFAULT now()
    );
    """,
]
"""Component ``hub-identity``, in the hub's schema (the hub migrates it; the relink command writes it)."""

_KEY_LABEL = "identity number key"
_SEAL_LABEL = "identity person seal"


@dataclass(frozen=True)
class Relink:
    """One number change as stored: the two keyed hashes and the sealed person id."""

    retired_key: bytes
    current_key: bytes
    person: bytes  # sealed


class NumberChanges:
    """The number changes the hub applies at token issuance, kept in memory and refreshed from the table.

    ``authority`` is the hub's :class:`~infra.crypto.tokens.TokenAuthority` (its secrets key the hashes).
    """

    def __init__(self, authority: Any) -> None:
        self._authority = authority
        self._key = authority.hub_secret(_KEY_LABEL)
        self._seal = AESSIV(authority.hub_secret(_SEAL_LABEL))
        self._retired: set[bytes] = set()
        self._current: dict[bytes, bytes] = {}  # current_key → sealed person
        self._last_id = 0

    def __repr__(self) -> str:
        return f"NumberChanges({len(self._current)} change(s))"

    def number_key(self, my_number: str) -> bytes:
        """The keyed hash the table knows a number by (never the number)."""
        return hmac.new(self._key, validate_my_number(my_number).encode("ascii"), hashlib.sha256).digest()

    def apply(self, rows: list[Any]) -> None:
        """Take rows of ``identity_relinks`` (``id, retired_key, current_key, person``), in id order."""
        for r in rows:
            self._retired.add(bytes(r["retired_key"]))
            self._current.pop(bytes(r["retired_key"]), None)
            self._current[bytes(r["current_key"])] = bytes(r["person"])
            self._last_id = max(self._last_id, r["id"])

    async def refresh(self, db: Any) -> None:
        """Read the changes committed since the last refresh (one indexed query)."""
        self.apply(await db.fetch("SELECT id, retired_key, current_key, person FROM identity_relinks "
                                  "WHERE id > $1 ORDER BY id", self._last_id))

    def resolve(self, my_number: str) -> bytes | None:
        """The person id of a number that replaced another, None for a number never changed.

        Raises :class:`Rejection` NUMBER_RETIRED for a replaced number (the message names no number).
        """
        key = self.number_key(my_number)
        if key in self._retired:
            raise Rejection(Reason.NUMBER_RETIRED, "this My Number was replaced (番号変更): use the person's "
                                                   "current number")
        sealed = self._current.get(key)
        if sealed is None:
            return None
        try:
            return self._seal.decrypt(sealed, [b"person", key])
        except InvalidTag:  # a row not sealed by this authority: refuse rather than guess the person
            raise Rejection(Reason.INTERNAL_ERROR, "a number change does not open under the hub's keys") from None

    def person_of(self, my_number: str) -> bytes:
        """The person's id: the link id of their first number, through every change since."""
        return self.resolve(my_number) or self._authority.link_id(my_number)

    def relink(self, old: str, new: str) -> Relink:
        """The row that moves ``old``'s person to ``new``: ``old`` must resolve (not retired), ``new`` be unknown.

        Raises :class:`Rejection` NUMBER_RETIRED (``old`` was replaced already) or NUMBER_IN_USE (``new`` is
        linked already, or is ``old``).
        """
        person = self.person_of(old)  # NUMBER_RETIRED for a number replaced before
        new_key = self.number_key(new)
        if new_key in self._retired or new_key in self._current or new_key == self.number_key(old):
            raise Rejection(Reason.NUMBER_IN_USE, "the new My Number is already linked to a person (or is the old "
                                                  "one)")
        return Relink(self.number_key(old), new_key, self._seal.encrypt(person, [b"person", new_key]))
