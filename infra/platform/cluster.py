"""A three-node Apache Kafka cluster on loopback, secured as production runs one (``renkei cluster``, the tests).

What runs (docs/embedded.md, "A three-node cluster"; docs/production.md deploys the same settings):

- three KRaft nodes, each controller and broker in one JVM (combined mode: a production cluster may
  split the roles, the security and replication settings are the same), one static quorum of three
  voters; replication factor 3 and ``min.insync.replicas=2`` for every topic, the internal ones
  included, no automatic topic creation, no unclean leader election;
- clients on the ``CLIENT`` listener, SASL_SSL with SCRAM-SHA-512 over TLS 1.2+, the brokers'
  certificates issued from the cluster's own CA (``infra.platform.cluster_tls``). The brokers replicate over
  the same listener as ``User:broker``. The ``CONTROLLER`` listener is mutual TLS (``CN=broker`` maps
  to ``User:broker``): SCRAM cannot authenticate the controllers, whose credentials live in the
  metadata the controllers themselves serve;
- the StandardAuthorizer with ``allow.everyone.if.no.acl.found=false`` and super users ``broker``
  and ``admin`` only: every other principal gets what ``renkei acls apply`` grants, nothing more;
- a SCRAM user per principal (``infra.platform.acls.principals``) with a generated password in
  ``credentials/<user>.password`` (0600), created when the storage is formatted (``--add-scram``,
  through a Java argument file, so no password is on a command line); users added later (a new
  participant) are created at the next start with the admin API.

The home folder (``<state>/cluster`` for ``renkei cluster up``, a temporary one in tests) holds
``tls/``, ``credentials/``, ``node-<id>/`` (``server.properties`` 0600 and the log directory
``data/``), ``logs/node-<id>.log``, ``layout.json`` (cluster id and ports, kept so a restarted
cluster keeps its addresses) and ``cluster.json`` (the running nodes' pids, for ``renkei cluster
down`` and ``status`` from another process). Stopping keeps everything: the next start has every
topic, record, group offset, ACL and user.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from infra.core.errors import StackError
from infra.core.settings import KafkaSettings
from infra.crypto.certificates import ORGANIZATION, write_file
from infra.platform.acls import ADMIN, BROKER
from infra.platform.cluster_tls import ClusterTls
from infra.platform.kafka_broker import (
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    Distribution,
    JavaRuntime,
    KafkaNode,
    Listener,
    NodeConfig,
    Voter,
    new_cluster_id,
)
from infra.platform.processes import check_port_free, free_port, process_alive, terminate

NODE_IDS = (1, 2, 3)
HOST = "127.0.0.1"
HOSTS = [HOST, "localhost"]  # what the broker certificates name
REPLICATION = 3
MIN_INSYNC_REPLICAS = 2
SCRAM_MECHANISM = "SCRAM-SHA-512"
# Three JVMs starting together on a shared 2-core machine: a whole-cluster restart at load average 30 left a
# node's broker in STARTING for over 180 s (its controller's events took 2.4 s each); readiness is polled, so
# a generous limit costs nothing when the nodes start fast.
CLUSTER_START_TIMEOUT_S = 2.5 * START_TIMEOUT_S
HEAP_MB = 384  # per node: three JVMs beside PostgreSQL, the workers and the tests on 2 cores and 24 GiB
STATE_FILE = "cluster.json"
LAYOUT_FILE = "layout.json"
CLIENT_LISTENER = "CLIENT"
CONTROLLER_LISTENER = "CONTROLLER"
STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
SCRAM_LOGIN_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
# The controller listener's certificate subject (CN=broker,O=Renkei) is the principal User:broker.
PRINCIPAL_MAPPING = f"RULE:^CN=([a-z0-9-]+),O={ORGANIZATION}$/$1/,DEFAULT"


def security_properties(*, super_users: Iterable[str] = (BROKER, ADMIN)) -> dict[str, str]:
    """The security and durability settings every node has, without paths or secrets.

    infra/compose.yaml must say the same (a unit test compares them): what was tested is what is deployed.
    """
    return {
        "listener.security.protocol.map": f"{CLIENT_LISTENER}:SASL_SSL,{CONTROLLER_LISTENER}:SSL",
        "inter.broker.listener.name": CLIENT_LISTENER,
        "controller.listener.names": CONTROLLER_LISTENER,
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
        f"listener.name.{CONTROLLER_LISTENER.lower()}.ssl.client.auth": "required",
        "ssl.principal.mapping.rules": PRINCIPAL_MAPPING,
        "ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
        "ssl.endpoint.identification.algorithm": "https",
        "ssl.keystore.type": "PKCS12",
        "ssl.truststore.type": "PEM",
        "authorizer.class.name": STANDARD_AUTHORIZER,
        "allow.everyone.if.no.acl.found": "false",
        "super.users": ";".join(f"User:{u}" for u in super_users),
        "auto.create.topics.enable": "false",
        "unclean.leader.election.enable": "false",
        "default.replication.factor": str(REPLICATION),
        "min.insync.replicas": str(MIN_INSYNC_REPLICAS),
        "offsets.topic.replication.factor": str(REPLICATION),
        "transaction.state.log.replication.factor": str(REPLICATION),
        "transaction.state.log.min.isr": str(MIN_INSYNC_REPLICAS),
    }


def scram_jaas(user: str, password: str) -> str:
    return f'{SCRAM_LOGIN_MODULE} required username="{user}" password="{password}";'


@dataclass(frozen=True)
class NodePorts:
    port: int
    controller_port: int


@dataclass(frozen=True)
class ClusterLayout:
    """What stays the same across starts: the cluster id and each node's ports."""

    cluster_id: str
    ports: dict[int, NodePorts]

    @staticmethod
    def new(base_port: int = 0) -> ClusterLayout:
        if base_port:
            ports = {n: NodePorts(base_port + 2 * i, base_port + 2 * i + 1) for i, n in enumerate(NODE_IDS)}
        else:
            ports = {n: NodePorts(free_port(), free_port()) for n in NODE_IDS}
        return ClusterLayout(new_cluster_id(), ports)

    def to_json(self) -> dict[str, Any]:
        return {"cluster_id": self.cluster_id, "ports": {str(n): asdict(p) for n, p in self.ports.items()}}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> ClusterLayout:
        return ClusterLayout(data["cluster_id"], {int(n): NodePorts(**p) for n, p in data["ports"].items()})

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{HOST}:{p.port}" for p in self.ports.values())


