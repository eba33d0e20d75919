"""The hub gateway's business step, as pure logic: verify → rate limit → authorise → translate → countersign.

``HubCore.decide`` takes a batch of raw ingress records and returns one
:class:`HubDecision` per record — accepted (with each leg's translated subject and
own ids, the policy decision and the provision-record drafts) or rejected
(with a stable reason code).  The policy sees the procedure the envelope's
signed metadata names (STEP2: UNKNOWN_PROCEDURE, PROCEDURE_NOT_ALLOWED); an
answer's record takes its status from the outcome the answering participant
signed (a provision.response that states none, or an unknown one, is refused
INVALID_FIELD).  Every leg is forwarded under ids of its own
(:mod:`infra.crypto.pseudonyms`), and records name the message, the conversation and
the person by hub-only pseudonyms, so nothing joins the ingress topic, the
inboxes and the audit topic.  It touches neither Kafka nor PostgreSQL: ``streams.hub`` wires
it to the ingress topic, claims message ids and writes provision records in
one PostgreSQL transaction, and only then calls ``HubCore.forward`` and
produces.  Nothing here can raise for a single bad record: every failure
becomes a rejection, so one poison message never stalls a partition.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from infra.core.errors import Reason, Rejection
from infra.core.tracing import TraceContext
from infra.crypto.envelope import (
    FANOUT,
    EnvelopeMeta,
    HubForwarder,
    LegIds,
    Message,
    Opener,
    Sealer,
    VerifiedEnvelope,
    Verifier,
    peek,
)
from infra.crypto.pseudonyms import HubPseudonyms
from infra.crypto.tokens import TokenAuthority
from infra.domain.participants import Participants
from infra.domain.policy import Policy, PolicyDecision
from infra.domain.ratelimit import SenderRateLimiter
from infra.records.provisions import OUTCOME_STATUS, ProvisionStatus, RecordDraft
from schemas import codec
from schemas.types import PROVISION_RESPONSE, TOKEN_ISSUE_REQUEST, TOKEN_ISSUE_RESPONSE
from streams.lookups import fanout_leg_allowed

log = logging.getLogger("renkei.hub")

PORTAL_ID = "portal"
"""Provision records are keyed by the person's token in the portal's token space (the person reads them there)."""


@dataclass(frozen=True)
class Inbound:
    """One record read from the ingress topic."""

    value: bytes
    partition: int
    offset: int
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()  # Kafka headers; dead letters keep the ops ones


OUTCOMES = {PROVISION_RESPONSE: OUTCOME_STATUS}
"""Answer types that must state their outcome in the signed envelope -> outcome -> record status.

