"""infra/compose.yaml deploys what the cluster tests run: its brokers' security, authorization and replication
settings are the ones ``infra.platform.cluster`` gives its nodes (issue 15 item 6).

The brokers' environment is read the way the apache/kafka image turns it into server.properties
(``KAFKA_`` dropped, ``___`` → ``-``, ``__`` → ``_``, ``_`` → ``.``, lower case; compose's ``$$`` is ``$``),
and compared with the properties the cluster fixture renders for a node.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from infra.platform.acls import ADMIN, BROKER
from infra.platform.cluster import KafkaCluster, scram_jaas, security_properties
from infra.platform.cluster_tls import ClusterTls
from infra.platform.kafka_broker import kafka_version

COMPOSE = Path(__file__).resolve().parents[3] / "infra" / "compose.yaml"
# What must agree besides security_properties(): the roles, listener names, sizes and internal replication.
ALSO = ("process.roles", "controller.listener.names", "message.max.bytes",
        "share.coordinator.state.topic.replication.factor", "share.coordinator.state.topic.min.isr")
SECRETS = ("ssl.keystore.password", "ssl.key.password")


def _property(env_name: str) -> str:
    name = env_name.removeprefix("KAFKA_").replace("___", "\0").replace("__", "\1")
    return name.replace("_", ".").replace("\0", "-").replace("\1", "_").lower()


def _compose_brokers() -> dict[str, dict[str, str]]:
    data = yaml.safe_load(COMPOSE.read_text())
    out = {}
    for name, service in data["services"].items():
        if name.startswith("kafka-"):
            env = {k: str(v).replace("$$", "$") for k, v in service["environment"].items()}
            out[name] = {_property(k): v for k, v in env.items() if k.startswith("KAFKA_")}
            out[name]["image"] = service["image"]
    return out


@pytest.fixture(scope="module")
def fixture_node(tmp_path_factory) -> dict[str, str]:
    """Node 1's server.properties as the cluster fixture writes it (certificates and passwords generated)."""
    from infra.platform.cluster import NODE_IDS, ClusterLayout

    cluster = KafkaCluster(tmp_path_factory.mktemp("cluster"), None, None)  # type: ignore[arg-type]
    cluster.layout = ClusterLayout.new(base_port=39000)
    ClusterTls(cluster.home / "tls").ensure(list(NODE_IDS), ["127.0.0.1"])
    cluster.credentials.ensure([BROKER, ADMIN])
    return dict(cluster.node_config(1).properties())


def test_compose_brokers_have_the_fixtures_security_and_replication_settings(fixture_node):
    brokers = _compose_brokers()
    assert sorted(brokers) == ["kafka-1", "kafka-2", "kafka-3"]
    for name, props in brokers.items():
        for key in [*security_properties(), *ALSO]:
            if key in ("ssl.keystore.location", "ssl.truststore.location"):
                continue  # paths differ by design
            assert props.get(key) == fixture_node[key], (name, key, props.get(key), fixture_node[key])
        assert all(props[key].startswith("${") for key in SECRETS)  # from .env, never written in the file
        assert props["ssl.truststore.location"].endswith("ca.pem") and props["ssl.keystore.location"].endswith(
            f"{name}.p12")
        # The brokers log in to each other as User:broker with SCRAM, like the fixture's nodes.
        jaas = props["listener.name.client.scram-sha-512.sasl.jaas.config"]
        expected = scram_jaas(BROKER, "${KAFKA_BROKER_SCRAM_PASSWORD}")
        assert re.sub(r"\s+", " ", jaas).strip() == expected
        fixture_jaas = fixture_node["listener.name.client.scram-sha-512.sasl.jaas.config"]
        assert re.sub(r'password="[^"]*"', "", fixture_jaas) == re.sub(r'password="[^"]*"', "", expected)
        # The same listeners by name and protocol: clients on CLIENT (SASL_SSL), the quorum on CONTROLLER (SSL).
        names = {url.split("://")[0] for url in props["listeners"].split(",")}
        assert names == {url.split("://")[0] for url in fixture_node["listeners"].split(",")}
        assert props["advertised.listeners"] == f"CLIENT://{name}:9093"
        assert props["image"] == f"apache/kafka:{kafka_version()}"


def test_compose_clients_use_sasl_ssl_and_the_admin_applies_the_acls():
    data = yaml.safe_load(COMPOSE.read_text())
    text = COMPOSE.read_text()
    assert "SASL_PLAINTEXT" not in text and "PLAINTEXT://" not in text
    services = data["services"]
    acls = services["renkei-acls"]
    assert acls["environment"]["RENKEI_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert acls["environment"]["RENKEI_KAFKA_SASL_USERNAME"] == ADMIN
    assert acls["command"][:2] == ["acls", "apply"]
    hub = services["hub"]["environment"]
    assert hub["RENKEI_KAFKA_SASL_USERNAME"] == "hub" and hub["RENKEI_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"


def test_the_environment_names_convert_as_the_apache_kafka_image_does():
    assert _property("KAFKA_LISTENER_NAME_CLIENT_SCRAM___SHA___512_SASL_JAAS_CONFIG") == \
        "listener.name.client.scram-sha-512.sasl.jaas.config"
    assert _property("KAFKA_MIN_INSYNC_REPLICAS") == "min.insync.replicas"
    assert _property("KAFKA_FOO__BAR") == "foo_bar"
