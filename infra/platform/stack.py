"""The running platform: embedded stack (where configured) + topic layout + workers.

``Platform`` is what ``renkei up`` starts and ``renkei demo`` uses.  Worker
processes (hub, registry, simulated participants) are registered in
``WORKERS`` by the modules that provide them and are started as supervised
children recorded next to the broker and PostgreSQL in ``stack.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from infra.core.errors import StackError
from infra.core.settings import Settings
from infra.platform.acls import BANK_SIMULATOR, KEY_PUBLISHER
from infra.platform.embedded import ComponentStatus, EmbeddedStack, process_alive, spawn_python


@dataclass(frozen=True)
class WorkerSpec:
    """A worker process: ``python -m module`` with args derived from the settings."""

    name: str
    module: str
    args: Callable[[Settings], list[str]]
    group: Callable[[Settings], str] | None = None  # consumer group whose membership means "ready"
    principal: str = ""  # the Kafka principal it logs in as on a secured cluster (infra.platform.acls); "" = its name


def settings_args(settings: Settings) -> list[str]:
    """CLI flags that hand a worker the platform's concrete endpoints and folders.

    PostgreSQL is not among them: a worker gets it from its environment (:func:`settings_env`).
    """
    return [
        "--kafka-bootstrap", settings.kafka.bootstrap,
        "--state-dir", str(settings.state_dir),
        "--topic-prefix", settings.kafka.topic_prefix,
        "--broker", settings.kafka.broker,  # the kind running, so workers know whether Tansu's workarounds apply
        "--banks", str(settings.banks),
        "--registry-check-deadline", str(settings.registry_check_deadline_s),
        "--lookup-deadline-inheritance", str(settings.lookup_deadline_inheritance_s),
        "--lookup-deadline-disaster", str(settings.lookup_deadline_disaster_s),
        "--lookup-reminder-interval", str(settings.lookup_reminder_interval_s),
        "--numbering-deadline", str(settings.numbering_deadline_s),
        *(["--participants-file", str(settings.participants_file)] if settings.participants_file else []),
    ]


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that hand a child process the platform's PostgreSQL (spawn it with them
    next to :func:`settings_args`).

    The DSN goes without any secret or the administrator's password file: a child connects as
    component roles only, their secrets in the roles' password file named here by its path. Nothing
    secret reaches a command line (``ps``) or the environment.
    """
    from infra.platform.pgdsn import public_dsn

    return {
        "RENKEI_PG_DSN": public_dsn(settings.pg_dsn),
        "RENKEI_PG_PASSFILE": str(settings.resolved_pg_passfile.absolute()),
        "RENKEI_PG_ROLE_PREFIX": settings.pg_role_prefix,
        "RENKEI_PG_SCHEMA_PREFIX": settings.pg_schema_prefix,
        # How workers log (infra.logs), whichever layer set it: `renkei up` with log_format = "json" gets JSON.
        "RENKEI_LOG_LEVEL": settings.log_level,
        "RENKEI_LOG_FORMAT": settings.log_format,
    }


WORKERS: list[WorkerSpec] = [
    WorkerSpec("hub", "streams.hub_loop", settings_args, lambda s: f"{s.kafka.topic_prefix}.hub"),
    WorkerSpec("registry", "streams.registry", settings_args, lambda s: f"{s.kafka.topic_prefix}.registry"),
    WorkerSpec("banks", "connectors.bank_sim", settings_args, lambda s: f"{s.kafka.topic_prefix}.banks",
               principal=BANK_SIMULATOR),
    WorkerSpec("dicj", "connectors.dicj", settings_args, lambda s: f"{s.kafka.topic_prefix}.dicj"),
]
"""Workers `renkei up` starts, in order, each a supervised child process."""


