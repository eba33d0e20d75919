"""Kafka ACLs: who may do what on the bus, derived from the participants and the topic and group names the code uses.

Pure: :func:`acl_bindings` turns the participants registry and the topic names into the
bindings; ``infra.acl_apply`` applies them with the admin API (``renkei acls apply``) and
:func:`kafka_acls_commands` renders them for Apache Kafka's ``kafka-acls.sh``. The cluster is
default-deny (``allow.everyone.if.no.acl.found=false``): what is not listed here is refused.

Principals are ``User:<name>``: every participant by its id, plus the ones below (no participant
may take one of these names). What each needs, and where in the code the name comes from:

- **hub** (``streams.hub``): reads ``<prefix>.hub.ingress`` in the consumer group ``<prefix>.hub``
  (the faust app id; every hub worker joins it); writes every inbox (prefix ``<prefix>.inbox.``),
  the dead letters ``<prefix>.hub.rejected``, the provision records ``<prefix>.audit.provisions``;
  writes and reads ``<prefix>.audit.checkpoints`` (it reads back what it published); reads the key
  directory. It may NOT write the key directory.
- **every other participant** (``streams.participant.ParticipantRuntime`` under the registry's faust
  app, the connectors, the bus clients and DICJ's desk): writes the ingress, reads only its own
  inbox ``<prefix>.inbox.<id>`` and the key directory; consumer groups ``<prefix>.<id>`` (the
  registry's faust app), ``<prefix>.<id>.…`` (clients a participant names itself) and
  ``<prefix>.connector.<id>`` (``renkei bank|portal|agency serve``). The portal also reads the
  checkpoints, against which it verifies a person's records.
- **keys** (:data:`KEY_PUBLISHER`: ops holding the root key — ``renkei keys …``, ``renkei
  participants suspend|resume`` and the key bootstrap of ``renkei up``): the only writer of the key
  directory ``<prefix>.keys`` (it reads it too, to raise versions), and writes its events to
  ``<prefix>.audit.ops``. A principal that cannot write the topic cannot put a record after a good
  one and have compaction drop it.
- **banks** (:data:`BANK_SIMULATOR`, only with ``simulated_banks``: ``connectors.bank_sim``, the
  ``banks`` worker of ``renkei up``): the stand-in for every simulated bank in one process, so it
  reads every bank's inbox, in the group ``<prefix>.banks``; each bank's own connector may read that
  group's offsets to start where the simulator stopped (``connectors.serve``).

Producers are idempotent (``infra.platform.kafka``): since Kafka 3.0 (KIP-679) Write on a topic is enough for
that, so no principal needs IdempotentWrite on the cluster. No code uses a transactional id, so none
is granted. ``admin`` (topics, ACLs, SCRAM users) and ``broker`` (the brokers among themselves) are
the cluster's super users (``infra.platform.cluster``); they get no bindings here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from infra.core.errors import ConfigError
from infra.domain.participants import Kind, Participant
from infra.platform.topics import TopicNames

KEY_PUBLISHER = "keys"
"""The principal that publishes the key directory (not a participant: it never sends a message)."""
BANK_SIMULATOR = "banks"
"""The bank simulator's principal: one process standing in for every simulated bank."""
ADMIN = "admin"
"""The cluster administrator (a super user): creates topics, ACLs and SCRAM users."""
BROKER = "broker"
"""The brokers' own principal (a super user): replication and the controller quorum."""
RESERVED = frozenset({ADMIN, BROKER, KEY_PUBLISHER, BANK_SIMULATOR, "connector", "cli"})
"""Names no participant may have: a principal of the platform itself, or a word in group names
(``<prefix>.connector.<id>``, ``<prefix>.cli``) that a participant's group prefix would otherwise cover."""


@dataclass(frozen=True)
class AclBinding:
    """One ALLOW rule: ``principal`` may do ``operation`` on the resource, from any host."""

    principal: str  # User:<name>
    operation: str  # Read | Write | Describe
    resource_type: str  # topic | group
    resource: str
    pattern: str = "literal"  # literal | prefixed


def principal(name: str) -> str:
    return f"User:{name}"


def principals(participants: Iterable[Participant], *, simulated_banks: bool = False) -> list[str]:
    """Every user name the bus needs credentials for, the cluster's own (admin, broker) first."""
    names = [BROKER, ADMIN, KEY_PUBLISHER, *(p.id for p in participants)]
    return names + ([BANK_SIMULATOR] if simulated_banks else [])