Only these carry an outcome; the hub cannot read a body, so this is how a record says what happened."""

_REPLY_IDS = uuid.UUID("6f0b7c52-3c1e-5d7e-9a51-52656e6b6569")


def reply_id(kind: str, inbound: Inbound, message_id: str) -> str:
    """The message id of the hub's own reply (a token answer, a rejection notice) to one ingress record.

    Derived from the record's message id and position, so a batch redelivered after a hub crash
    re-seals its replies under the same ids and the recipient's claim drops the second copy; a
    replay of the message at another offset gets its own notice.
    """
    return str(uuid.uuid5(_REPLY_IDS, f"{kind}|{message_id}|{inbound.partition}|{inbound.offset}"))


@dataclass(frozen=True, slots=True)
class Leg:
    """One copy of an accepted message, as forwarded to one recipient."""

    recipient: str
    subject: str = field(repr=False)  # the person's token in the recipient's token space
    ids: LegIds  # the leg's own message id and the recipient's correlation id


@dataclass
class HubDecision:
    """What the hub does with one ingress record: forward its legs, answer locally, or dead-letter it.

    Not the policy's verdict (:class:`infra.domain.policy.PolicyDecision`, one of its inputs): this
    one also carries the verification, rate-limit and translation outcome of the whole record.
    """

    inbound: Inbound
    meta: EnvelopeMeta | None = None  # the verified envelope's routing fields (``verified.meta``)
    verified: VerifiedEnvelope | None = field(default=None, repr=False)  # what the forwarder countersigns
    reason: Reason | None = None  # None = accepted
    detail: str = ""
    legs: list[Leg] = field(default_factory=list)
    records: list[RecordDraft] = field(default_factory=list)
    local: bool = False  # addressed to the hub itself (token issuance)
    unverified: EnvelopeMeta | None = None  # what a refused envelope claims about itself (dead-letter metadata only)
    trace: TraceContext | None = None  # the W3C trace it belongs to (infra.core.tracing; set by the hub worker)

    @property
    def accepted(self) -> bool:
        return self.reason is None

    def reject(self, reason: Reason, detail: str) -> HubDecision:
        self.reason, self.detail, self.legs, self.records = reason, detail, [], []
        return self


class HubCore:
    """Everything the hub decides about an envelope, without I/O."""

    def __init__(
        self,
        *,
        verifier: Verifier,
        forwarder: HubForwarder,
        policy: Policy,
        participants: Participants,
        tokens: TokenAuthority,
        hub_id: str = "hub",
        opener: Opener | None = None,
        sealer: Sealer | None = None,
        limiter: SenderRateLimiter | None = None,
        pseudonyms: HubPseudonyms | None = None,
    ) -> None:
        self.verifier = verifier
        self.forwarder = forwarder
        self.policy = policy
        self.participants = participants
        self.tokens = tokens
        self.hub_id = hub_id
        self.opener = opener  # the hub's own inbox: only token issuance is addressed to it
        self.sealer = sealer
        self.limiter = limiter  # per verified sender: one participant cannot starve the others
        self.pseudonyms = pseudonyms or HubPseudonyms.of(tokens)  # legs' ids, records' ids, the audit key

    def decide(self, batch: list[Inbound]) -> list[HubDecision]:
        return [self._decide_one(item) for item in batch]

    def _decide_one(self, item: Inbound) -> HubDecision:
        decision = HubDecision(item)
        try:
            verified = self.verifier.verify(item.value)
            decision.verified, decision.meta = verified, verified.meta
            meta = verified.meta
            if self.limiter is not None and not self.limiter.allow(meta.sender):
                raise Rejection(Reason.RATE_LIMITED, f"more than {self.limiter.rate_per_s:g} messages per second "
                                                     "from this sender; send it again later")
            sender = self.participants.get(meta.sender)
            if meta.recipient == self.hub_id:
                self.policy.authorise(sender, self.participants.get(self.hub_id), meta.type, meta.data_item,
                                      meta.legal_basis, meta.procedure)
                decision.local = True
                return decision
            status = _answer_status(meta)
            fanout = meta.recipient == FANOUT
            recipients = list(meta.recipients) if fanout else [meta.recipient]
            allowed: list[tuple[str, PolicyDecision]] = []
            for recipient_id in recipients:
                recipient = self.participants.get(recipient_id)
                if fanout and not fanout_leg_allowed(self.policy, meta.type, recipient):
                    continue  # a suspended or non-participating bank's leg is dropped, not the whole fan-out
                allowed.append((recipient_id, self.policy.authorise(sender, recipient, meta.type, meta.data_item,
                                                                    meta.legal_basis, meta.procedure)))
            if not allowed:
                raise Rejection(Reason.SUSPENDED, "no recipient of this fan-out may receive it "
                                                  "(suspended or not participating)")
            # One decryption of the sender's token for every leg and the portal's record key.
            recipients = [r for r, _ in allowed]
            *subjects, person = self.tokens.translate_many(meta.subject, meta.sender, recipients + [PORTAL_ID])
            legs = self.pseudonyms.legs(meta.message_id, meta.correlation_id, meta.sender, recipients)
            record = _Recorded(self.pseudonyms.record_message_id(meta.message_id),
                               self.pseudonyms.conversation(meta.correlation_id, meta.sender), person,
                               self.pseudonyms.person(person))
            for (recipient_id, verdict), subject, ids in zip(allowed, subjects, legs, strict=True):
                decision.legs.append(Leg(recipient_id, subject, ids))
                if verdict.records:
                    decision.records.append(_draft(meta, recipient_id, record, verdict, status))
        except Rejection as exc:
            if decision.meta is None:
                try:  # metadata for the dead letter, so ops can find it; never trusted for routing
                    decision.unverified = peek(item.value)
                except Rejection:
                    pass
            return decision.reject(exc.reason, exc.message)
        except Exception as exc:  # a bug must dead-letter the message, not stall the partition
            log.exception("unexpected error deciding an ingress record at partition %s offset %s",
                          item.partition, item.offset)
            return decision.reject(Reason.INTERNAL_ERROR, f"unexpected {type(exc).__name__} in the hub")
        return decision

    def answer_local(self, decisions: list[HubDecision]) -> tuple[list[tuple[str, str, bytes]], list[HubDecision]]:
        """Answer envelopes addressed to the hub (token issuance, 符号取得). Returns answers and failures."""
        answers: list[tuple[str, str, bytes]] = []
        failed: list[HubDecision] = []
        messages: list[Message] = []
        for d in decisions:
            if not (d.accepted and d.local):
                continue
            assert d.meta is not None
            try:
                if d.meta.type != TOKEN_ISSUE_REQUEST or self.opener is None:
                    raise Rejection(Reason.UNAUTHORISED, f"the hub does not answer {d.meta.type}")
                body = self.opener.receive(d.inbound.value).body  # verified again as addressed to the hub
                token = self.tokens.issue(codec.encode("token_issue_request", body), d.meta.sender)
            except Rejection as exc:
                failed.append(d.reject(exc.reason, exc.message))
                continue
            messages.append(Message(
                body={"token": token.encode(), "local_ref": body["local_ref"], "issued_at": datetime.now(UTC)},
                type=TOKEN_ISSUE_RESPONSE, to=d.meta.sender, subject=token, data_item=d.meta.data_item,
                basis=d.meta.legal_basis, correlation_id=d.meta.correlation_id,
                message_id=reply_id("token-answer", d.inbound, d.meta.message_id)))
        if messages and self.sealer is not None:
            for m, envelope in zip(messages, self.sealer.seal_batch(messages), strict=True):
                answers.append((m.to, m.subject, envelope))
        return answers, failed

    def forward(self, decisions: list[HubDecision]) -> list[tuple[str, str, bytes]]:
        """Countersign every accepted leg in one batch: ``(recipient, key, envelope bytes)``."""
        items, targets = [], []
        for d in decisions:
            if not d.accepted or d.local:
                continue
            assert d.verified is not None and d.meta is not None
            for leg in d.legs:
                items.append((d.verified, leg.subject, leg.recipient if d.meta.recipient == FANOUT else None, leg.ids))
                targets.append((leg.recipient, leg.subject))
        envelopes = self.forwarder.forward_batch(items) if items else []
        return [(r, s, e) for (r, s), e in zip(targets, envelopes, strict=True)]


@dataclass(frozen=True, slots=True)
class _Recorded:
    """How a message's provision records name it: hub-only ids (infra.crypto.pseudonyms), the person's two keys."""

    message_id: uuid.UUID
    conversation: uuid.UUID
    person_token: str  # the portal's token: the chain's key in the hub's database
    person: str  # its pseudonym: what the hash covers and the audit topic is keyed by


def _answer_status(meta: EnvelopeMeta) -> ProvisionStatus | None:
    """The record status an answer's signed outcome gives, or None for a message that states no outcome."""
    statuses = OUTCOMES.get(meta.type)
    if statuses is None:
        if meta.outcome is not None:
            raise Rejection(Reason.INVALID_FIELD, f"outcome: {meta.type} carries no outcome")
        return None
    status = statuses.get(meta.outcome) if meta.outcome is not None else None
    if status is None:
        raise Rejection(Reason.INVALID_FIELD, f"outcome: {meta.type} must state one of "
                                              f"{', '.join(statuses)} in its signed envelope")
    return status


def _draft(meta: EnvelopeMeta, recipient: str, recorded: _Recorded, verdict: PolicyDecision,
           status: ProvisionStatus | None) -> RecordDraft:
    """A provision record for one leg; the policy says whether the sender is the requester or the provider.

    An answer is PROVIDED unless its signed outcome says otherwise (NOT_REGISTERED, BLOCKED: nothing was
    provided, so no provided_at).
    """
    answer = verdict.sender_role == "provider"
    if answer:
        status = status or ProvisionStatus.PROVIDED
    else:
        status = ProvisionStatus.REQUESTED
    return RecordDraft(
        message_id=recorded.message_id,
        correlation_id=recorded.conversation,
        person_token=recorded.person_token,
        person=recorded.person,
        requester=recipient if answer else meta.sender,
        provider=meta.sender if answer else recipient,
        data_item=meta.data_item,
        legal_basis=meta.legal_basis,
        requested_at=meta.created_at,
        provided_at=meta.created_at if status is ProvisionStatus.PROVIDED else None,
        status=status,
        not_disclosed=verdict.not_disclosed,
        procedure=verdict.procedure.code if verdict.procedure is not None else None,
    )