class Platform:
    """Start/stop the whole platform the same way for the CLI, the demo and tests."""

    def __init__(self, settings: Settings, workers: list[WorkerSpec] | None = None, *,
                 die_with_parent: bool = False) -> None:
        self.base_settings = settings
        self.die_with_parent = die_with_parent  # tests: a killed run leaves no process behind
        self.settings = settings
        self.workers = WORKERS if workers is None else workers
        self.stack = EmbeddedStack.for_settings(
            settings,
            kafka_port=settings.embedded_kafka_port,
            pg_port=settings.embedded_pg_port,
            with_broker=settings.embedded_kafka,
            with_postgres=settings.embedded_pg,
            die_with_parent=die_with_parent,
        )
        self._reported_dead: set[str] = set()
        self._ops_ports: dict[str, int] = {}  # worker name -> its /metrics port (ops_args)

    async def __aenter__(self) -> Platform:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @property
    def provisions_database(self) -> bool:
        """The platform creates the component roles and schemas where it can act as the administrator:
        its embedded PostgreSQL, or a configured DSN that names a user (otherwise an administrator
        applied `renkei db roles` beforehand: docs/production.md)."""
        from infra.platform.pgdsn import names_user

        return self.base_settings.embedded_pg or names_user(self.base_settings.pg_dsn)

    async def start(self) -> None:
        from infra.domain.participants import participants_of
        from infra.platform.kafka import admin_client
        from infra.platform.pgprovision import provision_database
        from infra.platform.topics import TopicNames, apply_layout, layout

        await self.stack.start()
        try:
            self.settings = self.base_settings.with_endpoints(
                bootstrap=self.base_settings.kafka.bootstrap or self.stack.bootstrap,
                pg_dsn=self.base_settings.pg_dsn or self.stack.pg_dsn,
                broker=self.stack.broker_kind or None,
            )
            self.participants = participants_of(self.settings)
            if self.provisions_database:
                await provision_database(self.settings, reassert=True, participants=self.participants)
            admin = admin_client(self.settings)
            await admin.start()
            try:
                await apply_layout(admin, layout(TopicNames(self.settings.kafka.topic_prefix), self.participants),
                                   replication=self.settings.kafka.replication)
            finally:
                await admin.close()
            await bootstrap_keys(self.settings.as_principal(KEY_PUBLISHER), self.participants)
            for worker in self.workers:
                self.start_worker(worker)
        except BaseException:
            await self.stack.stop()
            raise

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every worker's consumer group has members and every worker reports ``ok`` on /health,
        then grant the cross-component rights on the tables the workers created (infra.platform.pglayout).

        The group alone is not enough: a faust worker joins its group while its start-up task (keys,
        database migrations) still runs, and Apache Kafka stabilises a group quickly, so a caller
        could otherwise query a table the worker has not created yet.
        """
        import asyncio
        import time

        from infra.platform.metrics_server import add_worker_health
        from infra.platform.pgprovision import grant_shared_when_ready

        deadline = time.monotonic() + timeout
        await wait_for_groups(self.settings, [w.group(self.settings) for w in self.workers if w.group], timeout)
        names = {w.name for w in self.workers}
        while True:
            rows = await add_worker_health(self.stack.state_dir, [
                c.status().to_json() for c in self.stack.components.values() if c.name in names])
            waiting = [r["name"] for r in rows if r["health"] != "ok"]
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise StackError(f"workers not ready after {timeout:.0f} s: "
                                 + ", ".join(f"{r['name']} ({r['health'] or 'no endpoint yet'})"
                                             for r in rows if r["name"] in waiting))
            await asyncio.sleep(0.2)
        if self.provisions_database:
            await grant_shared_when_ready(self.settings, [w.name for w in self.workers],
                                          timeout=max(10.0, deadline - time.monotonic()),
                                          participants=self.participants)

    def start_worker(self, worker: WorkerSpec, *, name: str | None = None) -> None:
        name = name or worker.name
        log = self.stack.logs_dir / f"{name}.log"
        # On a secured cluster each worker logs in as its own principal; its credentials go by environment.
        kafka_env = self.settings.as_principal(worker.principal or worker.name).kafka.environment()
        proc = spawn_python(worker.module, [*worker.args(self.settings), *self.ops_args(name)], log,
                            env={**settings_env(self.settings), **kafka_env},
                            die_with_parent=self.die_with_parent)
        # The endpoint stays empty here: the worker publishes its metrics URL itself once serving
        # (infra.platform.metrics), and `renkei status` fills it in from there.
        self.stack.adopt(name, proc, "", log, worker.module)

    def ops_args(self, name: str) -> list[str]:
        """``--ops-host``/``--ops-port`` for worker ``name``: with ``ops_port`` set, the i-th worker name started
        gets ``ops_port + i`` (hub, registry, banks, dicj: +0 … +3; ``hub-2`` next), the same port again when it
        is restarted; with 0, every worker takes a free port."""
        base = self.settings.ops_port
        port = 0 if base == 0 else self._ops_ports.setdefault(name, base + len(self._ops_ports))
        return ["--ops-host", self.settings.ops_host, "--ops-port", str(port)]

    async def stop_worker(self, name: str) -> None:
        """Stop one worker process (SIGTERM, SIGKILL after 10 s); ``start_worker`` brings it back."""
        await self.stack.stop_component(name)

    def status(self) -> list[ComponentStatus]:
        return [c.status() for c in self.stack.components.values()]

    def check_children(self) -> list[str]:
        """Names of components that died since the last call (each reported once)."""
        dead = []
        for c in self.stack.components.values():
            proc = self.stack._procs.get(c.name)
            if proc is not None:
                proc.poll()  # reap, so a dead child is not a zombie
            if c.name not in self._reported_dead and not process_alive(c.pid, c.cmd_marker):
                self._reported_dead.add(c.name)
                dead.append(c.name)
        return dead

    async def stop(self) -> None:
        await self.stack.stop()


async def bootstrap_keys(settings: Settings, participants: Any) -> None:
    """Create missing keys (embedded world) and publish what the key directory on the keys topic lacks.

    Only what is missing or newer (``infra.platform.keyadmin.sync``): a key revoked or retired, or a participant
    suspended, with ``renkei keys`` / ``renkei participants`` stays so across ``renkei down`` / ``up``,
    also when the broker lost the topic (the root holder's journal restores it as it was).
    """
    import asyncio

    from infra.platform.keyadmin import sync
    from infra.platform.keystore import KeyStore

    store = KeyStore.for_settings(settings)
    await asyncio.to_thread(store.bootstrap, participants)
    await sync(settings, store, participants)


async def wait_for_groups(settings: Settings, groups: list[str], timeout: float) -> None:
    """Poll the broker until each consumer group has at least one member with an assignment."""
    import asyncio
    import time

    from infra.core.errors import StackError
    from infra.platform.kafka import admin_client

    admin = admin_client(settings)
    await admin.start()
    deadline = time.monotonic() + timeout
    try:
        pending = set(groups)
        while pending:
            for group in list(pending):
                try:
                    described = await admin.describe_consumer_groups([group])
                except Exception:
                    continue
                for g in described:
                    members = g.groups[0][5] if hasattr(g, "groups") else []
                    if g.groups[0][2] == "Stable" and members:
                        pending.discard(group)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise StackError(f"workers did not join their consumer groups within {timeout:.0f} s: "
                                 f"{', '.join(sorted(pending))}; see the logs under {settings.state_dir / 'logs'}")
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
