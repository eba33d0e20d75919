"""The topic layout (DESIGN §5), declared once and applied idempotently.

``layout()`` is pure: it names every topic with its partitions and configs
for a participant set.  ``apply_layout()`` creates what is missing (with its
configs) and reports what already exists, or exists with a different
partition count ("drift"), without touching it: Kafka cannot shrink
partitions, and changing a live topic is an operator's decision.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from infra.domain.participants import Kind, Participant

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    role: str  # ingress | inbox | rejected | audit | keys
    configs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicNames:
    """Topic names under one prefix (``renkei`` in production; unique per test)."""

    prefix: str = "renkei"

    @property
    def ingress(self) -> str:
        return f"{self.prefix}.hub.ingress"

    @property
    def rejected(self) -> str:
        return f"{self.prefix}.hub.rejected"

    @property
    def audit(self) -> str:
        return f"{self.prefix}.audit.provisions"

    @property
    def checkpoints(self) -> str:
        """Signed checkpoints of the provision-record chain heads (infra.records.checkpoints); no personal data."""
        return f"{self.prefix}.audit.checkpoints"

    @property
    def ops_audit(self) -> str:
        """Ops actions (replay, rewind, re-drive) as JSON events; see docs/operations.md."""
        return f"{self.prefix}.audit.ops"

    @property
    def keys(self) -> str:
        return f"{self.prefix}.keys"

    def inbox(self, participant_id: str) -> str:
        return f"{self.prefix}.inbox.{participant_id}"


INGRESS_PARTITIONS = 4
"""Hub workers scale up to this many consumers; keyed by subject token."""

MAX_RECORD_BYTES = 1_048_576 + 65_536
"""The largest record batch a topic accepts (``max.message.bytes``): a 1 MiB envelope, the hub's limit,
plus headers and batch overhead. Apache Kafka's default (1 MiB + 12 bytes) would refuse an oversize
envelope at the broker, where the hub must see it to dead-letter it with its reason."""

_SIZE = {"max.message.bytes": str(MAX_RECORD_BYTES)}


def ops_audit_spec(names: TopicNames) -> TopicSpec:
    """The ops audit trail: one partition (one order of events), kept without time limit."""
    return TopicSpec(names.ops_audit, 1, "audit", {"cleanup.policy": "delete", "retention.ms": "-1"} | _SIZE)


def layout(names: TopicNames, participants: Iterable[Participant]) -> list[TopicSpec]:
    """Every topic the platform needs for ``participants``."""
    specs = [
        TopicSpec(names.ingress, INGRESS_PARTITIONS, "ingress",
                  {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)} | _SIZE),
        TopicSpec(names.rejected, 1, "rejected",
                  {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)} | _SIZE),
        # Provision records are also kept in PostgreSQL; the topic is the stream
        # the portal and auditors follow, kept without time limit.
        TopicSpec(names.audit, 1, "audit", {"cleanup.policy": "delete", "retention.ms": "-1"} | _SIZE),
        # Checkpoints of the records' chain heads: the verifiers' anchor outside the database. Kept without time
        # limit and never compacted (a replayed older checkpoint must not replace the latest); small, and
        # written only when records were added.
        TopicSpec(names.checkpoints, 1, "audit", {"cleanup.policy": "delete", "retention.ms": "-1"} | _SIZE),
        ops_audit_spec(names),
        TopicSpec(names.keys, 1, "keys", {"cleanup.policy": "compact"} | _SIZE),
    ]
    for p in participants:
        if p.kind is Kind.HUB:
            continue  # the hub reads ingress, it has no inbox
        specs.append(TopicSpec(names.inbox(p.id), 1, "inbox",
                               {"cleanup.policy": "delete", "retention.ms": str(14 * DAY_MS)} | _SIZE))
    return specs


@dataclass
class ApplyResult:
    name: str
    status: str  # created | exists | drift
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


async def _describe_settled(admin: Any, names: list[str], timeout_s: float = 10.0) -> dict[str, Any]:
    """describe_topics, again while a topic shows no partitions: a topic created a moment ago (here or
    concurrently) reaches a Kafka broker's metadata shortly after CreateTopics answers."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        described = {d["topic"]: d for d in await admin.describe_topics(names)}
        if all(described.get(n, {}).get("partitions") for n in names) or time.monotonic() > deadline:
            return described
        await asyncio.sleep(0.1)


async def apply_layout(admin: Any, specs: list[TopicSpec], *, replication: int = 1,
                       batch: int = 200) -> list[ApplyResult]:
    """Create missing topics; report existing ones and any drift. Safe to run again."""
    from aiokafka.admin import NewTopic

    existing = set(await admin.list_topics())
    results: list[ApplyResult] = []
    missing = [s for s in specs if s.name not in existing]
    raced: set[str] = set()  # already there after all: created concurrently, or not yet in the broker's metadata
    for i in range(0, len(missing), batch):
        chunk = missing[i : i + batch]
        response = await admin.create_topics(
            [NewTopic(s.name, s.partitions, replication, topic_configs=s.configs) for s in chunk]
        )
        errors = {t[0]: (t[1], t[2]) for t in response.topic_errors}
        for s in chunk:
            code, message = errors.get(s.name, (0, None))
            if code == 0:
                results.append(ApplyResult(s.name, "created"))
            elif code == 36:  # TOPIC_ALREADY_EXISTS: described below like any existing topic
                raced.add(s.name)
            else:
                raise RuntimeError(f"creating topic {s.name} failed: error {code} {message or ''}".strip())
    present = [s for s in specs if s.name in existing or s.name in raced]
    if present:
        described = await _describe_settled(admin, [s.name for s in present])
        for s in present:
            got = len(described.get(s.name, {}).get("partitions", []))
            if got != s.partitions:
                results.append(ApplyResult(s.name, "drift", f"partitions {got}, declared {s.partitions}"))
            else:
                results.append(ApplyResult(s.name, "exists"))
    order = {s.name: i for i, s in enumerate(specs)}
    results.sort(key=lambda r: order[r.name])
    return results
