"""The secured three-node cluster for the cluster tests: one per test module, shared by its tests.

``kafka_cluster`` starts :class:`infra.platform.cluster.KafkaCluster` (three KRaft nodes, SASL_SSL with
SCRAM-SHA-512, default-deny ACLs, replication 3, ``min.insync.replicas=2``) under a temporary folder,
with a SCRAM user for every principal of the test participants file. ``secured_platform`` runs the
hub, registry and bank simulator on it under a fresh topic prefix, each worker as its own principal,
after applying the prefix's ACLs with ``renkei acls apply``'s code; PostgreSQL is the session's.

Its fixtures reach every integration test through tests/integration/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from infra.core.settings import Settings, load_settings
from infra.domain.participants import load_participants, participants_of
from infra.platform.acls import ADMIN, acl_bindings, principals
from infra.platform.cluster import KafkaCluster
from infra.platform.kafka_admin import apply_acls
from infra.platform.stack import Platform
from infra.platform.topics import TopicNames
from tests.integration.platform_fixtures import PARTICIPANTS_FILE, isolated_platform
from tests.tools import require

__all__ = ["kafka_cluster", "secured_platform", "apply_prefix_acls", "cluster_platform"]


def _java_missing() -> str | None:
    from infra.platform import kafka_broker as kb

    machine = load_settings(environ={k: v for k, v in os.environ.items() if k != "RENKEI_BROKER"})
    java = kb.find_java(machine.embedded_java)
    if java is None or java.major < kb.MIN_JAVA:
        return f"the cluster tests need Java {kb.MIN_JAVA}+ (apt-get install openjdk-17-jre-headless)"
    return None


@pytest.fixture(scope="module")  # stopped after its module: three JVMs are a lot for the rest of a suite on 2 cores
async def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KafkaCluster]:
    from infra.platform import kafka_broker as kb

    require(_java_missing())
    machine = load_settings(environ={k: v for k, v in os.environ.items() if k != "RENKEI_BROKER"})
    java = kb.find_java(machine.embedded_java)
    assert java is not None
    dist = kb.fetch_distribution(machine.resolved_kafka_cache)
    users = principals(load_participants(PARTICIPANTS_FILE), simulated_banks=True)
    async with KafkaCluster(tmp_path_factory.mktemp("cluster"), dist, java, users, die_with_parent=True) as cluster:
        yield cluster


async def apply_prefix_acls(settings: Settings) -> None:
    """The ACLs of ``settings``' topic prefix, applied as ``renkei acls apply --with-bank-simulator`` does."""
    participants = participants_of(settings)
    bindings = acl_bindings(TopicNames(settings.kafka.topic_prefix), participants, simulated_banks=True)
    await apply_acls(settings.kafka, bindings, prefix=settings.kafka.topic_prefix)


@contextlib.asynccontextmanager
async def cluster_platform(cluster: KafkaCluster, endpoints: Any, database: Any, state: Path,
                           **options: Any) -> AsyncIterator[Platform]:
    """Hub, registry and bank simulator on the cluster, each its own principal, under a fresh prefix with its ACLs."""
    async with isolated_platform(endpoints, database, state, kafka=cluster.client(ADMIN), prepare=apply_prefix_acls,
                                 prefix_letter="c", **options) as platform:
        yield platform


@pytest.fixture(scope="module")
async def secured_platform(kafka_cluster, endpoints, database, tmp_path_factory) -> AsyncIterator[Platform]:
    """Hub, registry and bank simulator as their own principals; DICJ's desk is the tests' (as ``dicj``), so a
    test sees its lookup results. All answers in, a lookup completes; its deadline only bounds a silent bank."""
    async with cluster_platform(kafka_cluster, endpoints, database, tmp_path_factory.mktemp("secured"),
                                workers=["hub", "registry", "banks"], lookup_deadline_inheritance_s=120) as platform:
        yield platform
