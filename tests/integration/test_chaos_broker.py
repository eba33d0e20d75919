"""`renkei chaos`'s broker part on the embedded Apache Kafka: kill -9 of the broker mid-traffic, restarted on its storage.

The platform here runs on a broker of its own (the session's broker is shared by every test module, and a
killed broker is gone for everyone until it is back), with the session's PostgreSQL. The crash-safety run is
the one `renkei chaos` makes (``infra.tools.chaos.crash_safety`` with ``infra.tools.chaos_broker.EmbeddedBroker``), with
only the broker killed: every request answered exactly once, every effect and provision record once, every
record a producer was told was written (acks=all) read back once. The cluster's version — one of three nodes
killed — is in tests/integration/test_cluster.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import AsyncIterator

import pytest

from infra.core.settings import KafkaSettings, load_settings
from infra.platform.pgprovision import drop_database_namespace
from infra.platform.stack import Platform
from infra.tools.chaos import ChaosPlan, crash_safety
from infra.tools.chaos_broker import EmbeddedBroker
from tests.integration.platform_fixtures import PARTICIPANTS_FILE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BROKER_ONLY = ChaosPlan(traffic_s=20, hub_kills=0, registry_kills=0, bank_kills=0, broker_kills=1, hub_workers=1,
                        inquiry_rate=4, people=8, injected_bad=4, bad_envelopes=0, good_envelopes=0)


@pytest.fixture(scope="module")
async def own_broker_platform(endpoints, database, tmp_path_factory) -> AsyncIterator[Platform]:
    if endpoints.broker != "kafka":
        pytest.skip("the broker kill needs Apache Kafka (Tansu keeps nothing across a restart)")
    machine = load_settings(environ={k: v for k, v in os.environ.items() if k != "RENKEI_BROKER"})
    settings = database.settings(endpoints, namespace="k" + os.urandom(5).hex(),
                                 state_dir=tmp_path_factory.mktemp("chaos-broker"),
                                 participants_file=PARTICIPANTS_FILE)
    # No bootstrap: the platform starts its own embedded Apache Kafka (the machine's Java and jars).
    settings = dataclasses.replace(settings, kafka=KafkaSettings(topic_prefix=settings.kafka.topic_prefix,
                                                                  broker="kafka"),
                                   embedded_java=machine.embedded_java, embedded_kafka_cache=machine.embedded_kafka_cache,
                                   embedded_kafka_heap_mb=256)
    try:
        async with Platform(settings, die_with_parent=True) as platform:
            await platform.wait_ready(180)
            yield platform
    finally:
        await drop_database_namespace(settings)


async def test_the_embedded_broker_sigkilled_mid_traffic_loses_nothing_and_duplicates_nothing(own_broker_platform):
    assert own_broker_platform.stack.broker_kind == "kafka"
    report, _ = await crash_safety(own_broker_platform, BROKER_ONLY, rng=random.Random(11),
                                   brokers=EmbeddedBroker(own_broker_platform.stack))
    assert report.counts["brokers_killed"] == ["broker"] and report.counts["broker_outage_s"], report.counts
    assert report.counts["ledger"]["acknowledged"] > 0
    assert report.counts["outcomes"] == {"answered": sum(report.counts["requests"].values())}, report.counts
    failed = [name for name, ok in report.invariants.items() if not ok]
    assert not failed, json.dumps({"failed": failed, "problems": report.problems[:20], "counts": report.counts},
                                  default=str)
