"""Who may send each message type: the receivers' own table (docs/security.md, "Who may send what").

The hub's policy (``infra/domain/policy.toml``) decides what the hub forwards; this
table is what every *receiver* enforces on what it opens, whatever the hub
did.  It is code, not configuration, so a hub operator who edits the policy
or holds the hub's keys still cannot make a registry answer the hub, or a
bank take a lookup from an agency.

Two ways a message may arrive:

* **forwarded** — a participant sealed it and the hub countersigned it on the
  way: the ORIGIN sender's kind and the recipient's kind must be one of the
  type's ``routes``.  Messages addressed to the hub itself (token issuance)
  arrive directly and follow the same routes.
* **from the hub itself** — the hub's own answers (token issuance, lookup
  results, rejection notices): the sender must be exactly the hub's
  participant id and the recipient's kind one of ``from_hub``.  The hub
  originates nothing else: a provision inquiry or a registration "from the
  hub" is refused even when it carries a valid hub countersignature.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from infra.core.errors import Reason
from infra.domain.participants import Kind, Participants
from schemas import types as msg

__all__ = ["SENDERS", "SenderRule", "refusal"]

AGENCY, REGISTRY, BANK, PORTAL, DICJ, HUB = Kind.AGENCY, Kind.REGISTRY, Kind.BANK, Kind.PORTAL, Kind.DICJ, Kind.HUB
_PARTICIPANT_KINDS = frozenset(k for k in Kind if k is not HUB)


@dataclass(frozen=True, slots=True)
class SenderRule:
    """Who may send one message type, and to whom."""

    routes: frozenset[tuple[Kind, Kind]] = frozenset()  # (origin sender kind, recipient kind)
    from_hub: frozenset[Kind] = frozenset()  # recipient kinds the hub itself sends this type to


def _rule(*routes: tuple[Kind, Kind], from_hub: frozenset[Kind] = frozenset()) -> SenderRule:
    return SenderRule(frozenset(routes), frozenset(from_hub))


SENDERS: Mapping[str, SenderRule] = MappingProxyType({
    # STEP1 / §4 / STEP3: the portal, an agency alongside another procedure (which agencies: the policy),
    # or the bank that holds the account at its counter (口座登録法 §3, §4, §6, §8); no DICJ relay
    msg.REGISTRATION_REQUEST: _rule((PORTAL, REGISTRY), (AGENCY, REGISTRY), (BANK, REGISTRY)),
    msg.REGISTRATION_RESULT: _rule((REGISTRY, PORTAL), (REGISTRY, AGENCY), (REGISTRY, BANK)),
    msg.EXISTENCE_CHECK: _rule((REGISTRY, BANK)),  # 口座実在性確認
    msg.EXISTENCE_ANSWER: _rule((BANK, REGISTRY)),
    # STEP2 (口座登録法 §9)
    msg.PROVISION_INQUIRY: _rule((AGENCY, REGISTRY)),
    msg.PROVISION_RESPONSE: _rule((REGISTRY, AGENCY)),
    # 付番申出 (口座管理法 §3): at the portal (to one bank, or through DICJ for several), or at one bank
    # passed on through DICJ
    msg.NUMBERING_REQUEST: _rule((PORTAL, BANK), (PORTAL, DICJ), (BANK, DICJ), (DICJ, BANK)),
    msg.NUMBERING_ACK: _rule((BANK, PORTAL), (BANK, BANK), (BANK, DICJ)),
    msg.NUMBERING_RESULT: _rule((DICJ, PORTAL), (DICJ, BANK)),
    # 相続時・災害時照会: the applicant applies at a bank (an heir: only there) or, in a declared disaster, at the
    # portal; DICJ asks the banks, the hub gathers who answered, DICJ answers the channel that applied
    msg.LOOKUP_APPLICATION_INHERITANCE: _rule((BANK, DICJ)),
    msg.LOOKUP_APPLICATION_DISASTER: _rule((BANK, DICJ), (PORTAL, DICJ)),
    msg.LOOKUP_NOTIFICATION: _rule((DICJ, BANK), (DICJ, PORTAL)),
    msg.LOOKUP_INHERITANCE: _rule((DICJ, BANK)),
    msg.LOOKUP_DISASTER: _rule((DICJ, BANK)),
    msg.LOOKUP_ANSWER: _rule((BANK, DICJ)),
    msg.LOOKUP_RESULT: _rule(from_hub=frozenset({DICJ})),
    # お知らせ to the person, read on the portal: from whoever knows of the event (the registry of
    # registrations and provisions, DICJ of lookup results); never from an agency, a bank or the hub
    msg.NOTICE: _rule((REGISTRY, PORTAL), (DICJ, PORTAL)),
    # the network itself: only the hub answers these
    msg.REJECTION_NOTICE: _rule(from_hub=_PARTICIPANT_KINDS),
    msg.TOKEN_ISSUE_REQUEST: _rule(*((k, HUB) for k in sorted(_PARTICIPANT_KINDS))),
    msg.TOKEN_ISSUE_RESPONSE: _rule(from_hub=_PARTICIPANT_KINDS),
})
"""Message type -> :class:`SenderRule`. Every type of ``schemas.types.BODY_SCHEMA`` is listed (a test checks)."""


def refusal(type_: str, sender: str, recipient: str, participants: Participants, *,
            hub_id: str) -> tuple[Reason, str] | None:
    """Why ``sender`` may not send ``type_`` to ``recipient`` — ``(reason, message)`` — or None if it may.

    ``sender`` is the verified ORIGIN sender (never a body field); the message names ids and
    kinds only, so it is safe to log.
    """
    rule = SENDERS.get(type_)
    to = participants.get(recipient)
    if rule is None or to is None:
        return Reason.SENDER_NOT_ALLOWED, f"no participant may send {type_} to {recipient}"
    if sender == hub_id:
        if to.kind in rule.from_hub:
            return None
        return Reason.SENDER_NOT_ALLOWED, f"the hub does not originate {type_}; only a participant's message " \
                                          "forwarded by the hub may carry it"
    origin = participants.get(sender)
    if origin is None:
        return Reason.UNKNOWN_PARTICIPANT, f"sender {sender} is not a registered participant"
    if (origin.kind, to.kind) not in rule.routes:
        return Reason.SENDER_NOT_ALLOWED, f"sender kind {origin.kind.value} may not send {type_} " \
                                          f"to recipient kind {to.kind.value}"
    return None
