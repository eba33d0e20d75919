"""The crash-safety invariants of ``renkei chaos``, as pure functions over what a run observed.

:mod:`infra.tools.chaos` drives traffic while it kills workers, then collects :class:`Observations` —
the requests and their outcomes, every envelope on the wire for the run's correlations, the rows
PostgreSQL holds, the records on the audit topic and the dead letters — and hands them to
:func:`check`.  Each invariant reads those observations and nothing else, so each is unit-tested
against seeded violations (tests/unit/tools/test_chaos_invariants.py): an oracle that cannot fail proves
nothing.

Counting rules, because a key or a DISTINCT can hide exactly what is being looked for:

* an effect applied twice shows as a second *message id* on the wire for the same correlation and
  leg (type, sender, recipient) — a table keyed by token or message id folds it away, the wire
  does not;
* copies of one message id on the wire are allowed (at-least-once: a relay or hub killed before it
  marked a send re-sends the same envelope) and only reported;
* rows are counted as returned, never through ``count(DISTINCT …)``.

Each invariant returns the problems it found (empty: it holds); messages name correlation ids,
message types and counts, never a person.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

TOKEN_KIND = "token"
"""Token issuance: the hub seals a fresh answer each time it processes the request, so after a hub crash
a redelivered request is answered again (same token, new message id). At least one answer, not one."""


@dataclass(frozen=True)
class Request:
    """One request the traffic sent: its kind (step1, step2, token, numbering), correlation, expected answer."""

    kind: str
    correlation_id: str
    answer_type: str
    sender: str
    outcome: str  # answered | answered:<other type> | timeout | error:<exception type>


@dataclass(frozen=True)
class WireMessage:
    """One record read from a topic (routing fields only); a re-sent copy is a second, equal entry."""

    message_id: str
    correlation_id: str
    type: str
    sender: str
    recipient: str


@dataclass(frozen=True)
class RecordSeen:
    """A provision record, as a table row or as read from the audit topic."""

    record_id: str
    message_id: str
    correlation_id: str
    requester: str
    provider: str
    status: str


@dataclass(frozen=True)
class DeadLetterSeen:
    """One record of the hub's rejected topic (its headers)."""

    reason: str
    message_id: str
    source: str  # "<ingress partition>@<offset>": a redelivered batch dead-letters its refusals again


@dataclass
class Observations:
    """Everything the invariants look at, collected after the run (see :mod:`infra.tools.chaos`)."""

    requests: list[Request] = field(default_factory=list)
    lookups: list[str] = field(default_factory=list)  # lookup correlation ids
    lookup_views: list[dict[str, Any] | None] = field(default_factory=list)  # DICJ's view of each, or None
    banks_per_lookup: int = 0
    ingress: list[WireMessage] = field(default_factory=list)  # what participants sent, for the run's correlations
    inboxes: list[WireMessage] = field(default_factory=list)  # what reached the requesters' inboxes
    client_inbox: list[tuple[str, str, str]] = field(default_factory=list)  # rows: (correlation, type, message id)
    records: list[RecordSeen] = field(default_factory=list)  # every provision_records row
    audit: list[RecordSeen] = field(default_factory=list)  # every record on the audit topic
    needing_record: set[str] = field(default_factory=set)  # ids the hub accepted of types that need one
    lookup_results: list[tuple[str, str, bool]] = field(default_factory=list)  # (correlation, message id, supplement)
    result_provider: str = "hub"  # the provider of a lookup result's record (streams.lookups.LookupTracker.hub_id)
    chains_checked: int = 0
    chains_broken: int = 0
    dead_letters: list[DeadLetterSeen] = field(default_factory=list)  # the rejected topic since the run began
    accepted_ids: set[str] = field(default_factory=set)  # every message id the hub accepted
    injected: int = 0  # bad envelopes the traffic put on ingress on purpose
    participant_dead_letters: int = 0  # new rows in participant_dead_letters
    dead_workers: list[str] = field(default_factory=list)


def _ids_by(messages: Iterable[WireMessage], key: Callable[[WireMessage], Any]) -> dict[Any, set[str]]:
    out: dict[Any, set[str]] = defaultdict(set)
    for m in messages:
        out[key(m)].add(m.message_id)
    return out


