"""Kafka ACLs that confine each participant: write the ingress, read only its own inbox.

Pure: ``acl_bindings()`` derives the bindings from the participants registry and
the topic names; ``kafka_acls_commands()`` renders them for Apache Kafka's
``kafka-acls.sh`` (used by infra/compose.yaml).  Principals are ``User:<id>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from infra.participants import Kind, Participant
from infra.topics import TopicNames


@dataclass(frozen=True)
class AclBinding:
    principal: str
    operation: str  # Read | Write | Describe
    resource_type: str  # topic | group
    resource: str
    pattern: str = "literal"  # literal | prefixed


def acl_bindings(names: TopicNames, participants: Iterable[Participant]) -> list[AclBinding]:
    out: list[AclBinding] = []
    for p in participants:
        user = f"User:{p.id}"
        if p.kind is Kind.HUB:
            out += [
                AclBinding(user, "Read", "topic", names.ingress),
                AclBinding(user, "Write", "topic", f"{names.prefix}.inbox.", "prefixed"),
                AclBinding(user, "Write", "topic", names.rejected),
                AclBinding(user, "Read", "topic", names.rejected),
                AclBinding(user, "Write", "topic", names.audit),
                AclBinding(user, "Write", "topic", names.keys),
                AclBinding(user, "Read", "group", f"{names.prefix}.hub", "prefixed"),
            ]
            continue
        out += [
            AclBinding(user, "Write", "topic", names.ingress),
            AclBinding(user, "Read", "topic", names.inbox(p.id)),
            AclBinding(user, "Read", "topic", names.keys),
            AclBinding(user, "Read", "group", f"{names.prefix}.{p.id}", "prefixed"),
        ]
    return out


def kafka_acls_commands(bindings: Iterable[AclBinding], bootstrap: str = "$BOOTSTRAP") -> list[str]:
    lines = []
    for b in bindings:
        lines.append(
            f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config /etc/renkei/admin.properties "
            f"--add --allow-principal {b.principal} --operation {b.operation} "
            f"--{b.resource_type} '{b.resource}' --resource-pattern-type {b.pattern}"
        )
    return lines
