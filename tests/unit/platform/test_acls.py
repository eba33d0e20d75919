"""The ACLs generated from the participants and the real topic and group names (infra.platform.acls): each principal can
do exactly what its processes do, and nothing that would let it read another's inbox or rewrite the key directory.

Pure: the bindings are checked with ``allows``, which matches rules as Kafka's StandardAuthorizer does; the
cluster tests (tests/integration/test_cluster.py) apply the same bindings to a real cluster and perform the
refused operations there.
"""

from __future__ import annotations

import pytest

from infra.core.errors import ConfigError
from infra.core.settings import KafkaSettings, Settings
from infra.domain.participants import Kind, Participant, load_participants
from infra.platform.acls import (
    ADMIN,
    BANK_SIMULATOR,
    BROKER,
    KEY_PUBLISHER,
    AclBinding,
    acl_bindings,
    allows,
    kafka_acls_commands,
    principal,
    principals,
)
from infra.platform.stack import WORKERS
from infra.platform.topics import TopicNames, layout

NAMES = TopicNames("renkei")
PARTICIPANTS = load_participants(banks=3)


def _bindings(simulated_banks: bool = True) -> list[AclBinding]:
    return acl_bindings(NAMES, PARTICIPANTS, simulated_banks=simulated_banks)


def _ids(kind: Kind) -> list[str]:
    return [p.id for p in PARTICIPANTS if p.kind is kind]


def test_allows_matches_literal_and_prefixed_names_as_kafka_does():
    rules = [AclBinding("User:a", "Read", "topic", "p.inbox.a"), AclBinding("User:a", "Write", "topic", "p.x.", "prefixed")]
    assert allows(rules, "User:a", "Read", "topic", "p.inbox.a")
    assert not allows(rules, "User:a", "Read", "topic", "p.inbox.ab")  # literal: not a prefix
    assert allows(rules, "User:a", "Write", "topic", "p.x.anything")
    assert not allows(rules, "User:a", "Write", "topic", "p.inbox.a")  # Read does not imply Write
    assert allows(rules, "User:a", "Describe", "topic", "p.inbox.a")  # Read implies Describe
    assert not allows(rules, "User:b", "Read", "topic", "p.inbox.a")
    assert not allows(rules, "User:a", "Read", "group", "p.inbox.a")


def test_every_participant_reads_only_its_own_inbox_and_writes_only_the_ingress():
    bindings = _bindings()
    topics = [spec.name for spec in layout(NAMES, PARTICIPANTS)]
    for p in PARTICIPANTS:
        if p.kind is Kind.HUB:
            continue
        user = principal(p.id)
        reads = {t for t in topics if allows(bindings, user, "Read", "topic", t)}
        writes = {t for t in topics if allows(bindings, user, "Write", "topic", t)}
        expected = {NAMES.inbox(p.id), NAMES.keys} | ({NAMES.checkpoints} if p.kind is Kind.PORTAL else set())
        assert reads == expected, p.id
        assert writes == {NAMES.ingress}, p.id


def test_only_the_hub_reads_the_ingress_and_writes_the_inboxes():
    bindings = _bindings()
    users = [principal(u) for u in principals(PARTICIPANTS, simulated_banks=True) if u not in (ADMIN, BROKER)]
    inboxes = [NAMES.inbox(p.id) for p in PARTICIPANTS if p.kind is not Kind.HUB]
    for user in users:
        hub = user == principal("hub")
        assert allows(bindings, user, "Read", "topic", NAMES.ingress) is hub, user
        assert all(allows(bindings, user, "Write", "topic", t) is hub for t in inboxes), user
    # The hub writes the dead letters, the provision records and the checkpoints, which it also reads back.
    for topic in (NAMES.rejected, NAMES.audit, NAMES.checkpoints):
        assert allows(bindings, "User:hub", "Write", "topic", topic)
    assert allows(bindings, "User:hub", "Read", "topic", NAMES.checkpoints)


def test_only_the_key_publisher_writes_the_key_directory_and_everyone_reads_it():
    bindings = _bindings()
    for user in principals(PARTICIPANTS, simulated_banks=True):
        if user in (ADMIN, BROKER):
            continue  # super users, outside the ACLs (the cluster's super.users)
        assert allows(bindings, principal(user), "Write", "topic", NAMES.keys) is (user == KEY_PUBLISHER), user
        assert allows(bindings, principal(user), "Read", "topic", NAMES.keys), user
    writes = {t.name for t in layout(NAMES, PARTICIPANTS) if allows(bindings, "User:keys", "Write", "topic", t.name)}
    assert writes == {NAMES.keys, NAMES.ops_audit}


