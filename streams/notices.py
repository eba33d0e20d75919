"""Notices to the person (お知らせ): the ``person.notice`` message the registry and DICJ send the portal.

The hub never reads a body, so a notice cannot be derived at the hub: the
participant that knows of the event tells the person, sealed end to end to
the portal, as the law's 登録通知 and the lookup results expect:

- the registry: every registration, change and deletion it decides (done or
  refused, whoever filed it: the person at the portal, an agency alongside a
  procedure, a bank at its counter), and every provision of the account to an
  agency (口座情報の提供);
- DICJ: every inheritance or disaster lookup result about the person.

A notice has its own correlation id (never the event's: a client awaiting the
answer to its request must not take the notice for it); the event it reports
is ``reference``.  Its subject is the sender's token for the person, which the
hub translates into the portal's.  The account is masked here, at the sender:
the full account number never reaches the portal.  Who may send one is
``infra.domain.senders`` (registry or DICJ → portal) and the policy's ``notice.*``
rules; a notice makes no provision record (the event it reports has its own).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from infra.crypto.envelope import Message
from infra.domain.policy import DATA_PERSON_NOTICE
from schemas import types as msg

PORTAL_ID = "portal"
LAST_DIGITS = 3
"""How many digits of the account number a notice (and the portal) shows."""


def masked(account: dict[str, Any] | None) -> dict[str, str] | None:
    """The account as its holder sees it on the portal: everything but the account number's first digits."""
    if account is None:
        return None
    return {"bank_code": account["bank_code"], "branch_code": account["branch_code"],
            "account_type": account["account_type"],
            "number_last_digits": account["account_number"][-LAST_DIGITS:],
            "holder_kana": account["holder_kana"]}


def notice(*, kind: str, event: str, status: str, subject: str, reference: str, basis: str,
           detail: str | None = None, party: str | None = None, procedure_code: str | None = None,
           purpose: str | None = None, account: dict[str, Any] | None = None,
           bank_codes: Iterable[str] = (), occurred_at: datetime | None = None) -> Message:
    """A ``person.notice`` to the portal about the person ``subject`` (the sender's token), under ``basis``.

    ``account`` is the full account as the sender holds it; it is masked here.
    """
    body = {"kind": kind, "event": event, "status": status, "detail": detail, "party": party,
            "procedure_code": procedure_code, "purpose": purpose, "account": masked(account),
            "bank_codes": sorted(set(bank_codes)), "reference": str(reference),
            "occurred_at": occurred_at or datetime.now(UTC)}
    return Message(body=body, type=msg.NOTICE, to=PORTAL_ID, subject=subject, data_item=DATA_PERSON_NOTICE,
                   basis=basis, correlation_id=str(uuid.uuid4()))


__all__ = ["LAST_DIGITS", "PORTAL_ID", "masked", "notice"]
