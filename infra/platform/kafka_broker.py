"""The embedded Apache Kafka broker: KRaft nodes (combined controller + broker) as supervised children.

Why this file is long: the embedded broker's distribution, Java, node configuration and supervision are steps
of one start-up.

Where the pieces come from:

- the jars: ``infra/platform/kafka/pom.xml`` declares ``org.apache.kafka:kafka_2.13``; Maven's own
  dependency plugin copies its runtime classpath once into ``<cache>/kafka-<version>/libs``
  (:func:`fetch_distribution`). A folder is used only once it is complete, so an interrupted
  fetch is simply done again;
- Java 17+: the configured executable, else ``java`` on PATH (:func:`find_java`).

A node is a typed :class:`NodeConfig` rendered to ``server.properties``; :class:`KafkaNode`
formats its storage once (the same ``kafka.tools.StorageTool`` that ``kafka-storage.sh`` runs),
starts ``kafka.Kafka`` on it, waits until the broker is registered and serving, and stops it
with SIGTERM (controlled shutdown), then SIGKILL. ``infra.platform.embedded`` records the running node
in ``stack.json`` like its other children, so ``renkei status`` and ``down`` reach it too. The log directory and the formatted cluster
id are kept, so a restarted node has every topic and committed offset it had.

The embedded stack starts one node on loopback (:meth:`NodeConfig.single`); a cluster
(``infra.platform.cluster``) is three configs with the same voters and cluster id, SASL_SSL listeners and
security overrides, each node a :class:`KafkaNode` that reaches its readiness check with the
cluster's admin credentials (``client_options``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import functools
import re
import shutil
import signal
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.core.errors import StackError
from infra.crypto.certificates import write_file
from infra.platform.processes import spawn, terminate
from infra.platform.topics import MAX_RECORD_BYTES

PROJECT = Path(__file__).with_name("kafka")
POM = PROJECT / "pom.xml"
LOG4J_CONFIG = PROJECT / "log4j2.properties"
MIN_JAVA = 17  # Kafka 4.x brokers need Java 17+
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
COMPLETE = "COMPLETE"  # marker written into a distribution folder once Maven has filled it
STOP_TIMEOUT_S = 30.0  # a controlled shutdown of one node takes 1-3 s; SIGKILL after this
# A JVM broker starts in 3-10 s on an idle 2-core machine, but a minute and more when the cores are
# shared with test runs (measured at load average 12: docs/embedded.md); readiness is polled, so a
# generous limit costs nothing when it starts fast.
START_TIMEOUT_S = 180.0
FORMAT_TIMEOUT_S = 300.0  # one JVM tool run: seconds when idle, minutes at load average 30

# The JVM options kafka-run-class.sh uses for the broker, with a small heap: a 2-core machine
# shared with PostgreSQL, the workers and the tests. ExitOnOutOfMemoryError: a broken broker
# exits (and is reported), it does not limp on. TieredStopAtLevel=1 (C1 only, issue 18): on these
# shared cores C2 was still compiling a minute into steady low traffic (14 % of a core, more than the
# broker's request handling), and the idle broker and its CPU per STEP2 round trip fell by a third
# without it. Peak throughput is not settled: alternated runs on a fresh broker moved more records per
# second, the full bench after the change a fifth fewer (one run each; docs/performance.md, "session 8").
# A production cluster runs on machines of its own and keeps Kafka's own JVM options.
JVM_OPTIONS = ("-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
               "-XX:+ExplicitGCInvokesConcurrent", "-XX:MaxInlineLevel=15", "-XX:+ExitOnOutOfMemoryError",
               "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true")
# A short-lived tool (the storage formatter) starts in a quarter of the time without C2 and G1
# (measured at load average 30: 10.6 s instead of 46.8 s, 1.8 s of CPU instead of 4.2 s).
TOOL_JVM_OPTIONS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Djava.awt.headless=true")


# --------------------------------------------------------------------------- the distribution


@functools.lru_cache(maxsize=1)
def kafka_version() -> str:
    """The Kafka release the pom declares (the one place it is written)."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = ET.parse(POM).getroot().findtext("m:properties/m:kafka.version", namespaces=ns)
    if not version:
        raise StackError(f"{POM} declares no kafka.version property")
    return version.strip()


