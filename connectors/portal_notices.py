"""Notices to the person (お知らせ) as the portal keeps them, and the registered account they last showed.

The registry and DICJ send ``person.notice`` messages (:mod:`streams.notices`);
the portal's handler stores each one under the person's portal token, once
(keyed by message id, in the runtime's claim transaction).  A REGISTRATION
notice with status DONE also moves the person's registered account as the
portal shows it (``portal_accounts``: REGISTER / CHANGE set it, DELETE clears
it; an older notice never overwrites a newer one), whoever filed the change —
the person here, an agency alongside a procedure, or a bank at its counter.
A ``numbering.result`` DICJ sends the portal about a numbering filed at a
bank becomes a NUMBERING notice here too.

What a notice says (the masked account, the agency, the banks) is personal:
it is stored sealed (AES-256-GCM under the portal's notice key, a key-store
secret outside PostgreSQL, bound to the token and the message id); only the
kind and the times are in the clear, to list and count them.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from infra.core.settings import Settings
from infra.crypto.sealing import open_sealed, seal
from infra.platform.keystore import KeyStore

NOTICE_KEY = "portal-notices"
"""Name of the key-store secret that seals notices and the shown account."""
KINDS = ("REGISTRATION", "PROVISION", "LOOKUP", "NUMBERING")


class NoticeVault:
    """Seal and open what the portal keeps about a person, bound to the token and the row it belongs to."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def for_settings(cls, settings: Settings) -> NoticeVault:
        return cls(KeyStore.for_settings(settings).secret(NOTICE_KEY))

    def seal(self, token: str, where: str, content: dict[str, Any]) -> bytes:
        return seal(self._key, json.dumps(content, sort_keys=True, ensure_ascii=False).encode(), _aad(token, where))

    def open(self, token: str, where: str, sealed: bytes) -> dict[str, Any]:
        return json.loads(open_sealed(self._key, sealed, _aad(token, where)))


def _aad(token: str, where: str) -> bytes:
    return b"renkei portal|" + where.encode() + b"|" + token.encode()


def numbering_notice(body: dict[str, Any], correlation_id: str) -> dict[str, Any]:
    """A NUMBERING notice from DICJ's consolidated ``numbering.result`` (a numbering filed at a bank)."""
    return {"kind": "NUMBERING", "event": "NUMBERING", "status": "DONE", "detail": None, "party": "dicj",
            "procedure_code": None, "purpose": None, "account": None,
            "bank_codes": sorted(o["bank_code"] for o in body["outcomes"] if o["status"] == "LINKED"),
            "outcomes": [{"bank_code": o["bank_code"], "status": o["status"],
                          "accounts_linked": o["accounts_linked"]} for o in body["outcomes"]],
            "banks_not_answered": list(body["banks_not_answered"]), "reference": correlation_id,
            "occurred_at": body["completed_at"]}


class PortalNotices:
    """The portal's notices and shown accounts (``portal_notices``, ``portal_accounts``)."""

    def __init__(self, vault: NoticeVault) -> None:
        self.vault = vault

    async def store(self, conn: Any, message_id: str, token: str, sender: str, body: dict[str, Any]) -> None:
        """Keep one notice (and move the shown account when it says so), in the caller's transaction."""
        occurred = body["occurred_at"]
        content = {k: v for k, v in body.items() if k != "occurred_at"}
        content["account"] = dict(content["account"]) if content.get("account") else None
        content["reference"] = str(content["reference"]) if content.get("reference") else None
        await conn.execute(
            "INSERT INTO portal_notices (message_id, token, sender, kind, content_ct, occurred_at) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            uuid.UUID(message_id), token, sender, body["kind"],
            self.vault.seal(token, f"notice:{message_id}", content), occurred)
        if body["kind"] == "REGISTRATION" and body["status"] == "DONE":
            await self._move_account(conn, token, None if body["event"] == "DELETE" else content["account"],
                                     occurred, content.get("party"))

    async def _move_account(self, conn: Any, token: str, account: dict | None, occurred: datetime,
                            filed_by: str | None) -> None:
        if account is None:
            await conn.execute("DELETE FROM portal_accounts WHERE token = $1 AND occurred_at <= $2", token, occurred)
            return
        shown = {**account, "filed_by": filed_by, "since": occurred.isoformat()}
        await conn.execute(
            "INSERT INTO portal_accounts (token, account_ct, occurred_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (token) DO UPDATE SET account_ct = EXCLUDED.account_ct, occurred_at = EXCLUDED.occurred_at "
            "WHERE portal_accounts.occurred_at <= EXCLUDED.occurred_at",
            token, self.vault.seal(token, "account", shown), occurred)

    async def account(self, db: Any, token: str) -> dict[str, Any] | None:
        """The registered account as the last DONE registration notice showed it (masked), or None."""
        sealed = await db.fetchval("SELECT account_ct FROM portal_accounts WHERE token = $1", token)
        return None if sealed is None else self.vault.open(token, "account", bytes(sealed))

    async def for_person(self, db: Any, token: str, *, limit: int = 50) -> list[dict[str, Any]]:
        """The person's newest notices first: the notice's fields plus ``id``, ``sender``, ``occurred_at``,
        ``received_at`` and ``read``."""
        rows = await db.fetch(
            "SELECT message_id, sender, content_ct, occurred_at, received_at, read_at FROM portal_notices "
            "WHERE token = $1 ORDER BY occurred_at DESC, received_at DESC LIMIT $2", token, limit)
        return [{**self.vault.open(token, f"notice:{r['message_id']}", bytes(r["content_ct"])),
                 "id": str(r["message_id"]), "sender": r["sender"], "occurred_at": r["occurred_at"].isoformat(),
                 "received_at": r["received_at"].isoformat(), "read": r["read_at"] is not None} for r in rows]

    @staticmethod
    async def unread(db: Any, token: str) -> int:
        return await db.fetchval("SELECT count(*) FROM portal_notices WHERE token = $1 AND read_at IS NULL", token)

    @staticmethod
    async def mark_read(db: Any, token: str) -> int:
        """Mark every notice of the person read; the number marked."""
        done = await db.execute("UPDATE portal_notices SET read_at = now() WHERE token = $1 AND read_at IS NULL",
                                token)
        return int(done.split()[-1])


__all__ = ["KINDS", "NOTICE_KEY", "NoticeVault", "PortalNotices", "numbering_notice"]
