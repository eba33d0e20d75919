"""Test harness: one broker and one PostgreSQL per test session, isolated per test.

Where they come from, in order:
1. ``RENKEI_KAFKA_BOOTSTRAP`` / ``RENKEI_PG_DSN`` when set (an existing cluster);
2. testcontainers (Apache Kafka, PostgreSQL) when a Docker daemon answers;
3. the embedded stack under a temporary folder: Apache Kafka (KRaft, one node) and
   the embedded PostgreSQL. ``RENKEI_TEST_BROKER=tansu`` runs the suite on the Tansu
   fallback instead (``kafka`` insists on Apache Kafka; ``auto``, the default, takes
   Tansu only where Java 17+ is missing, with a warning).

The broker's kind is exported as ``RENKEI_BROKER`` so the CLI processes tests start
apply Tansu's workarounds exactly when the broker is Tansu.

Each test gets its own topic prefix and its own PostgreSQL namespace: every
component's schema under the test's prefix (``<unique>_hub``, ``<unique>_registry``,
…), owned by that component's role (``infra.platform.pglayout``), so tests never see each
other's data and components work with exactly the rights they have in production.
The component roles are created once per session, their secrets in a password file
of the session; the harness itself connects as the server's administrator.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

# `timeout` and CI stop a run with SIGTERM: turn it into KeyboardInterrupt so fixtures tear down
# (children are also tied to this process with die_with_parent, for SIGKILL).
signal.signal(signal.SIGTERM, signal.default_int_handler)

from infra.core.settings import KafkaSettings, Settings  # noqa: E402


@dataclass(frozen=True)
class Endpoints:
    bootstrap: str
    pg_dsn: str
    source: str  # env | testcontainers | embedded
    broker: str = "kafka"  # kafka | tansu (the embedded fallback); an external cluster is Apache Kafka


def _docker_containers(stack: contextlib.ExitStack) -> Endpoints | None:
    try:
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        kafka = stack.enter_context(KafkaContainer())
        pg = stack.enter_context(PostgresContainer("postgres:16", driver=None))
    except Exception:  # docker.errors.DockerException and friends: no daemon here
        return None
    return Endpoints(kafka.get_bootstrap_server(), pg.get_connection_url(), "testcontainers")


@pytest.fixture(scope="session")
async def endpoints(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Endpoints]:
    if os.environ.get("RENKEI_KAFKA_BOOTSTRAP") and os.environ.get("RENKEI_PG_DSN"):
        yield Endpoints(os.environ["RENKEI_KAFKA_BOOTSTRAP"], os.environ["RENKEI_PG_DSN"], "env",
                        os.environ.get("RENKEI_BROKER", "kafka").replace("auto", "kafka"))
        return
    with contextlib.ExitStack() as stack:
        found = _docker_containers(stack) if os.environ.get("RENKEI_TEST_DOCKER", "1") != "0" else None
        if found is not None:
            yield found
            return
    from infra.core.settings import load_settings
    from infra.platform.embedded import EmbeddedStack

    # The Java and jar cache of the machine (JAVA_HOME, RENKEI_EMBEDDED_*), not the test's settings.
    machine = load_settings(environ={k: v for k, v in os.environ.items() if k != "RENKEI_BROKER"})
    async with EmbeddedStack(tmp_path_factory.mktemp("stack"), die_with_parent=True,
                             broker=os.environ.get("RENKEI_TEST_BROKER", "auto"), java=machine.embedded_java,
                             kafka_cache=machine.resolved_kafka_cache) as embedded:
        os.environ["RENKEI_BROKER"] = embedded.broker_kind
        yield Endpoints(embedded.bootstrap, embedded.pg_dsn, "embedded", embedded.broker_kind)


@dataclass(frozen=True)
class Database:
    """The session's PostgreSQL: the administrator's DSN, the component roles' prefix and secrets."""

    admin_dsn: str
    passfile: Path
    role_prefix: str

    def settings(self, endpoints: Endpoints, *, namespace: str, state_dir: Path, **kw: object) -> Settings:
        """Settings on ``endpoints`` whose components work in the namespace ``namespace`` (schemas
        ``<namespace>_…``; topics under the prefix ``namespace``)."""
        kafka = KafkaSettings(bootstrap=endpoints.bootstrap, topic_prefix=namespace, broker=endpoints.broker)
        return Settings(kafka=kafka, pg_dsn=self.admin_dsn,
                        pg_passfile=self.passfile, pg_role_prefix=self.role_prefix,
                        pg_schema_prefix=f"{namespace}_", state_dir=state_dir, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
async def database(endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Database]:
    """The component roles live as long as the session (a server of another session's: under a prefix
    of this session's, dropped at the end)."""
    passfile = tmp_path_factory.mktemp("pg-secrets") / "pg-roles.pgpass"
    own_server = endpoints.source != "env"
    db = Database(endpoints.pg_dsn, passfile, "renkei_" if own_server else f"r{uuid.uuid4().hex[:6]}_")
    yield db
    if not own_server:
        import asyncpg

        conn = await asyncpg.connect(db.admin_dsn)
        try:
            for (role,) in await conn.fetch("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)",
                                            db.role_prefix):
                await conn.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')
        finally:
            await conn.close()


@pytest.fixture
def unique() -> str:
    return "t" + uuid.uuid4().hex[:10]


@contextlib.asynccontextmanager
async def namespace(settings: Settings) -> AsyncIterator[Settings]:
    """``settings``' component schemas (and any missing role), dropped afterwards."""
    from infra.platform.pgprovision import drop_database_namespace, provision_database

    await provision_database(settings)
    try:
        yield settings
    finally:
        await drop_database_namespace(settings)


@pytest.fixture
async def settings(endpoints: Endpoints, database: Database, unique: str, tmp_path: Path) -> AsyncIterator[Settings]:
    """Settings for one test: real endpoints, its own topic prefix, database namespace and state folder."""
    async with namespace(database.settings(endpoints, namespace=unique,
                                           state_dir=tmp_path / "state")) as s:
        yield s


@pytest.fixture
def pg_dsn(settings: Settings) -> str:
    """A component's DSN in the test's namespace (the hub's role: no more rights than a component has)."""
    from infra.platform.pgdsn import component_dsn

    return component_dsn(settings, "hub")
