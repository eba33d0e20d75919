"""What a bank's channel is asked and told about numbering and lookups, shared by the file and HTTP channels.

A bank connector passes these on to the bank's own systems and brings back their answers:

- **questions** (the bank answers them): an existence check (口座実在性確認), a lookup
  (相続時・災害時照会, a reminder of one included) and a numbering request (付番申出)
  passed on by DICJ or filed on the portal.  The delivery's payload names the
  person as the bank knows them (its token, and its customer reference when the
  person was enrolled through this channel) and what is asked; the bank's answer
  comes back through :meth:`connectors.runtime.ConnectorRuntime.answer`.
- **notices** (the bank is told): DICJ's consolidated numbering result for a request
  the bank filed at its counter, and DICJ's notification about a lookup application
  the bank took; they are matched to the bank's own request by its reference.

The bank's answers are validated here, once for both channels: a lookup answer's
accounts must be this bank's (:func:`lookup_answer`), a numbering outcome one of
``LINKED`` (with at least one account), ``NO_ACCOUNT`` or ``REFUSED`` (with none)
(:func:`numbering_outcome`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from connectors.runtime import ConnectorRuntime
from infra.core.errors import ValidationError
from infra.domain.validation import validate_bank_account
from schemas import types as msg
from streams.participant import Context

__all__ = ["LOOKUP_KINDS", "NOTICES", "NUMBERING_STATUSES", "QUESTIONS", "lookup_answer", "notice_payload",
           "numbering_ack", "numbering_outcome", "question_payload"]

LOOKUP_KINDS = {msg.LOOKUP_INHERITANCE: "INHERITANCE", msg.LOOKUP_DISASTER: "DISASTER"}
QUESTIONS = frozenset({msg.EXISTENCE_CHECK, msg.NUMBERING_REQUEST, *LOOKUP_KINDS})
NOTICES = frozenset({msg.NUMBERING_RESULT, msg.LOOKUP_NOTIFICATION})
NUMBERING_STATUSES = ("LINKED", "NO_ACCOUNT", "REFUSED")
MAX_ACCOUNTS = 100
"""Accounts one bank may report in one lookup answer."""


async def question_payload(ctx: Context) -> dict[str, Any]:
    """What the channel asks the bank about ``ctx``'s message (a type of :data:`QUESTIONS`)."""
    b = ctx.body
    payload: dict[str, Any] = {"customer_ref": await ConnectorRuntime.local_id_of(ctx.conn, ctx.me, ctx.meta.subject)}
    if ctx.meta.type == msg.EXISTENCE_CHECK:
        return payload | {"account": b["account"]}
    if ctx.meta.type == msg.NUMBERING_REQUEST:
        return payload | {"channel": b["channel"], "receiving_bank_code": b.get("receiving_bank_code")}
    return payload | {"kind": LOOKUP_KINDS[ctx.meta.type], "reminder": b.get("reminder", 0),
                      "deadline": b["deadline"].isoformat(), "receiving_bank_code": b.get("receiving_bank_code"),
                      "disaster_id": b.get("disaster_id")}


def notice_payload(ctx: Context) -> dict[str, Any]:
    """What the channel tells the bank of ``ctx``'s message (a type of :data:`NOTICES`): no person, no account."""
    b = ctx.body
    if ctx.meta.type == msg.NUMBERING_RESULT:
        return {"outcomes": [dict(o) for o in b["outcomes"]], "banks_not_answered": list(b["banks_not_answered"])}
    return {"kind": b["lookup_kind"], "status": b["status"], "reason": b["reason"],
            "banks_with_accounts": list(b["banks_with_accounts"]), "banks_not_answered": list(b["banks_not_answered"]),
            "banks_not_asked": list(b["banks_not_asked"]), "is_supplement": b["is_supplement"]}


def lookup_answer(bank_code: str, accounts: Any) -> dict[str, Any]:
    """A ``lookup.answer`` body from the bank's list of the person's numbered accounts (this bank's only)."""
    if not isinstance(accounts, list) or len(accounts) > MAX_ACCOUNTS:
        raise ValidationError("accounts", f"a list of at most {MAX_ACCOUNTS} accounts (empty: none)")
    checked = []
    for a in accounts:
        if not isinstance(a, dict) or a.get("bank_code", bank_code) != bank_code:
            raise ValidationError("accounts", "this bank's accounts only: branch_code, account_type, "
                                              "account_number, holder_kana")
        checked.append(validate_bank_account({**a, "bank_code": bank_code}, field="accounts"))
    return {"bank_code": bank_code, "accounts": checked, "answered_at": datetime.now(UTC)}


def numbering_outcome(status: Any, linked: Any, *, field: str = "status") -> tuple[str, int]:
    """``(status, accounts linked)`` of a bank's numbering: LINKED with at least one account, else none."""
    if status not in NUMBERING_STATUSES:
        raise ValidationError(field, f"one of {', '.join(NUMBERING_STATUSES)}")
    try:
        count = int(linked)
    except (TypeError, ValueError):
        raise ValidationError("accounts_linked", "a whole number") from None
    if isinstance(linked, bool) or count < 0 or (count == 0) == (status == "LINKED"):
        raise ValidationError("accounts_linked", "at least 1 with LINKED, 0 otherwise")
    return status, count


def numbering_ack(bank_code: str, status: Any, linked: Any) -> dict[str, Any]:
    """A ``numbering.ack`` body from the bank's outcome."""
    status, count = numbering_outcome(status, linked)
    return {"bank_code": bank_code, "status": status, "accounts_linked": count, "acknowledged_at": datetime.now(UTC)}
