"""The broker part of ``renkei chaos``: kill -9 a Kafka broker mid-traffic, restart it, and prove nothing was lost.

Two targets, one interface (:class:`BrokerTarget`): the embedded single node (:class:`EmbeddedBroker`, the
stack's ``restart_broker``) and one node of the secured three-node cluster at a time
(:class:`ClusterBroker`, ``infra.platform.cluster.KafkaCluster``). ``infra.tools.chaos.crash_safety`` kills the broker
between its worker kills and restarts it in the background after :data:`DOWNTIME_S`, so traffic keeps
flowing at the clients while the broker (the single node) is away or while the cluster runs on two nodes.

The platform's own invariants (``infra.tools.chaos_invariants``: every request answered exactly once, effects and
provision records once) then cover the broker kill too. What they cannot see is a record a producer was
told was written and that a broker then lost: :class:`AckLedger` produces numbered records with acks=all
for the whole run, keeps the numbers acknowledged, and at the end reads the topic back —
``acknowledged_records_kept`` (every acknowledged number is there) and ``ledger_without_duplicates`` (no
number twice: the producers are idempotent) are two invariants more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from infra.core.settings import Settings

log = logging.getLogger("renkei.chaos")

DOWNTIME_S = 3.0
"""How long a killed broker stays down before it is restarted: long enough that clients see it gone."""


class BrokerTarget(Protocol):
    """A broker chaos can kill and bring back."""

    def kill(self, k: int) -> str:
        """SIGKILL the ``k``-th victim now; returns its name (for the report)."""

    async def restart(self, name: str) -> None:
        """Start the killed broker again on its storage; return once it serves."""


@dataclass
class EmbeddedBroker:
    """The embedded stack's single Apache Kafka node (Tansu cannot be a target: it keeps nothing)."""

    stack: Any  # infra.platform.embedded.EmbeddedStack

    def kill(self, k: int) -> str:
        os.kill(self.stack.components["broker"].pid, signal.SIGKILL)  # restart_broker reaps it
        return "broker"

    async def restart(self, name: str) -> None:
        await self.stack.restart_broker()


@dataclass
class ClusterBroker:
    """One node of the cluster at a time, in turn (a quorum of three survives one loss)."""

    cluster: Any  # infra.platform.cluster.KafkaCluster

    def kill(self, k: int) -> str:
        ids = sorted(self.cluster.nodes)
        node_id = ids[k % len(ids)]
        self.cluster.kill(node_id)
        return f"kafka-{node_id}"

    async def restart(self, name: str) -> None:
        await self.cluster.restart(int(name.removeprefix("kafka-")))


@dataclass
class LedgerReport:
    sent: int = 0
    acknowledged: int = 0
    failed: int = 0  # sends the producer gave up on (not acknowledged: allowed to be missing)
    read_back: int = 0
    lost: list[int] = field(default_factory=list)
    duplicated: list[int] = field(default_factory=list)

    @property
    def invariants(self) -> dict[str, bool]:
        return {"acknowledged_records_kept": not self.lost and self.acknowledged > 0,
                "ledger_without_duplicates": not self.duplicated}

    def to_json(self) -> dict[str, Any]:
        return {"sent": self.sent, "acknowledged": self.acknowledged, "failed": self.failed,
                "read_back": self.read_back, "lost": self.lost[:20], "duplicated": self.duplicated[:20]}


class AckLedger:
    """Numbered records produced with acks=all through the run (see the module docstring); async context manager."""

    def __init__(self, settings: Settings, *, rate: float = 20.0) -> None:
        self.settings = settings
        self.topic = f"{settings.kafka.topic_prefix}.chaos.ledger"
        self.rate = rate
        self.report = LedgerReport()
        self._acked: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._producer: Any = None

    async def __aenter__(self) -> AckLedger:
        from infra.platform.kafka import admin_client, producer
        from infra.platform.topics import TopicSpec, apply_layout

        admin = admin_client(self.settings)
        await admin.start()
        try:
            await apply_layout(admin, [TopicSpec(self.topic, 3, "chaos", {"cleanup.policy": "delete"})],
                               replication=self.settings.kafka.replication)
        finally:
            await admin.close()
        self._producer = producer(self.settings)
        await self._producer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        n = 0
        while True:
            n += 1
            task = asyncio.create_task(self._send(n))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
            await asyncio.sleep(1 / self.rate)

    async def _send(self, n: int) -> None:
        self.report.sent += 1
        try:
            # A long timeout: the producer retries through a broker's absence; what it acknowledges must stay.
            await asyncio.wait_for(self._producer.send_and_wait(self.topic, str(n).encode(), key=str(n % 7).encode()),
                                   timeout=180)
        except Exception as exc:  # noqa: BLE001 - an unacknowledged send may be missing; counted, not fatal
            self.report.failed += 1
            log.info("ledger record %d not acknowledged: %s", n, type(exc).__name__)
            return
        self._acked.append(n)

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def check(self) -> LedgerReport:
        """Stop producing, read the topic back, compare with what was acknowledged."""
        from infra.tools.harness import read_topic

        await self.stop()
        seen = Counter(int(r.value) for r in await read_topic(self.settings, self.topic, 3))
        self.report.acknowledged = len(self._acked)
        self.report.read_back = sum(seen.values())
        self.report.lost = sorted(n for n in self._acked if n not in seen)
        self.report.duplicated = sorted(n for n, c in seen.items() if c > 1)
        return self.report


