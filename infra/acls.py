"""Kafka ACLs that confine each participant: write the ingress, read only its own inbox.

Pure: ``acl_bindings()`` derives the bindings from the participants registry and
the topic names; ``kafka_acls_commands()`` renders them for Apache Kafka's
``kafka-acls.sh`` (used by infra/compose.yaml).  Principals are ``User:<id>``.

The key directory topic has one writer, the key publisher (``User:keys``: ops
holding the root key, running ``renkei keys …``, ``renkei participants
suspend|resume`` and the key bootstrap), which also writes its ops audit events.
Everyone else, the hub included, only reads it: a principal that cannot write
the topic cannot put a record after a good one and have compaction drop it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from infra.participants import Kind, Participant
from infra.topics import TopicNames

KEY_PUBLISHER = "keys"
"""The principal that publishes the key directory (not a participant: it never sends a message)."""


@dataclass(frozen=True)
class AclBinding:
    principal: str
    operation: str  # Read | Write | Describe
    resource_type: str  # topic | group
    resource: str
    pattern: str = "literal"  # literal | prefixed


def acl_bindings(names: TopicNames, participants: Iterable[Participant]) -> list[AclBinding]:
    publisher = f"User:{KEY_PUBLISHER}"
    out: list[AclBinding] = [
        AclBinding(publisher, "Write", "topic", names.keys),
        AclBinding(publisher, "Read", "topic", names.keys),  # reads versions before raising them
        AclBinding(publisher, "Write", "topic", names.ops_audit),
    ]
    for p in participants:
        user = f"User:{p.id}"
        if p.kind is Kind.HUB:
            out += [
                AclBinding(user, "Read", "topic", names.ingress),
                AclBinding(user, "Write", "topic", f"{names.prefix}.inbox.", "prefixed"),
                AclBinding(user, "Write", "topic", names.rejected),
                AclBinding(user, "Read", "topic", names.rejected),
                AclBinding(user, "Write", "topic", names.audit),
                AclBinding(user, "Read", "topic", names.keys),
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
