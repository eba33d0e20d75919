"""``renkei cluster up|down|status`` and ``renkei acls [print|apply]``: the secured three-node cluster to try.

``cluster up`` starts ``infra.platform.cluster.KafkaCluster`` under ``<state>/cluster`` (three KRaft nodes
on loopback, SASL_SSL with SCRAM-SHA-512, default-deny ACLs, replication 3, ``min.insync.replicas=2``)
with a SCRAM user for every principal of the participants file, and prints the client settings that
log in as ``admin``; the nodes keep running after the command returns. ``cluster down`` stops them
(``--purge`` also deletes the folder: storage, certificates and passwords).

``acls`` prints the bindings of ``infra.platform.acls`` as ``kafka-acls.sh`` lines (or ``--json``); ``acls
apply`` creates them on the configured cluster with the admin API (the configured principal must be
a super user or hold Alter on the cluster), reports each as created or already there, and the
prefix's bindings the platform no longer generates as stale (``--prune`` removes them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from infra.core.settings import Settings

CLUSTER_FOLDER = "cluster"


def cluster_home(settings: Settings) -> Path:
    return Path(settings.state_dir) / CLUSTER_FOLDER


def client_environment(kafka: Any) -> dict[str, str]:
    """The ``RENKEI_KAFKA_*`` variables a shell exports to use the cluster as the admin."""
    return {k: v for k, v in {"RENKEI_KAFKA_BOOTSTRAP": kafka.bootstrap, **kafka.environment()}.items() if v}


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")


async def cmd_cluster(settings: Settings, args: argparse.Namespace) -> int:
    from infra.platform.cluster import read_state, stop_recorded

    home = cluster_home(settings)
    if args.cluster_action == "up":
        return await _up(settings, args, home)
    if args.cluster_action == "down":
        stopped = stop_recorded(home)
        if args.purge and home.exists():
            shutil.rmtree(home)
        if args.json:
            _print_json({"stopped": [n.node_id for n in stopped], "purged": bool(args.purge), "home": str(home)})
        else:
            print(f"stopped {len(stopped)} node(s) under {home}" + ("; deleted it" if args.purge else ""))
        return 0
    # The JSON shape (docs/cli.md) is the state file's, less the pid-reuse marker, plus "alive".
    nodes = [{"node_id": n.node_id, "pid": n.pid, "endpoint": n.endpoint, "log": n.log, "alive": n.alive()}
             for n in read_state(home)]
    if args.json:
        _print_json({"home": str(home), "nodes": nodes})
    else:
        for row in nodes or [{"node_id": "-", "pid": "-", "endpoint": "no cluster recorded", "alive": False}]:
            print(f"node {row['node_id']}  pid {row['pid']}  {row['endpoint']}  {'up' if row['alive'] else 'DOWN'}")
    return 0 if nodes and all(row["alive"] for row in nodes) else 1


async def _up(settings: Settings, args: argparse.Namespace, home: Path) -> int:
    from infra.core.errors import StackError
    from infra.domain.participants import participants_of
    from infra.platform import kafka_broker as kb
    from infra.platform.acls import ADMIN, principals
    from infra.platform.cluster import KafkaCluster

    java = kb.find_java(settings.embedded_java)
    if java is None or java.major < kb.MIN_JAVA:
        raise StackError(f"the cluster needs Java {kb.MIN_JAVA}+ (apt-get install openjdk-17-jre-headless)")
    dist = kb.fetch_distribution(settings.resolved_kafka_cache,
                                 notify=None if args.json else lambda line: print(line, file=sys.stderr))
    users = principals(participants_of(settings), simulated_banks=True)
    cluster = KafkaCluster(home, dist, java, users, base_port=args.base_port,
                           notify=None if args.json else lambda line: print(line, file=sys.stderr))
    await cluster.start()
    env = client_environment(cluster.client(ADMIN))
    if args.json:
        _print_json({"home": str(home), "bootstrap": cluster.bootstrap, "ca_file": str(cluster.tls.ca_file),
                     "credentials_dir": str(cluster.credentials.folder), "users": cluster.users, "environment": env,
                     "nodes": [{"node_id": n, "pid": node.pid, "endpoint": node.config.bootstrap}
                               for n, node in cluster.nodes.items()]})
    else:
        print(f"three Kafka nodes serving at {cluster.bootstrap} (SASL_SSL, SCRAM-SHA-512), home {home}")
        print("as the cluster's admin, in a shell:")
        for key, value in env.items():
            print(f"  export {key}={value}")
        print("then: renkei topics apply && renkei acls apply --with-bank-simulator;  stop: renkei cluster down")
    return 0


async def cmd_acls(settings: Settings, args: argparse.Namespace) -> int:
    from infra.domain.participants import participants_of
    from infra.platform.acls import acl_bindings, kafka_acls_commands
    from infra.platform.topics import TopicNames

    prefix = settings.kafka.topic_prefix
    bindings = acl_bindings(TopicNames(prefix), participants_of(settings),
                            simulated_banks=args.with_bank_simulator)
    if args.acls_action == "apply":
        from infra.core.errors import ConfigError
        from infra.platform.kafka_admin import apply_acls

        if not settings.kafka.bootstrap:  # the embedded broker has no authorizer: nothing to apply ACLs to
            raise ConfigError("renkei acls apply needs a cluster with an authorizer: set RENKEI_KAFKA_BOOTSTRAP "
                              "and its SASL settings (as a super user, e.g. admin; `renkei cluster up` prints them)")

        results = await apply_acls(settings.kafka, bindings, prefix=prefix, prune=args.prune)
        if args.json:
            _print_json({"acls": [r.to_json() for r in results]})
        else:
            for r in results:
                b = r.binding
                print(f"{r.status:8} {b.principal} {b.operation} {b.resource_type} {b.resource} ({b.pattern})")
        return 0
    if args.json:
        _print_json({"acls": [dataclasses.asdict(b) for b in bindings]})
    else:
        sys.stdout.write("\n".join(kafka_acls_commands(bindings)) + "\n")
    return 0


def register(add: Any) -> None:
    """Add ``renkei cluster`` and ``renkei acls`` (``add(name, handler, help)`` from infra.cli)."""
    cluster = add("cluster", cmd_cluster, "a secured three-node Apache Kafka cluster on loopback "
                                          "(SASL_SSL, SCRAM, ACLs, replication 3), as production runs one")
    cluster.add_argument("cluster_action", choices=["up", "down", "status"], metavar="up|down|status")
    cluster.add_argument("--base-port", type=int, default=0,
                         help="up: node n listens on BASE+2(n-1) (clients) and the next port (controller); "
                              "0 = free ports, kept for later starts")
    cluster.add_argument("--purge", action="store_true", help="down: also delete the cluster's folder")
    acls = add("acls", cmd_acls, "the Kafka ACLs that confine each participant: print them "
                                 "(kafka-acls.sh lines) or apply them with the admin API")
    acls.add_argument("acls_action", nargs="?", choices=["print", "apply"], default="print", metavar="print|apply")
    acls.add_argument("--with-bank-simulator", action="store_true",
                      help="also the bank simulator's principal `banks` (reads every simulated bank's inbox)")
    acls.add_argument("--prune", action="store_true",
                      help="apply: remove bindings on the prefix's resources the platform no longer generates")


__all__ = ["client_environment", "cluster_home", "cmd_acls", "cmd_cluster", "register"]