def every_inquiry_answered_exactly_once(o: Observations) -> list[str]:
    """Every request answered with its expected type; exactly one answer (message id) per request on the
    requester's inbox topic and in its inbox table — token issuance: at least one."""
    problems = [f"{r.kind} {r.correlation_id}: {r.outcome}" for r in o.requests if r.outcome != "answered"]
    on_wire = _ids_by(o.inboxes, lambda m: (m.correlation_id, m.type, m.recipient))
    in_table = Counter((cid, type_) for cid, type_, _ in o.client_inbox)
    for r in o.requests:
        wire = len(on_wire.get((r.correlation_id, r.answer_type, r.sender), ()))
        rows = in_table[(r.correlation_id, r.answer_type)]
        if r.kind == TOKEN_KIND:
            if wire < 1 or rows < 1:
                problems.append(f"token {r.correlation_id}: {wire} answers on the wire, {rows} kept")
        elif wire != 1 or rows != 1:
            problems.append(f"{r.kind} {r.correlation_id}: {wire} answers on the wire, {rows} kept")
    return problems


def registry_and_bank_effects_applied_once(o: Observations) -> list[str]:
    """One message per leg: per (correlation, type, sender, recipient) at most one message id on ingress
    (a registry, bank or client that ran an effect twice sends a second one); per (correlation, requester,
    provider, status) one message in the provision records; one consolidated result per lookup."""
    problems = [f"{t} {s}→{r} in {cid}: {len(ids)} messages"
                for (cid, t, s, r), ids in _ids_by(o.ingress, lambda m: (m.correlation_id, m.type, m.sender,
                                                                           m.recipient)).items() if len(ids) > 1]
    legs: dict[tuple[str, str, str, str], set[str]] = defaultdict(set)
    for rec in o.records:
        legs[(rec.correlation_id, rec.requester, rec.provider, rec.status)].add(rec.message_id)
    # A bank's answer that arrives after its lookup's deadline is still forwarded, and the hub seals a
    # supplement result for it (streams.lookups): a provision of its own, with a record of its own. So a
    # lookup's conversation holds one result record from the hub per result DICJ filed, supplements too.
    supplements = Counter(cid for cid, _, supplement in o.lookup_results if supplement)
    problems += [f"records {req}→{prov} {status} in {cid}: {len(ids)} messages"
                 for (cid, req, prov, status), ids in legs.items()
                 if len(ids) > 1 + (supplements[cid] if (prov, status) == (o.result_provider, "PROVIDED") else 0)]
    results = Counter(cid for cid, _, supplement in o.lookup_results if not supplement)
    problems += [f"lookup {cid}: {results[cid]} results" for cid in o.lookups if results[cid] != 1]
    return problems


def every_lookup_complete_once(o: Observations) -> list[str]:
    """Every bank asked answered every lookup, as DICJ saw it."""
    problems = []
    for cid, view in zip(o.lookups, o.lookup_views, strict=True):
        if view is None:
            problems.append(f"lookup {cid}: no result")
        elif len(view["answering_banks"]) != o.banks_per_lookup:
            problems.append(f"lookup {cid}: {len(view['answering_banks'])} of {o.banks_per_lookup} banks answered")
    return problems


def provision_records_once_and_chains_verify(o: Observations) -> list[str]:
    """Every record on the audit topic, and one record per (message, requester, provider) there — a
    second record of a leg shows on the wire whatever the table's unique key let through; a record for
    every accepted message that needs one; every person's chain verifies."""
    problems = []
    published = {r.record_id for r in o.audit}
    missing = [r for r in o.records if r.record_id not in published]
    if missing:
        problems.append(f"{len(missing)} records never reached the audit topic (first: {missing[0].message_id})")
    on_topic: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for r in o.audit:
        on_topic[(r.message_id, r.requester, r.provider)].add(r.record_id)
    problems += [f"audit topic: {len(ids)} records for {mid} {req}→{prov}"
                 for (mid, req, prov), ids in on_topic.items() if len(ids) > 1]
    unrecorded = o.needing_record - {r.message_id for r in o.records}
    if unrecorded:
        problems.append(f"{len(unrecorded)} accepted messages without a record (first: {sorted(unrecorded)[0]})")
    if o.chains_broken:
        problems.append(f"{o.chains_broken} of {o.chains_checked} chains do not verify")
    return problems


