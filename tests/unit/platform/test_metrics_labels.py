"""No label of any worker series carries a token or personal data: every label value of a full exposition
is scanned, after a hub-shaped worker was fed token- and My Number-shaped strings wherever a caller could
pass one (participants, reasons, banks)."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from infra.platform.metrics import OTHER, REASON_CODES, WorkerMetrics
from infra.platform.metrics_hub import HubFigures

TOKEN = "AbC_dEf-0123456789abcdefghijklmnopqrstuvwxyz"  # what a subject token looks like
MY_NUMBER = "123456789018"
PARTICIPANTS = {"hub", "registry", "portal", "bank-0001", "agency-nta"}
OPEN_LABELS = {"worker", "group", "topic", "partition", "le"}  # the worker's own names, numbers, bucket bounds


def exposition_labels(text: str) -> list[tuple[str, str]]:
    return [(k, v) for family in text_string_to_metric_families(text) for s in family.samples
            for k, v in s.labels.items()]


def test_every_label_value_is_a_closed_set_member_or_the_workers_own_name():
    m = WorkerMetrics("hub", group="renkei.hub")
    m.know_participants(PARTICIPANTS | {"bad id with spaces"})
    figures = HubFigures(m)
    m.batch_done(4, started=0.0)
    m.by_participant({"agency-nta": 2, TOKEN: 1, MY_NUMBER: 1}, {"registry": 2, MY_NUMBER: 1}, started=0.0)
    m.reject(TOKEN)
    m.reject(MY_NUMBER)
    m.reject("UNKNOWN_KEY")
    m.set_lag("renkei.hub.ingress", 0, 3)
    figures.update_legs([{"bank_id": "bank-0001", "legs": 2, "oldest_s": 30.0},
                 {"bank_id": MY_NUMBER, "legs": 1, "oldest_s": 5.0}])
    text = m.render()
    assert TOKEN not in text and MY_NUMBER not in text
    assert not re.search(r"\d{10,}", "".join(v for _, v in exposition_labels(text)))
    closed = {"reason": REASON_CODES | {OTHER}, "participant": PARTICIPANTS | {OTHER}, "bank": PARTICIPANTS | {OTHER},
              "direction": {"in", "out"}}
    seen = set()
    for label, value in exposition_labels(text):
        seen.add(label)
        if label in closed:
            assert value in closed[label], (label, value)
        else:
            assert label in OPEN_LABELS, label
            assert re.fullmatch(r"[A-Za-z0-9_.+\-]{1,200}", value), (label, value)
    assert {"participant", "bank", "reason", "direction", "group"} <= seen  # the scan saw every kind of label


def group_figures(m: WorkerMetrics) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(m.render()) for s in f.samples
            if s.labels.get("group") == "renkei.registry"}


def test_group_lag_and_stalled_follow_the_partitions_and_the_last_batch():
    m = WorkerMetrics("registry", group="renkei.registry")  # a batch is overdue after 60 s
    m.set_lag("renkei.inbox.registry", 0, 4)
    m.set_lag("renkei.inbox.registry", 1, 2)
    assert group_figures(m) == {"renkei_consumer_group_lag": 6, "renkei_consumer_group_stalled": 0}
    overdue = WorkerMetrics("registry", group="renkei.registry", stall_after_s=0)
    assert group_figures(overdue)["renkei_consumer_group_stalled"] == 0  # nothing behind: idle, not stalled
    overdue.set_lag("renkei.inbox.registry", 0, 1)
    assert group_figures(overdue)["renkei_consumer_group_stalled"] == 1


def test_failed_provision_writes_are_counted_up_to_the_hubs_running_total():
    m = WorkerMetrics("hub")
    figures = HubFigures(m)
    for total, shown in ((0, 0), (3, 3), (3, 3), (5, 5)):
        figures.count_write_failures(total)
        assert figures.write_failures.value() == shown
    assert 'renkei_provision_write_failures_total{worker="hub"} 5.0' in m.render()
