"""The participant registry and the declared topic layout (pure logic)."""

from pathlib import Path

import pytest

from infra.core.errors import ConfigError
from infra.core.settings import load_settings
from infra.domain.participants import Kind, load_participants, participants_of
from infra.platform.topics import TopicNames, layout


def test_default_set_has_every_kind_and_five_banks():
    ps = load_participants()
    kinds = {p.kind for p in ps}
    assert kinds == set(Kind)
    banks = ps.banks()
    assert len(banks) == 5
    assert [b.bank_code for b in banks] == ["9000", "9001", "9002", "9003", "9004"]
    assert ps.by_bank_code("9003").id == "bank-9003"
    assert len(ps.of_kind(Kind.AGENCY)) >= 2


def test_thousand_banks_for_benchmarks():
    ps = load_participants(banks=1000)
    codes = [b.bank_code for b in ps.banks()]
    assert len(codes) == len(set(codes)) == 1000
    assert all(len(c) == 4 and c.isdigit() for c in codes)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "participants.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, fragment", [
    ('[[participant]]\nid = "a"\nkind = "alien"\n', "needs kind"),
    ('[[participant]]\nid = "b"\nkind = "bank"\n', "needs a bank_code"),
    ('[[participant]]\nid = "b"\nkind = "bank"\nbank_code = "12"\n', "4 digits"),
    ('[[participant]]\nid = "x y"\nkind = "agency"\n', "id must be"),
    ('[[participant]]\nid = "a"\nkind = "agency"\n[[participant]]\nid = "a"\nkind = "agency"\n', "duplicate id"),
    ('[banks]\ncount = 20\ncode_start = 9990\n', "exceed 9999"),
])
def test_bad_participant_files(tmp_path, text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_participants(write(tmp_path, text))


def test_suspended_and_non_participating_banks(tmp_path):
    ps = load_participants(write(tmp_path, """
[[participant]]
id = "bank-0005"
kind = "bank"
bank_code = "0005"
suspended = true
[[participant]]
id = "bank-0006"
kind = "bank"
bank_code = "0006"
participating = false
"""))
    assert ps.get("bank-0005").suspended
    assert [b.id for b in ps.banks(participating_only=True)] == ["bank-0005"]


def test_layout_has_ingress_rejected_audit_keys_and_one_inbox_per_participant():
    ps = load_participants()
    specs = {s.name: s for s in layout(TopicNames("renkei"), ps)}
    assert specs["renkei.hub.ingress"].partitions >= 2
    assert specs["renkei.keys"].configs["cleanup.policy"] == "compact"
    assert specs["renkei.audit.provisions"].configs["retention.ms"] == "-1"
    assert "renkei.hub.rejected" in specs
    inboxes = {n for n, s in specs.items() if s.role == "inbox"}
    assert inboxes == {f"renkei.inbox.{p.id}" for p in ps if p.kind is not Kind.HUB}


def test_prefix_isolates_names():
    names = TopicNames("t123")
    assert names.ingress == "t123.hub.ingress" and names.inbox("dicj") == "t123.inbox.dicj"


def test_acls_confine_each_participant_to_ingress_and_its_own_inbox():
    from infra.platform.acls import acl_bindings, kafka_acls_commands

    ps = load_participants(banks=2)
    names = TopicNames("renkei")
    bindings = acl_bindings(names, ps)
    for p in ps:
        mine = [b for b in bindings if b.principal == f"User:{p.id}"]
        reads = {b.resource for b in mine if b.operation == "Read" and b.resource_type == "topic"}
        writes = {b.resource for b in mine if b.operation == "Write"}
        if p.kind is Kind.HUB:
            assert names.ingress in reads and "renkei.inbox." in writes
        else:
            # the portal verifies a person's records against the published checkpoints (tests/unit/platform/test_acls.py)
            assert reads == {names.inbox(p.id), names.keys} | ({names.checkpoints} if p.kind is Kind.PORTAL else set())
            assert writes == {names.ingress}
    lines = kafka_acls_commands(bindings)
    assert len(lines) == len(bindings) and all(line.startswith("kafka-acls.sh") for line in lines)


def test_participants_of_settings_reads_their_file_and_bank_count(tmp_path):
    path = write(tmp_path, '[[participant]]\nid = "hub"\nkind = "hub"\n\n[banks]\ncount = 2\n')
    settings = load_settings(cli={"participants_file": str(path), "banks": 3}, environ={})
    assert [p.id for p in participants_of(settings)] == [p.id for p in load_participants(path, banks=3)]
    assert len(participants_of(settings).banks()) == 3
    assert len(participants_of(load_settings(cli={"banks": 7}, environ={})).banks()) == 7