def distinct_sources(dead: Iterable[DeadLetterSeen]) -> list[DeadLetterSeen]:
    """One dead letter per ingress record: a batch redelivered after a hub crash dead-letters its refusals again."""
    return list({d.source: d for d in dead}.values())


def nothing_dead_lettered_but_the_injected(o: Observations) -> list[str]:
    """The hub's dead letters (one per ingress record) are the injected ones, plus REPLAYED copies of
    accepted messages (a participant killed between its relay's send and its mark re-sends a row; the hub
    refuses the copy, the effect is not repeated); no participant dead letters."""
    dead = distinct_sources(o.dead_letters)
    resent = [d for d in dead if d.reason == "REPLAYED" and d.message_id in o.accepted_ids]
    other = len(dead) - len(resent)
    problems = []
    if other != o.injected:
        reasons = Counter(d.reason for d in dead if d not in resent)
        problems.append(f"{other} dead letters besides re-sent copies, {o.injected} injected: {dict(reasons)}")
    if o.participant_dead_letters:
        problems.append(f"{o.participant_dead_letters} participant dead letters")
    return problems


def workers_alive_at_end(o: Observations) -> list[str]:
    return [f"{name} is not running" for name in o.dead_workers]


INVARIANTS: dict[str, Callable[[Observations], list[str]]] = {
    "every_inquiry_answered_exactly_once": every_inquiry_answered_exactly_once,
    "registry_and_bank_effects_applied_once": registry_and_bank_effects_applied_once,
    "every_lookup_complete_once": every_lookup_complete_once,
    "provision_records_once_and_chains_verify": provision_records_once_and_chains_verify,
    "nothing_dead_lettered_but_the_injected": nothing_dead_lettered_but_the_injected,
    "workers_alive_at_end": workers_alive_at_end,
}


def check(o: Observations) -> tuple[dict[str, bool], list[str]]:
    """Every invariant: (name → holds, the problems found, each prefixed with its invariant's name)."""
    verdicts, problems = {}, []
    for name, invariant in INVARIANTS.items():
        found = invariant(o)
        verdicts[name] = not found
        problems += [f"{name}: {p}" for p in found]
    return verdicts, problems


def summary(o: Observations) -> dict[str, Any]:
    """The counts the report prints next to the invariants."""
    dead = distinct_sources(o.dead_letters)
    resent = [d for d in dead if d.reason == "REPLAYED" and d.message_id in o.accepted_ids]
    copies = Counter(m.message_id for m in o.ingress)
    answers = _ids_by(o.inboxes, lambda m: (m.correlation_id, m.type, m.recipient))
    twice = Counter(r.kind for r in o.requests if len(answers.get((r.correlation_id, r.answer_type, r.sender), ())) > 1)
    complete = [v for v in o.lookup_views if v is not None and len(v["answering_banks"]) == o.banks_per_lookup]
    return {
        "requests": dict(Counter(r.kind for r in o.requests)),
        "outcomes": dict(Counter(r.outcome for r in o.requests)),
        "answered_twice": dict(twice),
        "lookups": len(o.lookups), "lookups_complete": len(complete),
        "ingress_messages": len(copies), "ingress_records": sum(copies.values()),
        "ingress_resent_copies": sum(n - 1 for n in copies.values()),
        "provision_records": len(o.records), "audit_records": len(o.audit),
        "chains_checked": o.chains_checked, "chains_broken": o.chains_broken,
        "outbox_resends_refused_as_replayed": len(resent), "dead_letters": len(dead),
        "dead_letters_written_twice": len(o.dead_letters) - len(dead), "injected": o.injected,
        "dead_letter_reasons": dict(Counter(d.reason for d in dead)),
        "participant_dead_letters": o.participant_dead_letters, "dead_workers": o.dead_workers,
    }
