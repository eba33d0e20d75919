"""What the person reads, as JSON: participants by name, the masked account, requests, notices, records.

Shared by the portal's API (``connectors.portal``) and the person's commands
(``renkei portal notices|records``), so the page and the terminal say the
same.  Names come from the participants file (``name`` and ``name_ja``); a
participant id the file does not know is shown as it is.
"""

from __future__ import annotations

import json
from typing import Any

from infra.domain.participants import Participants

STATES = {"SENT": "PENDING", "DONE": "CONFIRMED"}
"""A request's stored status → what the page shows: PENDING (the bank is checking), CONFIRMED, else REFUSED."""


def names(participants: Participants, pid: str | None) -> dict[str, str] | None:
    """``{"ja": …, "en": …}`` for a participant id (None for None)."""
    if pid is None:
        return None
    p = participants.get(pid)
    if p is None:
        return {"ja": pid, "en": pid}
    return {"ja": p.display_name("ja"), "en": p.display_name("en")}


def bank_names(participants: Participants, code: str) -> dict[str, str]:
    bank = participants.by_bank_code(code)
    return names(participants, bank.id) if bank is not None else {"ja": code, "en": code}  # type: ignore[return-value]


def account_view(participants: Participants, account: dict[str, Any] | None) -> dict[str, Any] | None:
    """A masked account with its bank's name (and who filed it, when it is the registered one)."""
    if account is None:
        return None
    out = {**account, "bank_name": bank_names(participants, account["bank_code"])}
    if "filed_by" in account:
        out["filed_by_name"] = names(participants, account["filed_by"])
    return out


def notice_view(participants: Participants, notice: dict[str, Any]) -> dict[str, Any]:
    """A stored notice with names: the other party, the account's bank, each bank a lookup found."""
    return {**notice, "party_name": names(participants, notice.get("party")),
            "account": account_view(participants, notice.get("account")),
            "banks": [{"bank_code": c, "name": bank_names(participants, c)} for c in notice.get("bank_codes") or []]}


def request_view(row: Any) -> dict[str, Any]:
    """One request the person filed here: ``state`` PENDING / CONFIRMED / REFUSED / ANSWERED (numbering),
    ``status`` as answered (a registration status, or ``REJECTED:<reason>`` from the hub), per-bank answers."""
    status = row["status"]
    state = STATES.get(status, "REFUSED")
    if row["kind"] == "numbering" and status not in ("SENT",) and not status.startswith("REJECTED"):
        state = "ANSWERED"
    banks = row["banks"]
    return {"request_id": str(row["correlation_id"]), "kind": row["kind"], "status": status, "state": state,
            "detail": row["detail"], "banks": json.loads(banks) if isinstance(banks, str) else banks,
            "created_at": row["created_at"].isoformat(),
            "answered_at": row["answered_at"] and row["answered_at"].isoformat()}


def named_records(participants: Participants, view: dict[str, Any]) -> dict[str, Any]:
    """``connectors.portal.records_view`` with each record's requester and provider by name."""
    return {**view, "records": [{**r, "requester_name": names(participants, r["requester"]),
                                 "provider_name": names(participants, r["provider"])} for r in view["records"]]}


__all__ = ["STATES", "account_view", "bank_names", "named_records", "names", "notice_view", "request_view"]
