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

Each test gets its own topic prefix and its own PostgreSQL schema (the DSN
carries ``search_path``), so tests never see each other's data.
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

from infra.settings import KafkaSettings, Settings  # noqa: E402


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
    from infra.embedded import EmbeddedStack
    from infra.settings import load_settings

    # The Java and jar cache of the machine (JAVA_HOME, RENKEI_EMBEDDED_*), not the test's settings.
    machine = load_settings(environ={k: v for k, v in os.environ.items() if k != "RENKEI_BROKER"})
    async with EmbeddedStack(tmp_path_factory.mktemp("stack"), die_with_parent=True,
                             broker=os.environ.get("RENKEI_TEST_BROKER", "auto"), java=machine.embedded_java,
                             kafka_cache=machine.resolved_kafka_cache) as embedded:
        os.environ["RENKEI_BROKER"] = embedded.broker_kind
        yield Endpoints(embedded.bootstrap, embedded.pg_dsn, "embedded", embedded.broker_kind)


@pytest.fixture
def unique() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
async def pg_dsn(endpoints: Endpoints, unique: str) -> AsyncIterator[str]:
    """A DSN whose connections use a fresh schema (dropped after the test)."""
    import asyncpg

    conn = await asyncpg.connect(endpoints.pg_dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{unique}"')
    finally:
        await conn.close()
    sep = "&" if "?" in endpoints.pg_dsn else "?"
    yield f"{endpoints.pg_dsn}{sep}search_path={unique}"
    conn = await asyncpg.connect(endpoints.pg_dsn)
    try:
        await conn.execute(f'DROP SCHEMA "{unique}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def settings(endpoints: Endpoints, pg_dsn: str, unique: str, tmp_path: Path) -> Settings:
    """Settings for one test: real endpoints, its own topic prefix, schema and state folder."""
    return Settings(
        kafka=KafkaSettings(bootstrap=endpoints.bootstrap, topic_prefix=unique, broker=endpoints.broker),
        pg_dsn=pg_dsn,
        state_dir=tmp_path / "state",
    )