def participant_groups(names: TopicNames, participant_id: str) -> list[AclBinding]:
    """Read on the consumer groups a participant's processes use (see the module docstring)."""
    user = principal(participant_id)
    return [AclBinding(user, "Read", "group", f"{names.prefix}.{participant_id}"),
            AclBinding(user, "Read", "group", f"{names.prefix}.{participant_id}.", "prefixed"),
            AclBinding(user, "Read", "group", f"{names.prefix}.connector.{participant_id}")]


def acl_bindings(names: TopicNames, participants: Iterable[Participant], *,
                 simulated_banks: bool = False) -> list[AclBinding]:
    """Every binding of the bus under ``names.prefix``; ``simulated_banks`` adds the bank simulator's."""
    participants = list(participants)
    taken = sorted(p.id for p in participants if p.id in RESERVED)
    if taken:
        raise ConfigError(f"participants: {', '.join(taken)} is reserved for the platform's own Kafka principals "
                          f"({', '.join(sorted(RESERVED))}); rename the participant")
    publisher = principal(KEY_PUBLISHER)
    out: list[AclBinding] = [
        AclBinding(publisher, "Write", "topic", names.keys),
        AclBinding(publisher, "Read", "topic", names.keys),  # reads versions before raising them
        AclBinding(publisher, "Write", "topic", names.ops_audit),
    ]
    for p in participants:
        user = principal(p.id)
        if p.kind is Kind.HUB:
            out += [
                AclBinding(user, "Read", "topic", names.ingress),
                AclBinding(user, "Read", "group", f"{names.prefix}.{p.id}"),
                AclBinding(user, "Write", "topic", f"{names.prefix}.inbox.", "prefixed"),
                AclBinding(user, "Write", "topic", names.rejected),
                AclBinding(user, "Write", "topic", names.audit),
                AclBinding(user, "Write", "topic", names.checkpoints),
                AclBinding(user, "Read", "topic", names.checkpoints),
                AclBinding(user, "Read", "topic", names.keys),
            ]
            continue
        out += [
            AclBinding(user, "Write", "topic", names.ingress),
            AclBinding(user, "Read", "topic", names.inbox(p.id)),
            AclBinding(user, "Read", "topic", names.keys),
            *participant_groups(names, p.id),
        ]
        if p.kind is Kind.PORTAL:
            out.append(AclBinding(user, "Read", "topic", names.checkpoints))
        if p.kind is Kind.BANK and simulated_banks:
            out.append(AclBinding(user, "Describe", "group", f"{names.prefix}.{BANK_SIMULATOR}"))
    if simulated_banks:
        simulator = principal(BANK_SIMULATOR)
        out += [AclBinding(simulator, "Write", "topic", names.ingress),
                AclBinding(simulator, "Read", "topic", names.keys),
                AclBinding(simulator, "Read", "group", f"{names.prefix}.{BANK_SIMULATOR}")]
        out += [AclBinding(simulator, "Read", "topic", names.inbox(p.id)) for p in participants if p.kind is Kind.BANK]
    return out


def allows(bindings: Iterable[AclBinding], user: str, operation: str, resource_type: str, name: str) -> bool:
    """Whether ``bindings`` let ``user`` (``User:<name>``) do ``operation`` on the named resource, matched as
    Kafka's StandardAuthorizer matches ALLOW rules: a literal name exactly, a prefixed one as a prefix; Read
    and Write imply Describe. Pure, for the tests and for reading the rules."""
    implied = {operation} | ({"Read", "Write"} if operation == "Describe" else set())
    return any(b.principal == user and b.resource_type == resource_type and b.operation in implied
               and (b.resource == name if b.pattern == "literal" else name.startswith(b.resource))
               for b in bindings)


def kafka_acls_commands(bindings: Iterable[AclBinding], bootstrap: str = "$BOOTSTRAP") -> list[str]:
    lines = []
    for b in bindings:
        lines.append(
            f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config /etc/renkei/admin.properties "
            f"--add --allow-principal {b.principal} --operation {b.operation} "
            f"--{b.resource_type} '{b.resource}' --resource-pattern-type {b.pattern}"
        )
    return lines


__all__ = ["ADMIN", "BANK_SIMULATOR", "BROKER", "KEY_PUBLISHER", "RESERVED", "AclBinding", "acl_bindings", "allows",
           "kafka_acls_commands", "participant_groups", "principal", "principals"]
