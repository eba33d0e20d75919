"""The embedded Apache Kafka's pure parts: node configuration, broker choice, Java and cache detection."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from infra.core.errors import StackError
from infra.platform import kafka_broker as kb


def test_single_node_properties_are_a_durable_kraft_combined_node(tmp_path):
    config = kb.NodeConfig.single(tmp_path / "kafka", 19092, 19093)
    props = config.properties()
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "CLIENT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "CLIENT://127.0.0.1:19092"  # the controller is not advertised
    assert props["listener.security.protocol.map"] == "CLIENT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    assert props["log.dirs"] == str(tmp_path / "kafka" / "data")  # in the state folder: survives a restart
    assert props["offsets.topic.replication.factor"] == props["transaction.state.log.replication.factor"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["unclean.leader.election.enable"] == "false"
    assert config.bootstrap == "127.0.0.1:19092"
    text = config.render()
    assert "log.dirs=" + str(tmp_path / "kafka" / "data") in text.splitlines()


def test_one_node_writes_no_idle_metadata_record_twice_a_second_and_keeps_kafkas_durability(tmp_path):
    props = kb.NodeConfig.single(tmp_path, 1, 2).properties()
    assert int(props["metadata.max.idle.interval.ms"]) >= 5000  # Kafka's default 500 ms: an idle cost (issue 18)
    # acks, flushes and replication stay Kafka's own: nothing on the durability side is overridden.
    assert not [k for k in props if k.startswith(("log.flush", "min.insync", "unclean"))
                and k not in ("min.insync.replicas", "unclean.leader.election.enable")]
    assert props["min.insync.replicas"] == "1" and props["unclean.leader.election.enable"] == "false"
    voters = (kb.Voter(1, "127.0.0.1", 2),)
    cluster_node = kb.NodeConfig(1, tmp_path, kb.Listener("CLIENT", 1), kb.Listener("CONTROLLER", 2), voters)
    assert "metadata.max.idle.interval.ms" not in cluster_node.properties()  # a cluster keeps Kafka's default


def test_a_cluster_node_is_the_same_config_with_other_voters_listeners_and_overrides(tmp_path):
    voters = tuple(kb.Voter(i, "127.0.0.1", 29090 + i) for i in (1, 2, 3))
    node = kb.NodeConfig(2, tmp_path / "n2", kb.Listener("CLIENT", 29192, "SASL_SSL"),
                         kb.Listener("CONTROLLER", 29092), voters, replication=3, min_insync_replicas=2,
                         overrides={"sasl.enabled.mechanisms": "SCRAM-SHA-512",
                                    "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                                    "num.io.threads": "8"})
    props = node.properties()
    assert props["controller.quorum.voters"] == "1@127.0.0.1:29091,2@127.0.0.1:29092,3@127.0.0.1:29093"
    assert props["listener.security.protocol.map"] == "CLIENT:SASL_SSL,CONTROLLER:PLAINTEXT"
    assert props["default.replication.factor"] == props["offsets.topic.replication.factor"] == "3"
    assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["num.io.threads"] == "8"  # an override wins over the single-machine default


def test_jvm_command_line_has_the_heap_the_log_config_and_the_classpath(tmp_path):
    config = kb.NodeConfig.single(tmp_path, 1, 2, heap_mb=768)
    java = kb.JavaRuntime("/usr/bin/java", "17.0.15")
    dist = kb.Distribution("4.4.0", tmp_path / "libs")
    argv = config.jvm_argv(java, dist, kb.MAIN_CLASS, str(config.properties_file))
    assert argv[0] == "/usr/bin/java" and "-Xmx768m" in argv and "-Xms192m" in argv
    assert f"-Dlog4j2.configurationFile={kb.LOG4J_CONFIG}" in argv
    assert argv[argv.index("-cp") + 1] == f"{tmp_path / 'libs'}/*"
    assert argv[-2:] == ["kafka.Kafka", str(config.properties_file)]


@pytest.mark.parametrize("version, major", [("17.0.15", 17), ("25.0.3", 25), ("1.8.0_392", 8), ("21", 21),
                                            ("17-ea", 17)])
def test_java_major_version(version, major):
    assert kb.JavaRuntime("java", version).major == major


def test_choose_broker():
    java17, java11 = kb.JavaRuntime("/j17", "17.0.1"), kb.JavaRuntime("/j11", "11.0.2")
    assert kb.choose_broker("auto", java17, cached=True, maven=False) == kb.BrokerChoice("kafka")
    assert kb.choose_broker("auto", java17, cached=False, maven=True) == kb.BrokerChoice("kafka")
    assert kb.choose_broker("tansu", java17, cached=True, maven=True) == kb.BrokerChoice("tansu")
    for java, cached, maven, why in [(None, True, True, "no Java found"), (java11, True, True, "older than 17"),
                                     (java17, False, False, "Maven (mvn) is not installed")]:
        fallback = kb.choose_broker("auto", java, cached=cached, maven=maven)
        assert fallback.kind == "tansu" and why in fallback.warning
        assert "do NOT survive a restart" in fallback.warning and "\n" not in fallback.warning
        with pytest.raises(StackError, match=re.escape(why)):
            kb.choose_broker("kafka", java, cached=cached, maven=maven)


def test_find_java_reads_the_version_a_runtime_prints(tmp_path):
    fake = tmp_path / "java"
    fake.write_text('#!/bin/sh\necho \'openjdk version "21.0.4" 2024-07-16\' >&2\n')
    fake.chmod(0o755)
    assert kb.find_java(str(fake)) == kb.JavaRuntime(str(fake), "21.0.4")
    assert kb.find_java(str(tmp_path / "absent")) is None


def test_the_pom_is_the_one_place_the_kafka_release_is_named():
    version = kb.kafka_version()
    assert version.split(".")[0] == "4"
    assert f"<kafka.version>{version}</kafka.version>" in kb.POM.read_text()
    assert kb.distribution_dir(Path("/c")) == Path(f"/c/kafka-{version}")


def test_a_cache_is_used_only_once_complete(tmp_path):
    home = kb.distribution_dir(tmp_path)
    (home / "libs").mkdir(parents=True)
    assert kb.cached_distribution(tmp_path) is None  # Maven was interrupted: fetch again
    (home / kb.COMPLETE).write_text("kafka_2.13.jar\n")
    assert kb.cached_distribution(tmp_path) == kb.Distribution(kb.kafka_version(), home / "libs")


def test_fetch_without_maven_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn on PATH
    with pytest.raises(StackError, match="apt-get install maven"):
        kb.fetch_distribution(tmp_path / "cache")
    assert kb.cached_distribution(tmp_path / "cache") is None


def test_a_cluster_id_never_starts_with_a_dash():
    # The storage tool reads `--cluster-id -…` as a missing argument: one random id in 64 starts with "-",
    # so 2,000 draws of the unguarded id would meet one with near certainty (1 - (63/64)**2000).
    ids = [kb.new_cluster_id() for _ in range(2000)]
    assert not [c for c in ids if c.startswith("-")]
    assert any("-" in c for c in ids)  # the alphabet is still base64url (Kafka's), dashes inside are fine


def test_cluster_id_and_formatted_storage(tmp_path):
    cid = kb.new_cluster_id()
    assert len(cid) == 22 and "=" not in cid and cid != kb.new_cluster_id()
    assert kb.formatted_cluster_id(tmp_path) is None
    (tmp_path / "meta.properties").write_text(f"#\nnode.id=1\ndirectory.id=x\nversion=1\ncluster.id={cid}\n")
    assert kb.formatted_cluster_id(tmp_path) == cid
    assert os.path.exists(tmp_path / "meta.properties")