@dataclass(frozen=True)
class Distribution:
    """A complete, Maven-resolved runtime classpath of one Kafka release."""

    version: str
    libs: Path

    @property
    def classpath(self) -> str:
        return f"{self.libs}/*"


def distribution_dir(cache: Path, version: str | None = None) -> Path:
    return Path(cache) / f"kafka-{version or kafka_version()}"


def cached_distribution(cache: Path) -> Distribution | None:
    """The distribution under ``cache`` if Maven finished filling it, else None."""
    home = distribution_dir(cache)
    if (home / COMPLETE).is_file() and (home / "libs").is_dir():
        return Distribution(kafka_version(), home / "libs")
    return None


def maven_executable() -> str | None:
    return shutil.which("mvn")


def fetch_distribution(cache: Path, *, notify: Callable[[str], None] | None = None,
                       timeout: float = 900.0) -> Distribution:
    """Resolve the Kafka jars into ``cache`` with Maven, once; later calls return the cached folder.

    A file lock makes concurrent callers (a test run and ``renkei up``) wait for one fetch.
    """
    found = cached_distribution(cache)
    if found is not None:
        return found
    home = distribution_dir(cache)
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = cached_distribution(cache)
        if found is not None:
            return found
        mvn = maven_executable()
        if mvn is None:
            raise StackError(
                f"Maven is needed once to fetch Apache Kafka {kafka_version()} from Maven Central, and `mvn` "
                "is not on PATH: install it (Debian/Ubuntu: apt-get install maven) and run `renkei broker fetch`, "
                "or use the memory-only broker with --broker tansu")
        if notify:
            notify(f"fetching Apache Kafka {kafka_version()} with Maven into {home} (once) ...")
        partial = home / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        log = home / "maven.log"
        argv = [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies", f"-Dlibs.dir={partial}"]
        try:
            with open(log, "wb") as out:
                result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise StackError(f"Maven did not finish fetching Apache Kafka within {timeout:.0f} s; see {log}") from None
        if result.returncode != 0 or not any(partial.glob("kafka_2.13-*.jar")):
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise StackError(f"Maven could not fetch Apache Kafka {kafka_version()} (exit {result.returncode}); "
                             f"see {log}: {' | '.join(tail)}")
        shutil.rmtree(home / "libs", ignore_errors=True)
        partial.rename(home / "libs")
        (home / COMPLETE).write_text("\n".join(sorted(p.name for p in (home / "libs").iterdir())) + "\n")
    return Distribution(kafka_version(), home / "libs")


# --------------------------------------------------------------------------- Java


@dataclass(frozen=True)
class JavaRuntime:
    path: str
    version: str  # as `java -version` prints it, e.g. 17.0.15

    @property
    def major(self) -> int:
        head = self.version.split(".")
        return int(head[1]) if head[0] == "1" else int(re.match(r"\d+", head[0]).group())  # type: ignore[union-attr]


_JAVA_VERSION = re.compile(r'version "([^"]+)"')


@functools.lru_cache(maxsize=8)
def find_java(configured: str = "") -> JavaRuntime | None:
    """The Java runtime to use: ``configured`` (a java executable) or ``java`` on PATH; None if none runs."""
    path = configured or shutil.which("java")
    if not path:
        return None
    try:
        out = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _JAVA_VERSION.search(out.stderr + out.stdout)
    return JavaRuntime(path, match.group(1)) if match else None


@dataclass(frozen=True)
class BrokerChoice:
    """Which embedded broker runs, and the one-line warning to show when it is the fallback."""

    kind: str  # kafka | tansu
    warning: str = ""


def choose_broker(requested: str, java: JavaRuntime | None, *, cached: bool, maven: bool) -> BrokerChoice:
    """``auto``: Apache Kafka when Java 17+ runs and its jars are cached or Maven can fetch them, else Tansu.

    ``kafka`` without what it needs is an error that says what to install; ``tansu`` is taken as asked.
    """
    if requested == "tansu":
        return BrokerChoice("tansu")
    missing = ""
    if java is None:
        missing = "no Java found"
    elif java.major < MIN_JAVA:
        missing = f"Java {java.version} at {java.path} is older than {MIN_JAVA}"
    elif not cached and not maven:
        missing = f"Apache Kafka {kafka_version()} is not fetched yet and Maven (mvn) is not installed"
    if not missing:
        return BrokerChoice("kafka")
    if requested == "kafka":
        raise StackError(f"the embedded Apache Kafka cannot start: {missing}. Install Java {MIN_JAVA}+ and Maven "
                         "(Debian/Ubuntu: apt-get install openjdk-17-jre-headless maven), or use --broker tansu")
    return BrokerChoice("tansu", f"{missing}: using the memory-only Tansu broker, whose topics and offsets do NOT "
                                 f"survive a restart (install Java {MIN_JAVA}+ and Maven for the durable Apache Kafka)")


# --------------------------------------------------------------------------- node configuration


@dataclass(frozen=True)
class Listener:
    """One listener of a node: its name, security protocol and loopback address."""

    name: str  # e.g. CLIENT, CONTROLLER
    port: int
    protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    host: str = "127.0.0.1"

    def url(self) -> str:
        return f"{self.name}://{self.host}:{self.port}"


@dataclass(frozen=True)
class Voter:
    """A controller of the KRaft quorum (static voters: ports may change between restarts)."""

    node_id: int
    host: str
    port: int

    def spec(self) -> str:
        return f"{self.node_id}@{self.host}:{self.port}"


# What one node alone need not do twice a second while idle (issue 18, idle cost). The active controller
# appends a no-op record to the metadata log every metadata.max.idle.interval.ms (500 ms by default,
# KIP-835) so that brokers can tell a live quorum from a stalled one; the record is written and
# flushed to the metadata log and applied by the broker. With one node there is no other broker to
# tell: every 10 s is plenty. No durability setting is touched (acks, flush, replication as before).
SINGLE_NODE_IDLE: Mapping[str, str] = {"metadata.max.idle.interval.ms": "10000"}


@dataclass(frozen=True)
class NodeConfig:
    """A KRaft node running as controller and broker, typed; :meth:`properties` is its server.properties.

    ``home`` holds ``server.properties`` and the log directory ``data/``. Replication settings
    default to one node; ``overrides`` carries what a cluster adds (SSL/SASL, the authorizer),
    written last so it wins.
    """

    node_id: int
    home: Path
    client: Listener
    controller: Listener
    voters: tuple[Voter, ...]
    replication: int = 1  # default.replication.factor and the internal topics' replication
    min_insync_replicas: int = 1
    heap_mb: int = 512
    overrides: Mapping[str, str] = field(default_factory=dict)

    @staticmethod
    def single(home: Path, port: int, controller_port: int, *, heap_mb: int = 512) -> NodeConfig:
        """One node on loopback: the embedded default."""
        controller = Listener("CONTROLLER", controller_port)
        return NodeConfig(1, Path(home), Listener("CLIENT", port), controller,
                          (Voter(1, controller.host, controller.port),), heap_mb=heap_mb, overrides=SINGLE_NODE_IDLE)

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def properties_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def bootstrap(self) -> str:
        return f"{self.client.host}:{self.client.port}"

    def properties(self) -> dict[str, str]:
        internal_isr = str(min(self.min_insync_replicas, self.replication))
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": ",".join(v.spec() for v in self.voters),
            "listeners": f"{self.client.url()},{self.controller.url()}",
            "advertised.listeners": self.client.url(),
            "listener.security.protocol.map":
                f"{self.client.name}:{self.client.protocol},{self.controller.name}:{self.controller.protocol}",
            "controller.listener.names": self.controller.name,
            "inter.broker.listener.name": self.client.name,
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "default.replication.factor": str(self.replication),
            "min.insync.replicas": str(self.min_insync_replicas),
            "offsets.topic.replication.factor": str(self.replication),
            "transaction.state.log.replication.factor": str(self.replication),
            "transaction.state.log.min.isr": internal_isr,
            "share.coordinator.state.topic.replication.factor": str(self.replication),
            "share.coordinator.state.topic.min.isr": internal_isr,
            # Fewer internal partitions than the defaults (50): created at the first group or
            # transaction, each is a log to open at start; a few are plenty for one machine.
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.num.partitions": "4",
            # A group's first member starts at once instead of waiting 3 s for others.
            "group.initial.rebalance.delay.ms": "0",
            # Threads sized for 2 cores; idle threads cost memory, not CPU.
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "2",
            "unclean.leader.election.enable": "false",
            # Topics created outside the layout (which declares it per topic) take the same size limit.
            "message.max.bytes": str(MAX_RECORD_BYTES),
        }
        props.update(self.overrides)
        return props

    def render(self) -> str:
        lines = ["# Written by Renkei (infra/platform/kafka_broker.py) at every start; edits are overwritten."]
        lines += [f"{k}={v}" for k, v in self.properties().items()]
        return "\n".join(lines) + "\n"

    def jvm_argv(self, java: JavaRuntime, dist: Distribution, main: str, *args: str, heap_mb: int | None = None,
                 options: tuple[str, ...] = JVM_OPTIONS) -> list[str]:
        heap = heap_mb or self.heap_mb
        return [java.path, f"-Xms{max(64, heap // 4)}m", f"-Xmx{heap}m", *options,
                f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", "-cp", dist.classpath, main, *args]


def _argfile_quote(arg: str) -> str:
    """``arg`` inside double quotes in a Java argument file (backslashes and quotes escaped)."""
    return arg.replace("\\", "\\\\").replace('"', '\\"')


def new_cluster_id() -> str:
    """A cluster id as Kafka writes them (``kafka-storage.sh random-uuid``): 16 random bytes, base64url.

    Like Kafka's own ``Uuid.randomUuid()``, never one that starts with ``-``: the storage tool would read
    ``--cluster-id -xyz…`` as a missing argument and refuse to format (one start in 64 failed that way)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def formatted_cluster_id(data_dir: Path) -> str | None:
    """The cluster id in ``data_dir/meta.properties``, or None if the directory is not formatted."""
    try:
        text = (Path(data_dir) / "meta.properties").read_text()
    except FileNotFoundError:
        return None
    match = re.search(r"^cluster\.id=(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


# --------------------------------------------------------------------------- the supervised node


class KafkaNode:
    """One supervised KRaft node: format once (:meth:`format_storage`), :meth:`spawn`,
    :meth:`wait_ready`, :meth:`stop`.

    The log directory is formatted on first use only; afterwards the cluster id and every
    topic, offset and group in it are reused.
    """

    def __init__(self, config: NodeConfig, dist: Distribution, java: JavaRuntime, log: Path, *,
                 die_with_parent: bool = False, client_options: Mapping[str, Any] | None = None) -> None:
        self.config = config
        self.dist = dist
        self.java = java
        self.log = Path(log)
        self.die_with_parent = die_with_parent
        # aiokafka options (security, credentials) for the readiness check; plaintext when None
        self.client_options = dict(client_options or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.formatted_now = False  # True when this start formatted the storage (a cold first start)

    @property
    def cmd_marker(self) -> str:
        """A command-line substring unique to this node (its properties file): pid-reuse-safe liveness."""
        return str(self.config.properties_file)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise StackError("the Kafka node has not been started")
        return self.proc.pid

    def write_properties(self) -> None:
        """Write server.properties, readable by its owner only: a secured node's file holds its passwords."""
        self.config.home.mkdir(parents=True, exist_ok=True)
        write_file(self.config.properties_file, self.config.render().encode(), 0o600)

    def format_storage(self, cluster_id: str, *extra: str) -> str:
        """Format the log directory once (``kafka-storage.sh format``); returns the cluster id in use.

        ``extra`` is passed to the tool (e.g. ``--add-scram`` with a user's password for a SASL
        cluster). The tool's class and arguments go in a Java argument file (``java @file``, 0600,
        removed afterwards), so no password shows on a command line.
        """
        existing = formatted_cluster_id(self.config.data_dir)
        if existing is not None:
            return existing
        self.write_properties()
        args = [STORAGE_TOOL, "format", "--cluster-id", cluster_id, "--config", str(self.config.properties_file),
                *extra]
        argfile = self.config.home / "format.args"
        write_file(argfile, "".join(f'"{_argfile_quote(a)}"\n' for a in args).encode(), 0o600)
        argv = self.config.jvm_argv(self.java, self.dist, f"@{argfile}", heap_mb=256, options=TOOL_JVM_OPTIONS)
        try:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=FORMAT_TIMEOUT_S,
                                    check=False)
        except subprocess.TimeoutExpired:
            raise StackError(f"formatting the Kafka log directory {self.config.data_dir} took more than "
                             f"{FORMAT_TIMEOUT_S:.0f} s") from None
        finally:
            argfile.unlink(missing_ok=True)
        with open(self.log, "ab") as out:  # the tool prints the SCRAM records it writes: keep them out of the log
            out.write(re.sub(rb"UserScramCredentialRecord\([^)]*\)", b"UserScramCredentialRecord(...)",
                             result.stdout + result.stderr))
        if result.returncode != 0:
            raise StackError(f"formatting the Kafka log directory {self.config.data_dir} failed "
                             f"(exit {result.returncode}); see {self.log}")
        self.formatted_now = True
        return cluster_id

    def spawn(self) -> None:
        self.write_properties()
        argv = self.config.jvm_argv(self.java, self.dist, MAIN_CLASS, str(self.config.properties_file))
        self.proc = spawn(argv, self.log, die_with_parent=self.die_with_parent)

    async def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until the node answers metadata with itself registered and a controller elected.

        An open port is not enough: the socket accepts before the broker has caught up with the
        metadata log, and a topic created then fails.
        """
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise StackError(f"the embedded Apache Kafka broker exited at start (code {self.proc.returncode}); "
                                 f"see {self.log}")
            last = await _serving(self.config.bootstrap, self.config.node_id, self.client_options)
            if not last:
                return
            await asyncio.sleep(0.2)
        raise StackError(f"the embedded Apache Kafka broker did not serve on {self.config.bootstrap} within "
                         f"{timeout:.0f} s ({last}); see {self.log}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (a controlled shutdown), then SIGKILL after ``timeout``; blocking."""
        if self.proc is not None:
            terminate(self.proc.pid, self.cmd_marker, self.proc, stop_signal=signal.SIGTERM, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would (no controlled shutdown), and reap the process; blocking."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(timeout=30)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


async def _serving(bootstrap: str, node_id: int, client_options: Mapping[str, Any] | None = None) -> str:
    """'' if the broker at ``bootstrap`` lists itself and a controller; else why not."""
    from aiokafka.admin import AIOKafkaAdminClient

    host, port = bootstrap.rsplit(":", 1)
    try:  # a plain connect first: a client would log every refused connection as an error
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 2)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    except (OSError, asyncio.TimeoutError):
        return "not listening yet"
    options = {**(client_options or {}), "bootstrap_servers": bootstrap}
    admin = AIOKafkaAdminClient(**options, request_timeout_ms=3000, connections_max_idle_ms=10000)
    try:
        await asyncio.wait_for(admin.start(), 5)
        cluster = await asyncio.wait_for(admin.describe_cluster(), 5)
    except Exception as exc:  # not listening yet, still starting: any client error means "not yet"
        return type(exc).__name__
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    if not any(b["node_id"] == node_id for b in cluster.get("brokers", [])):
        return "broker not registered yet"
    if cluster.get("controller_id", -1) < 0:
        return "no controller yet"
    return ""