@contextlib.asynccontextmanager
async def chaos_platform(settings: Settings, *, cluster: bool = False,
                         say: Any = None) -> AsyncIterator[tuple[Any, BrokerTarget | None]]:
    """The platform ``renkei chaos`` runs on, and the broker it may kill.

    Embedded: ``infra.platform.stack.Platform`` on its own broker, which is the target where it is Apache Kafka
    (Tansu would come back empty). ``cluster``: a secured three-node cluster under ``<state>/cluster``
    (``infra.platform.cluster``), the prefix's ACLs applied before the workers start, each worker its own
    principal, PostgreSQL embedded; one node at a time is the target.
    """
    from infra.platform.stack import Platform

    say = say or (lambda _m: None)
    if not cluster:
        async with Platform(settings) as platform:
            yield platform, EmbeddedBroker(platform.stack) if platform.stack.broker_kind == "kafka" else None
        return
    import dataclasses
    import shutil

    from infra.core.errors import StackError
    from infra.domain.participants import participants_of
    from infra.platform import kafka_broker as kb
    from infra.platform.acls import ADMIN, acl_bindings, principals
    from infra.platform.cluster import KafkaCluster, stop_recorded
    from infra.platform.kafka_admin import apply_acls
    from infra.platform.topics import TopicNames

    java = kb.find_java(settings.embedded_java)
    if java is None or java.major < kb.MIN_JAVA:
        raise StackError(f"renkei chaos --cluster needs Java {kb.MIN_JAVA}+ (apt-get install openjdk-17-jre-headless)")
    dist = await asyncio.to_thread(kb.fetch_distribution, settings.resolved_kafka_cache)
    participants = participants_of(settings)
    home = settings.state_dir / "cluster"
    stop_recorded(home)
    shutil.rmtree(home, ignore_errors=True)
    say("starting a secured three-node cluster")
    async with KafkaCluster(home, dist, java, principals(participants, simulated_banks=True),
                            die_with_parent=True) as kafka:  # a foreground run leaves no broker behind
        secured = dataclasses.replace(settings, kafka=kafka.client(ADMIN, topic_prefix=settings.kafka.topic_prefix))
        names = TopicNames(secured.kafka.topic_prefix)
        await apply_acls(secured.kafka, acl_bindings(names, participants, simulated_banks=True), prefix=names.prefix)
        async with Platform(secured) as platform:
            yield platform, ClusterBroker(kafka)


class BrokerKills:
    """The kills of one run: each SIGKILLs at once and restarts in the background after the downtime."""

    def __init__(self, target: BrokerTarget, downtime_s: float = DOWNTIME_S) -> None:
        self.target = target
        self.downtime_s = downtime_s
        self.killed: list[str] = []
        self.restarts: list[asyncio.Task[None]] = []
        self.outage_s: list[float] = []

    def kill(self) -> str:
        name = self.target.kill(len(self.killed))
        self.killed.append(name)
        started = time.monotonic()

        async def back() -> None:
            await asyncio.sleep(self.downtime_s)
            await self.target.restart(name)
            self.outage_s.append(round(time.monotonic() - started, 1))

        self.restarts.append(asyncio.create_task(back()))
        return name

    async def settle(self) -> None:
        """Wait for every restart (a failed restart raises: the run cannot judge a broker that never came back)."""
        await asyncio.gather(*self.restarts)


__all__ = ["DOWNTIME_S", "AckLedger", "BrokerKills", "BrokerTarget", "ClusterBroker", "EmbeddedBroker",
           "LedgerReport", "chaos_platform"]
