"""Supervised child processes: start in their own session, check liveness safely, stop politely.

Shared by the embedded stack (``infra.platform.embedded``: PostgreSQL, Tansu, workers) and the
embedded Apache Kafka broker (``infra.platform.kafka_broker``), so both supervise the same way:
a child is alive only if its pid runs, is not a zombie and still has the expected
command line (pids are reused); stopping is the process's own stop signal, a wait,
then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from infra.core.errors import StackError


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
        # As the servers bind (Kafka and PostgreSQL set SO_REUSEADDR): only a listener makes the port busy,
        # not the TIME_WAIT connections a just-stopped server on that port leaves behind.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise StackError(
                f"port {port} on {host} is in use, so the {what} cannot start there: "
                f"stop whatever listens on it (e.g. `renkei down`, or `ss -ltnp 'sport = :{port}'` "
                f"to find it) or choose another port with {flag} (0 picks a free one)"
            ) from None


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


def uid_gid(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def spawn(argv: list[str], log: Path, *, user: str | None = None, env: dict[str, str] | None = None,
          cwd: Path | None = None, die_with_parent: bool = False) -> subprocess.Popen[bytes]:
    """Start a child in its own session (it outlives a detached `renkei up`), output to ``log``.

    ``die_with_parent`` ties the child's life to its starter (tests: a killed test run leaves no
    broker, database or worker behind).
    """
    with open(log, "ab") as fh:
        if user:
            os.chown(log, *uid_gid(user))
        try:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                start_new_session=True, user=user, env=env, cwd=cwd,
                preexec_fn=_die_with_parent_hook() if die_with_parent and sys.platform == "linux" else None,
            )
        except OSError as exc:
            raise StackError(f"could not start {Path(argv[0]).name}: {exc.strerror}") from None


def terminate(pid: int, cmd_marker: str, proc: subprocess.Popen[bytes] | None, *,
              stop_signal: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """``stop_signal``, wait up to ``timeout``, then SIGKILL; reap our own child so none is left as a zombie."""
    if process_alive(pid, cmd_marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, stop_signal)
    deadline = time.monotonic() + timeout
    while process_alive(pid, cmd_marker) and time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    if process_alive(pid, cmd_marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
