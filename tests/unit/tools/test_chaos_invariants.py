"""The chaos oracle proven: every invariant holds on a clean run and fails on each seeded violation.

``clean()`` is a small run that went right: a STEP1 registration (with the bank's existence check),
a STEP2 inquiry, a token issuance and an inheritance lookup to two banks, each leg once on the wire,
with its provision records, one injected bad envelope and one outbox re-send refused as REPLAYED.
Each test below breaks one thing the way a real fault would show it, and checks that exactly the
invariant meant to catch it fails — and that the others do not (an oracle that flags everything is as
useless as one that flags nothing).
"""

from __future__ import annotations

import dataclasses

import pytest

from infra.tools.chaos_invariants import (
    DeadLetterSeen,
    Observations,
    RecordSeen,
    Request,
    WireMessage,
    check,
    summary,
)

STEP1, STEP2, TOKEN, LOOKUP = "c-step1", "c-step2", "c-token", "c-lookup"


def clean() -> Observations:
    ingress = [
        WireMessage("m1", STEP1, "registration.request", "portal", "registry"),
        WireMessage("m2", STEP1, "existence.check", "registry", "bank-9000"),
        WireMessage("m3", STEP1, "existence.answer", "bank-9000", "registry"),
        WireMessage("m4", STEP1, "registration.result", "registry", "portal"),
        WireMessage("m5", STEP2, "provision.inquiry", "agency-nta", "registry"),
        WireMessage("m5", STEP2, "provision.inquiry", "agency-nta", "registry"),  # an outbox re-send: same id
        WireMessage("m6", STEP2, "provision.response", "registry", "agency-nta"),
        WireMessage("m7", TOKEN, "token.issue.request", "agency-nta", "hub"),
        WireMessage("m8", LOOKUP, "lookup.inheritance", "dicj", "bank-9000"),
        WireMessage("m9", LOOKUP, "lookup.answer", "bank-9000", "dicj"),
        WireMessage("m10", LOOKUP, "lookup.answer", "bank-9001", "dicj"),
    ]
    inboxes = [
        WireMessage("m4", STEP1, "registration.result", "registry", "portal"),
        WireMessage("m6", STEP2, "provision.response", "registry", "agency-nta"),
        WireMessage("m6", STEP2, "provision.response", "registry", "agency-nta"),  # forwarded again after a hub crash
        WireMessage("h1", TOKEN, "token.issue.response", "hub", "agency-nta"),
    ]
    records = [
        RecordSeen("r1", "m1", STEP1, "portal", "registry", "REQUESTED"),
        RecordSeen("r2", "m2", STEP1, "registry", "bank-9000", "REQUESTED"),
        RecordSeen("r3", "m5", STEP2, "agency-nta", "registry", "REQUESTED"),
        RecordSeen("r4", "m6", STEP2, "agency-nta", "registry", "PROVIDED"),
        RecordSeen("r5", "h2", LOOKUP, "dicj", "hub", "PROVIDED"),
    ]
    return Observations(
        requests=[Request("step1", STEP1, "registration.result", "portal", "answered"),
                  Request("step2", STEP2, "provision.response", "agency-nta", "answered"),
                  Request("token", TOKEN, "token.issue.response", "agency-nta", "answered")],
        lookups=[LOOKUP], lookup_views=[{"answering_banks": ["9000", "9001"], "missing_banks": []}],
        banks_per_lookup=2, ingress=ingress, inboxes=inboxes,
        client_inbox=[(STEP1, "registration.result", "m4"), (STEP2, "provision.response", "m6"),
                      (TOKEN, "token.issue.response", "h1")],
        records=records, audit=[*records, records[2]],  # a record republished after a hub crash: same record id
        needing_record={"m1", "m5", "m6"},
        lookup_results=[(LOOKUP, "h2", False)],
        chains_checked=3, chains_broken=0,
        dead_letters=[DeadLetterSeen("EXPIRED", "bad1", "0@7"), DeadLetterSeen("EXPIRED", "bad1", "0@7"),
                      DeadLetterSeen("REPLAYED", "m5", "2@9")],
        accepted_ids={"m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "m9", "m10"},
        injected=1,
    )


def failing(o: Observations) -> set[str]:
    verdicts, _ = check(o)
    return {name for name, ok in verdicts.items() if not ok}


def test_a_clean_run_passes_every_invariant():
    verdicts, problems = check(clean())
    assert all(verdicts.values()) and problems == []
    assert len(verdicts) == 6


def test_the_summary_counts_copies_without_calling_them_faults():
    s = summary(clean())
    assert s["ingress_resent_copies"] == 1 and s["dead_letters_written_twice"] == 1
    assert s["outbox_resends_refused_as_replayed"] == 1 and s["answered_twice"] == {}


def with_(o: Observations, **changes) -> Observations:
    return dataclasses.replace(o, **changes)


# -- every_inquiry_answered_exactly_once --------------------------------------------------------------


def test_a_request_that_timed_out_fails_answered_once():
    o = clean()
    o.requests[1] = dataclasses.replace(o.requests[1], outcome="timeout")
    assert failing(o) == {"every_inquiry_answered_exactly_once"}


def test_a_second_answer_on_the_wire_fails_answered_once_even_if_the_table_kept_one():
    o = clean()
    o.inboxes.append(WireMessage("m6b", STEP2, "provision.response", "registry", "agency-nta"))
    o.ingress.append(WireMessage("m6b", STEP2, "provision.response", "registry", "agency-nta"))
    assert "every_inquiry_answered_exactly_once" in failing(o)


def test_an_answer_missing_from_the_inbox_table_fails_answered_once():
    o = clean()
    o.client_inbox.pop(0)
    assert failing(o) == {"every_inquiry_answered_exactly_once"}


def test_a_token_answered_twice_is_allowed_and_never_answered_is_not():
    o = clean()
    o.inboxes.append(WireMessage("h1b", TOKEN, "token.issue.response", "hub", "agency-nta"))
    o.client_inbox.append((TOKEN, "token.issue.response", "h1b"))
    assert failing(o) == set()
    o = clean()
    o.inboxes = [m for m in o.inboxes if m.correlation_id != TOKEN]
    assert failing(o) == {"every_inquiry_answered_exactly_once"}


# -- registry_and_bank_effects_applied_once ----------------------------------------------------------


@pytest.mark.parametrize("leg", [
    WireMessage("m2b", STEP1, "existence.check", "registry", "bank-9000"),  # the registry ran STEP1 twice
    WireMessage("m4b", STEP1, "registration.result", "registry", "portal"),  # ... and answered twice
    WireMessage("m9b", LOOKUP, "lookup.answer", "bank-9000", "dicj"),  # a bank handled the lookup twice
])
def test_a_second_message_on_one_leg_fails_effects_once(leg):
    o = clean()
    o.ingress.append(leg)
    assert "registry_and_bank_effects_applied_once" in failing(o)


def test_two_messages_recorded_for_one_leg_fail_effects_once():
    o = clean()
    o.records.append(RecordSeen("r6", "m6b", STEP2, "agency-nta", "registry", "PROVIDED"))
    o.audit.append(o.records[-1])
    assert failing(o) == {"registry_and_bank_effects_applied_once"}


def test_a_second_lookup_result_fails_effects_once():
    o = with_(clean(), lookup_results=[(LOOKUP, "h2", False), (LOOKUP, "h3", False)])
    assert failing(o) == {"registry_and_bank_effects_applied_once"}
    o = with_(clean(), lookup_results=[(LOOKUP, "h2", False), (LOOKUP, "h3", True)])  # a supplement is not one
    assert failing(o) == set()


def test_a_supplement_results_record_is_its_own_provision_but_no_more():
    """A late answer's supplement result is recorded apart (seen in a full `renkei chaos` with the broker
    killed): one more hub record per supplement DICJ filed, and not one more than that."""
    supplement = RecordSeen("r5s", "h3", LOOKUP, "dicj", "hub", "PROVIDED")
    o = with_(clean(), lookup_results=[(LOOKUP, "h2", False), (LOOKUP, "h3", True)])
    o.records.append(supplement)
    o.audit.append(supplement)
    assert failing(o) == set()
    o.records.append(RecordSeen("r5t", "h4", LOOKUP, "dicj", "hub", "PROVIDED"))  # a third, with one supplement
    o.audit.append(o.records[-1])
    assert failing(o) == {"registry_and_bank_effects_applied_once"}
    o = with_(clean(), lookup_results=[(LOOKUP, "h2", False), (LOOKUP, "h3", True)])
    o.records.append(RecordSeen("r9b", "m9b", LOOKUP, "dicj", "bank-9000", "PROVIDED"))  # not the hub's result
    o.records.append(RecordSeen("r9c", "m9c", LOOKUP, "dicj", "bank-9000", "PROVIDED"))
    o.audit.extend(o.records[-2:])
    assert failing(o) == {"registry_and_bank_effects_applied_once"}
    o = clean()  # no supplement filed: a second hub result record is a duplicate
    o.records.append(supplement)
    o.audit.append(supplement)
    assert failing(o) == {"registry_and_bank_effects_applied_once"}


# -- every_lookup_complete_once ------------------------------------------------------------------------


def test_a_lookup_without_result_or_with_a_bank_missing_fails_complete():
    assert failing(with_(clean(), lookup_views=[None])) == {"every_lookup_complete_once"}
    partial = with_(clean(), lookup_views=[{"answering_banks": ["9000"], "missing_banks": ["9001"]}])
    assert failing(partial) == {"every_lookup_complete_once"}


# -- provision_records_once_and_chains_verify ------------------------------------------------------------


def test_a_record_written_twice_fails_records_once():
    """Whatever the table's unique key lets through: every row is published, and the topic shows the second."""
    o = clean()
    o.records.append(RecordSeen("r3b", "m5", STEP2, "agency-nta", "registry", "REQUESTED"))
    o.audit.append(o.records[-1])
    assert failing(o) == {"provision_records_once_and_chains_verify"}


def test_a_record_never_published_fails_records_once():
    o = clean()
    o.audit = [r for r in o.audit if r.record_id != "r2"]
    assert failing(o) == {"provision_records_once_and_chains_verify"}


def test_a_second_record_for_one_leg_on_the_audit_topic_fails_records_once():
    o = clean()
    o.audit.append(RecordSeen("r3x", "m5", STEP2, "agency-nta", "registry", "REQUESTED"))
    assert failing(o) == {"provision_records_once_and_chains_verify"}


def test_an_accepted_message_without_record_or_a_broken_chain_fails_records_once():
    o = clean()
    o.needing_record.add("m99")
    assert failing(o) == {"provision_records_once_and_chains_verify"}
    assert failing(with_(clean(), chains_broken=1)) == {"provision_records_once_and_chains_verify"}


# -- nothing_dead_lettered_but_the_injected --------------------------------------------------------------


def test_a_dead_letter_nobody_injected_fails_dead_letters():
    o = clean()
    o.dead_letters.append(DeadLetterSeen("REPLAYED", "m3", "1@4"))  # a redelivery taken for a replay, say
    o.accepted_ids.discard("m3")
    assert failing(o) == {"nothing_dead_lettered_but_the_injected"}
    o = clean()
    o.dead_letters.append(DeadLetterSeen("UNAUTHORISED", "m8", "3@2"))
    assert failing(o) == {"nothing_dead_lettered_but_the_injected"}


def test_an_injected_envelope_that_was_not_dead_lettered_fails_dead_letters():
    assert failing(with_(clean(), injected=2)) == {"nothing_dead_lettered_but_the_injected"}


def test_a_participant_dead_letter_fails_dead_letters():
    assert failing(with_(clean(), participant_dead_letters=1)) == {"nothing_dead_lettered_but_the_injected"}


# -- workers_alive_at_end --------------------------------------------------------------------------------


def test_a_dead_worker_fails_workers_alive():
    assert failing(with_(clean(), dead_workers=["registry"])) == {"workers_alive_at_end"}


def test_problems_name_correlations_and_counts_never_people():
    o = clean()
    o.ingress.append(WireMessage("m2b", STEP1, "existence.check", "registry", "bank-9000"))
    _, problems = check(o)
    assert problems == ["registry_and_bank_effects_applied_once: existence.check registry→bank-9000 in c-step1: "
                        "2 messages"]