@dataclass(frozen=True)
class Credentials:
    """The SCRAM users' password files (0600), one per principal."""

    folder: Path

    def file(self, user: str) -> Path:
        return self.folder / f"{user}.password"

    def password(self, user: str) -> str:
        return self.file(user).read_text().strip()

    def ensure(self, users: Iterable[str]) -> list[str]:
        """A generated password for each user that has none yet; returns the users created now."""
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        made = []
        for user in users:
            if not self.file(user).exists():
                write_file(self.file(user), secrets.token_urlsafe(24).encode() + b"\n", 0o600)
                made.append(user)
        return made

    def users(self) -> list[str]:
        return sorted(p.name.removesuffix(".password") for p in self.folder.glob("*.password"))


class KafkaCluster:
    """Three supervised KRaft nodes (see the module docstring); an async context manager.

    ``users`` are the SCRAM users besides ``broker`` and ``admin`` (``infra.platform.acls.principals``).
    :meth:`kill` / :meth:`restart` crash and bring back one node; :meth:`stop` / :meth:`start` the
    whole cluster, keeping its storage.
    """

    def __init__(self, home: Path, dist: Distribution, java: JavaRuntime, users: Iterable[str] = (), *,
                 heap_mb: int = HEAP_MB, base_port: int = 0, die_with_parent: bool = False,
                 notify: Callable[[str], None] | None = None) -> None:
        self.home = Path(home).absolute()
        self.dist, self.java = dist, java
        self.users = list(dict.fromkeys([BROKER, ADMIN, *users]))
        self.heap_mb = heap_mb
        self.base_port = base_port
        self.die_with_parent = die_with_parent
        self.notify = notify or (lambda _line: None)
        self.tls = ClusterTls(self.home / "tls")
        self.credentials = Credentials(self.home / "credentials")
        self.layout: ClusterLayout | None = None
        self.nodes: dict[int, KafkaNode] = {}

    # -- what clients need --------------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        if self.layout is None:
            raise StackError("the cluster has not been started")
        return self.layout.bootstrap

    def client(self, user: str = ADMIN, **overrides: Any) -> KafkaSettings:
        """Kafka settings that log in as ``user``, with the credentials folder for the processes it starts."""
        return KafkaSettings(bootstrap=self.bootstrap, security_protocol="SASL_SSL", ssl_cafile=str(self.tls.ca_file),
                             sasl_mechanism=SCRAM_MECHANISM, sasl_username=user,
                             sasl_password=self.credentials.password(user),
                             sasl_password_file=str(self.credentials.file(user)),
                             credentials_dir=str(self.credentials.folder), replication=REPLICATION,
                             broker="kafka", **overrides)

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    # -- configuration ------------------------------------------------------------------------------------
    def node_config(self, node_id: int) -> NodeConfig:
        assert self.layout is not None
        voters = tuple(Voter(n, HOST, p.controller_port) for n, p in self.layout.ports.items())
        ports = self.layout.ports[node_id]
        keystore = self.tls.keystore(node_id)
        overrides = security_properties() | {
            "ssl.keystore.location": str(keystore.path),
            "ssl.keystore.password": keystore.password,
            "ssl.key.password": keystore.password,
            "ssl.truststore.location": str(self.tls.ca_file),
            f"listener.name.{CLIENT_LISTENER.lower()}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config":
                scram_jaas(BROKER, self.credentials.password(BROKER)),
        }
        return NodeConfig(node_id, self.home / f"node-{node_id}", Listener(CLIENT_LISTENER, ports.port, "SASL_SSL"),
                          Listener(CONTROLLER_LISTENER, ports.controller_port, "SSL"), voters,
                          replication=REPLICATION, min_insync_replicas=MIN_INSYNC_REPLICAS, heap_mb=self.heap_mb,
                          overrides=overrides)

    def _load_layout(self) -> ClusterLayout:
        path = self.home / LAYOUT_FILE
        if path.exists():
            return ClusterLayout.from_json(json.loads(path.read_text()))
        layout = ClusterLayout.new(self.base_port)
        path.write_text(json.dumps(layout.to_json(), indent=2) + "\n")
        return layout

    def _admin_options(self) -> dict[str, Any]:
        return self.client(ADMIN).client_options()

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def __aenter__(self) -> KafkaCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def start(self, timeout: float = CLUSTER_START_TIMEOUT_S) -> None:
        """Prepare what is missing (TLS, users, storage), start the three nodes, wait until all serve."""
        running = [node for node in read_state(self.home) if node.alive()]
        if running:
            raise StackError(f"a cluster is already running under {self.home}: stop it first (`renkei cluster down`)")
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        self.layout = self._load_layout()
        for n, p in self.layout.ports.items():
            check_port_free(p.port, f"Kafka node {n}", "--base-port")
            check_port_free(p.controller_port, f"Kafka node {n}'s controller", "--base-port")
        await asyncio.to_thread(self.tls.ensure, list(NODE_IDS), HOSTS)
        self.credentials.ensure(self.users)
        scram = [arg for user in self.users
                 for arg in ("--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={self.credentials.password(user)}]")]
        self.nodes = {n: KafkaNode(self.node_config(n), self.dist, self.java, self.logs_dir / f"node-{n}.log",
                                   die_with_parent=self.die_with_parent, client_options=self._admin_options())
                      for n in NODE_IDS}
        try:
            await asyncio.gather(*(asyncio.to_thread(node.format_storage, self.layout.cluster_id, *scram)
                                   for node in self.nodes.values()))
            for node in self.nodes.values():
                node.spawn()
            self._write_state()
            await self.wait_ready(timeout)
            await self.ensure_users()
        except BaseException:
            await self.stop()
            raise

    async def wait_ready(self, timeout: float = CLUSTER_START_TIMEOUT_S) -> None:
        """Until every running node lists itself and a controller (a quorum needs two voters up)."""
        deadline = time.monotonic() + timeout
        for node in self.nodes.values():
            if node.running:
                await node.wait_ready(max(1.0, deadline - time.monotonic()))

    async def ensure_users(self) -> list[str]:
        """Create the SCRAM users the cluster does not know yet (added after formatting); returns them."""
        from infra.platform.kafka_admin import missing_users, upsert_users

        settings = self.client(ADMIN)
        missing = await missing_users(settings, self.users)
        if missing:
            await upsert_users(settings, {u: self.credentials.password(u) for u in missing}, SCRAM_MECHANISM)
            self.notify(f"created SCRAM users {', '.join(missing)}")
        return missing

    def kill(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would."""
        self.nodes[node_id].kill()

    async def restart(self, node_id: int, timeout: float = CLUSTER_START_TIMEOUT_S) -> None:
        """Start a stopped or killed node again on its storage and ports; wait until it serves."""
        node = self.nodes[node_id]
        if node.running:
            await asyncio.to_thread(node.stop)
        node.spawn()
        self._write_state()
        await node.wait_ready(timeout)

    async def stop(self) -> None:
        """A controlled shutdown of every node (the storage stays)."""
        await asyncio.gather(*(asyncio.to_thread(node.stop, STOP_TIMEOUT_S) for node in self.nodes.values()))
        (self.home / STATE_FILE).unlink(missing_ok=True)

    def _write_state(self) -> None:
        nodes = [asdict(RecordedNode(n, node.pid, node.cmd_marker, node.config.bootstrap, str(node.log)))
                 for n, node in self.nodes.items() if node.proc is not None]
        path = self.home / STATE_FILE
        path.write_text(json.dumps({"bootstrap": self.bootstrap, "ca_file": str(self.tls.ca_file),
                                    "credentials_dir": str(self.credentials.folder), "nodes": nodes}, indent=2) + "\n")


@dataclass(frozen=True)
class RecordedNode:
    """One node as the cluster's state file records it (what ``renkei cluster status|down`` reads back)."""

    node_id: int
    pid: int
    marker: str  # a substring of the process command line, to detect pid reuse
    endpoint: str
    log: str

    def alive(self) -> bool:
        return process_alive(self.pid, self.marker)


def read_state(home: Path) -> list[RecordedNode]:
    """The nodes a (running or crashed) cluster under ``home`` recorded."""
    path = Path(home) / STATE_FILE
    try:
        return [RecordedNode(**node) for node in json.loads(path.read_text()).get("nodes", [])]
    except FileNotFoundError:
        return []
    except (OSError, json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise StackError(f"{path} is unreadable ({type(exc).__name__})") from None


def stop_recorded(home: Path) -> list[RecordedNode]:
    """Stop the nodes recorded under ``home`` (``renkei cluster down`` from another process)."""
    nodes = read_state(home)
    for node in nodes:
        if node.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGTERM)
    for node in nodes:
        terminate(node.pid, node.marker, None, stop_signal=signal.SIGTERM, timeout=STOP_TIMEOUT_S)
    (Path(home) / STATE_FILE).unlink(missing_ok=True)
    return nodes


__all__ = ["HEAP_MB", "NODE_IDS", "REPLICATION", "SCRAM_MECHANISM", "ClusterLayout", "Credentials", "KafkaCluster",
           "RecordedNode", "read_state", "security_properties", "stop_recorded"]
