"""Whose account it is: the registry's rules for registrations (口座登録法 §3–§6, §8), as pure functions.

The registry (``streams.registry``) wires these to its inbox; nothing here touches
Kafka or PostgreSQL.  Every decision is taken from the envelope's *verified*
sender, never from a code or a channel written inside the body:

- who may file (:func:`channel_of`): the person through the portal (§3, §6), an
  agency entitled by policy alongside another procedure (§4), or a bank at its
  counter (§8) — any other sender is refused;
- what each may do (:func:`intake`): a bank registers or changes only an account
  it holds and deletes only a registration of an account it holds; an agency
  registers or changes but never deletes; REGISTER and CHANGE always go through
  the bank's existence check (口座実在性確認);
- what the bank's answer does (:func:`check_outcome`): only CONFIRMED registers;
  anything else leaves the registry as it was (a failed CHANGE keeps the account
  registered before, so the person keeps being paid);
- who may answer (:func:`answer_refusal`): only the bank that was asked, for a
  check still open.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from infra.core.errors import Reason, Rejection
from infra.domain.participants import Kind, Participant


class Channel(str, Enum):
    """Where a registration was filed, as the registry records it (``registry_accounts.channel``)."""

    PORTAL = "PORTAL"  # the person, through the portal (§3, §6)
    ALONGSIDE_PROCEDURE = "ALONGSIDE_PROCEDURE"  # an agency, with a tax return or pension claim (§4)
    BANK_COUNTER = "BANK_COUNTER"  # the bank that holds the account (STEP3, §8)


_CHANNELS = {Kind.PORTAL: Channel.PORTAL, Kind.AGENCY: Channel.ALONGSIDE_PROCEDURE, Kind.BANK: Channel.BANK_COUNTER}


@dataclass(frozen=True)
class Refusal:
    """A registration answered at once with ``status`` (a ``RegistrationStatus``) and a reason a person can act on."""

    status: str
    detail: str


DELETE_ONLY_BY = ("a registration is deleted only by the person (portal) or by the bank that holds the "
                  "registered account")


def channel_of(sender: Participant | None) -> Channel:
    """The channel of a registration filed by the verified ``sender``; anyone else is refused (UNAUTHORISED)."""
    channel = _CHANNELS.get(sender.kind) if sender is not None else None
    if channel is None:
        who = sender.kind.value if sender is not None else "an unknown participant"
        raise Rejection(Reason.UNAUTHORISED, f"{who} does not file registrations")
    return channel


def intake(channel: Channel, operation: str, *, sender_bank_code: str | None, account_bank_code: str | None,
           account_bank_known: bool, registered_bank_code: str | None) -> Refusal | None:
    """None when the request goes on (REGISTER / CHANGE: to the existence check; DELETE: done), else why not.

    ``registered_bank_code``: the bank of the account registered now (None: nothing registered).
    """
    if operation == "DELETE":
        if channel is Channel.ALONGSIDE_PROCEDURE:
            return Refusal("REFUSED", DELETE_ONLY_BY)
        if registered_bank_code is None:
            return Refusal("NOT_REGISTERED", "nothing is registered")
        if channel is Channel.BANK_COUNTER and registered_bank_code != sender_bank_code:
            return Refusal("REFUSED", "a bank may delete only a registration of an account it holds; "
                                      + DELETE_ONLY_BY)
        return None
    if channel is Channel.BANK_COUNTER and account_bank_code != sender_bank_code:
        return Refusal("REFUSED", "a bank may register only its own accounts")
    if not account_bank_known:
        return Refusal("ACCOUNT_NOT_FOUND", "no participating bank has this bank code")
    return None


FAILED_CHECKS = frozenset({"ACCOUNT_NOT_FOUND", "HOLDER_MISMATCH", "NOT_HOLDER", "ACCOUNT_CLOSED"})


def check_outcome(result: str, *, registered_before: bool) -> tuple[bool, str, str | None]:
    """``(register it, RegistrationStatus, detail)`` for the bank's existence answer ``result``.

    Only CONFIRMED registers.  A failed check stores nothing — not even BLOCKED: the account
    may be someone else's — and what was registered before stays registered.
    """
    if result == "CONFIRMED":
        return True, "DONE", None
    kept = "the account registered before stays registered" if registered_before else None
    if result in FAILED_CHECKS:
        return False, result, kept
    return False, "REFUSED", "the bank's answer could not be read" + (f"; {kept}" if kept else "")


def answer_refusal(*, asked: str | None, answered_by: str, outcome: str | None) -> Rejection | None:
    """Why an existence answer is not accepted, or None: it must come from the bank that was asked
    (the verified sender) for a check still open (``outcome`` None)."""
    if asked is None:
        return Rejection(Reason.UNSOLICITED, "no existence check with this correlation id was asked")
    if answered_by != asked:
        return Rejection(Reason.UNSOLICITED, f"existence answer from {answered_by}, but {asked} was asked")
    if outcome == "TIMEOUT":
        return Rejection(Reason.EXPIRED, "the existence check had expired (TIMEOUT was answered) before this answer")
    if outcome is not None:
        return Rejection(Reason.REPLAYED, "this existence check was answered already")
    return None


__all__ = ["Channel", "DELETE_ONLY_BY", "FAILED_CHECKS", "Refusal", "answer_refusal", "channel_of", "check_outcome",
           "intake"]