def test_a_bank_reads_no_other_banks_inbox_and_the_simulator_reads_only_bank_inboxes():
    bindings = _bindings()
    banks = _ids(Kind.BANK)
    assert len(banks) >= 2
    for bank in banks:
        for other in banks:
            assert allows(bindings, principal(bank), "Read", "topic", NAMES.inbox(other)) is (bank == other)
    simulator = principal(BANK_SIMULATOR)
    for p in PARTICIPANTS:
        if p.kind is not Kind.HUB:
            assert allows(bindings, simulator, "Read", "topic", NAMES.inbox(p.id)) is (p.kind is Kind.BANK), p.id
    # Without the simulator, its principal has nothing at all.
    assert not [b for b in _bindings(simulated_banks=False) if b.principal == simulator]


def test_the_groups_the_code_joins_are_open_to_their_own_principal_only():
    settings = Settings(kafka=KafkaSettings(topic_prefix=NAMES.prefix))
    bindings = _bindings()
    everyone = [principal(u) for u in principals(PARTICIPANTS, simulated_banks=True) if u not in (ADMIN, BROKER)]
    joined: dict[str, str] = {}  # group -> the principal whose processes join it
    for worker in WORKERS:  # the faust apps' ids and the bank simulator's group
        assert worker.group is not None
        joined[worker.group(settings)] = principal(worker.principal or worker.name)
    for bank in _ids(Kind.BANK):  # connectors/serve.py, bankhttp.py, bankfiles.py
        joined[f"{NAMES.prefix}.connector.{bank}"] = principal(bank)
    joined[f"{NAMES.prefix}.connector.portal"] = "User:portal"  # connectors/portal.py
    for agency in _ids(Kind.AGENCY):  # connectors/agency.py, one agency per connector
        joined[f"{NAMES.prefix}.connector.{agency}"] = principal(agency)
        joined[f"{NAMES.prefix}.{agency}.clients"] = principal(agency)  # a group a participant names itself
    joined[f"{NAMES.prefix}.dicj"] = "User:dicj"  # DICJ's desk
    for group, owner in joined.items():
        for user in everyone:
            assert allows(bindings, user, "Read", "group", group) is (user == owner), (group, user)


def test_every_topic_of_the_layout_has_a_writer_and_no_rule_names_a_topic_outside_it():
    bindings = _bindings()
    topics = {spec.name for spec in layout(NAMES, PARTICIPANTS)}
    users = {b.principal for b in bindings}
    for topic in topics:
        assert any(allows(bindings, u, "Write", "topic", topic) for u in users), topic
    for b in bindings:
        if b.resource_type == "topic":
            assert any(t == b.resource if b.pattern == "literal" else t.startswith(b.resource) for t in topics), b


def test_nobody_gets_cluster_rights_or_wildcards():
    for b in _bindings():
        assert b.resource_type in ("topic", "group") and "*" not in b.resource, b
        assert b.operation in ("Read", "Write", "Describe"), b
        assert b.resource.startswith(f"{NAMES.prefix}."), b


@pytest.mark.parametrize("name", [ADMIN, BROKER, KEY_PUBLISHER, BANK_SIMULATOR, "connector", "cli"])
def test_a_participant_may_not_take_a_platform_principal_name(name):
    taken = [*PARTICIPANTS, Participant(id=name, kind=Kind.AGENCY, name="impostor")]
    with pytest.raises(ConfigError, match="reserved"):
        acl_bindings(NAMES, taken)


def test_kafka_acls_lines_render_every_binding():
    bindings = _bindings()
    lines = kafka_acls_commands(bindings, bootstrap="kafka-1:9093")
    assert len(lines) == len(bindings)
    assert all(line.startswith("kafka-acls.sh --bootstrap-server kafka-1:9093 ") for line in lines)
    assert any("--allow-principal User:keys --operation Write --topic 'renkei.keys'" in line for line in lines)


def test_principals_lists_the_cluster_users_first_and_every_participant():
    users = principals(PARTICIPANTS, simulated_banks=True)
    assert users[:3] == [BROKER, ADMIN, KEY_PUBLISHER] and users[-1] == BANK_SIMULATOR
    assert set(users) == {BROKER, ADMIN, KEY_PUBLISHER, BANK_SIMULATOR, *(p.id for p in PARTICIPANTS)}
