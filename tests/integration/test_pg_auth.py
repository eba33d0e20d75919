"""PostgreSQL authenticates every client and each component gets only its own rights (issue 13, item 5).

Each attack runs against the real embedded server — a local user without the secret, a compromised
component using its own role against another component's data, a role trying to run a program on the
server, anyone reading a process's command line — and is refused, while STEP1/STEP2 traffic interleaved
with the attacks is still delivered.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import stat
import subprocess
import sys
import urllib.parse
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from infra.core.settings import Settings
from infra.domain.policy import BASIS_PROVISION, BASIS_REGISTRATION, DATA_PUBLIC_FUNDS_ACCOUNT
from infra.domain.validation import generate_my_number
from infra.platform.embedded import EmbeddedStack, read_state
from infra.platform.embedded_pg import superuser_passfile
from infra.platform.pgdsn import component_dsn, layout_for, public_dsn, records_dsn
from infra.platform.pgpass import read_passfile
from schemas import types as msg
from streams.client import BusClient
from tests.integration.test_connectors_support import hold_account

pytestmark = pytest.mark.integration

REPO = Path(__file__).parents[2]
AGENCY = "agency-nta"
PROCEDURE = "income-tax-refund"  # one AGENCY is entitled to (infra/domain/procedures.toml)
RNG = random.Random()
NOBODY = Path("/nonexistent/renkei-test.pgpass")  # no password file: what a local user without the secret has


async def refused(dsn: str, **kw: object) -> type[Exception]:
    """The exception class a connection attempt to ``dsn`` fails with (the test fails if it connects)."""
    try:
        conn = await asyncpg.connect(dsn, timeout=10, **kw)
    except (asyncpg.PostgresError, OSError) as exc:
        return type(exc)
    await conn.close()
    raise AssertionError("connected without the right secret")


async def denied(conn: asyncpg.Connection, sql: str, *args: object) -> str:
    """``sql`` is refused for lack of privilege (or by row security); returns the server's message."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError) as err:
        await conn.execute(sql, *args)
    return str(err.value)


def now() -> datetime:
    return datetime.now(UTC)


async def step1(settings: Settings, bus: BusClient, pg: asyncpg.Connection, bank: str = "9000") -> tuple[str, dict]:
    """Good traffic: a person registers their account through the portal (the bank confirms it is theirs)."""
    mn = generate_my_number(RNG)
    acct = {"bank_code": bank, "branch_code": "101", "account_type": "ORDINARY",
            "account_number": f"{uuid.uuid4().int % 10**7:07d}", "holder_kana": "ヤマダ タロウ"}
    await hold_account(settings, pg, mn, acct)
    answer = await bus.request("portal", type=msg.REGISTRATION_REQUEST, to="registry",
                               subject=await bus.token_for("portal", mn),
                               body={"operation": "REGISTER", "account": acct, "channel": "PORTAL",
                                     "requested_at": now()},
                               data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_REGISTRATION, timeout=90)
    assert answer.body["status"] == "DONE", answer.body
    return mn, acct


async def step2(bus: BusClient, mn: str) -> dict:
    """Good traffic: an agency asks which account to pay into."""
    answer = await bus.request(AGENCY, type=msg.PROVISION_INQUIRY, to="registry", subject=await bus.token_for(AGENCY, mn),
                               body={"procedure_code": PROCEDURE, "purpose": None, "requested_at": now()},
                               data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=BASIS_PROVISION, procedure=PROCEDURE,
                               timeout=90)
    return answer.body


# --- the server: a local user without the secret ----------------------------------------------------------


async def test_the_embedded_server_refuses_a_local_user_without_the_secret(tmp_path):
    state = tmp_path / "stack"
    async with EmbeddedStack(state, with_broker=False, die_with_parent=True) as stack:
        secret_file = superuser_passfile(state)
        secret = read_passfile(secret_file)["postgres"]
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(secret_file.parent.stat().st_mode) == 0o700
        dsn = stack.pg_dsn
        assert secret not in dsn and "passfile=" in dsn
        parts = urllib.parse.urlsplit(dsn)
        bare = f"postgresql://postgres@{parts.hostname}:{parts.port}/renkei"

        # the attacks: no password, a wrong one, another user name; the unix socket does not exist
        assert issubclass(await refused(bare, passfile=str(NOBODY)), asyncpg.InvalidAuthorizationSpecificationError)
        assert await refused(bare, password="guess") is asyncpg.InvalidPasswordError
        assert issubclass(await refused(f"postgresql://renkei_hub@{parts.hostname}:{parts.port}/renkei",
                                        password="guess"), asyncpg.InvalidAuthorizationSpecificationError)
        assert not list(Path("/tmp").glob(f".s.PGSQL.{parts.port}"))

        conn = await asyncpg.connect(dsn)  # with the secret, from the file the DSN names
        try:
            assert await conn.fetchval("SHOW password_encryption") == "scram-sha-256"
            assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
            assert await conn.fetchval("SHOW unix_socket_directories") == ""
            rules = await conn.fetch("SELECT type, address, auth_method FROM pg_hba_file_rules WHERE error IS NULL")
            assert {(r["type"], r["address"], r["auth_method"]) for r in rules} == {
                ("host", "127.0.0.1", "scram-sha-256"), ("host", "::1", "scram-sha-256")}
            stored = await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")
            assert stored.startswith("SCRAM-SHA-256$")
        finally:
            await conn.close()

        # the secret is nowhere else: not in stack.json, the log, or the server's command line
        assert secret not in (state / "stack.json").read_text()
        assert secret not in (state / "logs" / "postgres.log").read_text(errors="replace")
        pg_pid = next(c.pid for c in read_state(state) if c.name == "postgres")
        assert secret.encode() not in Path(f"/proc/{pg_pid}/cmdline").read_bytes()
        assert not list((state / "pg").glob(".initdb-secret"))

    # a lost secret file (or a state folder from a version without one): a new secret at the next start,
    # set with the server stopped; the old one no longer opens the database
    secret_file.unlink()
    async with EmbeddedStack(state, with_broker=False, die_with_parent=True) as stack:
        fresh = read_passfile(secret_file)["postgres"]
        assert fresh != secret
        conn = await asyncpg.connect(stack.pg_dsn)
        await conn.close()
        parts = urllib.parse.urlsplit(stack.pg_dsn)
        assert await refused(f"postgresql://postgres@{parts.hostname}:{parts.port}/renkei",
                             password=secret) is asyncpg.InvalidPasswordError


# --- the components: each role reaches its own schema only ------------------------------------------------


async def test_the_hub_role_cannot_read_the_registry_and_no_role_runs_programs(running_platform, bus, pg):
    s = running_platform.settings
    layout = layout_for(s)
    mn, acct = await step1(running_platform.settings, bus, pg)
    registry = layout.schema("registry")
    assert await pg.fetchval(f'SELECT count(*) FROM "{registry}".registry_accounts') >= 1

    hub = await asyncpg.connect(component_dsn(s, "hub"))  # what a compromised hub process holds
    try:
        assert await hub.fetchval("SELECT current_user") == layout.role("hub")
        assert "permission denied for schema" in await denied(hub, f'SELECT * FROM "{registry}".registry_accounts')
        assert "permission denied for schema" in await denied(hub, f'SELECT * FROM "{registry}".registry_data_keys')
        await denied(hub, f'SET ROLE "{layout.role("registry")}"')
        await denied(hub, 'CREATE SCHEMA "registry_twin"')  # no squatting a schema another role will use
        await denied(hub, f'CREATE TABLE "{registry}".planted (id int)')
        await denied(hub, "COPY (SELECT 1) TO PROGRAM 'id'")
        await denied(hub, "COPY hub_messages (type) FROM PROGRAM 'id'")  # into its own table, even
        await denied(hub, "SELECT pg_read_file('/etc/hostname')")
        # its own data it reads, as before
        assert await hub.fetchval("SELECT count(*) FROM hub_messages") >= 1
    finally:
        await hub.close()

    mid = await step2(bus, mn)  # good traffic between the attacks
    assert mid["status"] == "REGISTERED" and mid["account"]["account_number"] == acct["account_number"]

    for component in ("registry", "banks", "portal", "dicj", AGENCY, "bank-9001", "clients"):
        conn = await asyncpg.connect(component_dsn(s, component))
        try:
            await denied(conn, "COPY (SELECT 1) TO PROGRAM 'id'")
            if component != "registry":
                await denied(conn, f'SELECT * FROM "{registry}".registry_accounts')
        finally:
            await conn.close()
    roles = await pg.fetch("SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, "
                           "pg_has_role(oid, 'pg_execute_server_program', 'MEMBER') AS programs "
                           "FROM pg_roles WHERE rolname = ANY($1::text[])", layout.roles)
    assert {r["rolname"] for r in roles} == set(layout.roles)
    assert not any(any(r[k] for k in ("rolsuper", "rolcreaterole", "rolcreatedb", "rolreplication", "rolbypassrls",
                                      "programs")) for r in roles)
    owners = await pg.fetch("SELECT schemaname, tableowner FROM pg_tables WHERE schemaname = ANY($1::text[])",
                            layout.schemas)
    assert owners and all(r["tableowner"] == layout.role(_component_of(layout, r["schemaname"])) for r in owners)

    # the portal reads the provision records (the person's 情報提供等記録) and nothing else of the hub's
    portal = await asyncpg.connect(records_dsn(s))
    try:
        assert await portal.fetchval("SELECT count(*) FROM provision_records") >= 1
        await denied(portal, "SELECT * FROM hub_messages")
        await denied(portal, "UPDATE provision_records SET status = status")
    finally:
        await portal.close()
    assert (await step2(bus, mn))["status"] == "REGISTERED"


def _component_of(layout, schema: str) -> str:
    return next(c for c in layout.components if layout.schema(c) == schema)


async def test_a_bank_connector_role_cannot_read_another_banks_data(running_platform, bus, pg):
    s = running_platform.settings
    layout = layout_for(s)
    await step1(s, bus, pg, bank="9000")  # the simulator claims and answers for bank-9000 in its schema
    banks = layout.schema("banks")
    others = await pg.fetchval(f'SELECT count(*) FROM "{banks}".processed_messages WHERE consumer = $1', "bank-9000")
    assert others >= 1

    mine = await asyncpg.connect(component_dsn(s, "bank-9001"))  # bank 9001's channel connector
    theirs = await asyncpg.connect(component_dsn(s, "bank-9002"))
    try:
        assert await mine.fetchval("SELECT current_schemas(false)") == [layout.schema("bank-9001"), banks]
        await mine.execute("CREATE TABLE connector_notes (id int)")  # in its own schema
        await mine.execute("INSERT INTO connector_notes VALUES (1)")
        await denied(theirs, f'SELECT * FROM "{layout.schema("bank-9001")}".connector_notes')
        # the simulator's data of every bank: customers, accounts, numbered accounts
        for table in ("bank_accounts", "bank_customers", "bank_numbered_accounts", "bank_lookups_received"):
            await denied(mine, f'SELECT * FROM "{banks}"."{table}"')
        # the handover rows it shares with the simulator: its own bank's only
        assert await mine.fetchval(f'SELECT count(*) FROM "{banks}".processed_messages WHERE consumer <> $1',
                                   "bank-9001") == 0
        assert await mine.fetchval(f'SELECT count(*) FROM "{banks}".participant_outbox WHERE sender <> $1',
                                   "bank-9001") == 0
        assert await mine.execute(f'DELETE FROM "{banks}".participant_outbox WHERE sender = $1', "bank-9000") == \
            "DELETE 0"
        message = await denied(mine, f'INSERT INTO "{banks}".processed_messages (consumer, message_id) VALUES ($1, $2)',
                               "bank-9000", uuid.uuid4())  # claiming another bank's message: it would be skipped
        assert "row-level security" in message
        await denied(mine, f'INSERT INTO "{banks}".bank_channel_leases (bank_id, channel, holder, types, expires_at) '
                           "VALUES ('bank-9000', 'x', 'x', '{}', now() + interval '1 hour')")
    finally:
        await mine.close()
        await theirs.close()
    assert await pg.fetchval(f'SELECT count(*) FROM "{banks}".processed_messages WHERE consumer = $1',
                             "bank-9000") >= others
    mn, _ = await step1(s, bus, pg, bank="9000")  # the simulator still serves bank 9000
    assert (await step2(bus, mn))["status"] == "REGISTERED"


# --- secrets never on a command line ------------------------------------------------------------------


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            parents[int(entry.name)] = int(fields[1])
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        children = [p for p, parent in parents.items() if parent == pid]
        found += children
        todo += children
    return found


def _secrets(settings, endpoints_dsn: str) -> list[str]:
    found = list(read_passfile(settings.resolved_pg_passfile).values())
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(endpoints_dsn).query))
    if "passfile" in query:  # the embedded server's superuser
        found += read_passfile(Path(query["passfile"])).values()
    password = urllib.parse.urlsplit(endpoints_dsn).password
    return found + ([password] if password else [])


async def test_no_secret_on_any_childs_command_line_or_in_its_environment(running_platform, endpoints, bus, pg):
    s = running_platform.settings
    secrets = _secrets(s, endpoints.pg_dsn)
    assert len(secrets) >= len(layout_for(s).roles)
    mn, _ = await step1(running_platform.settings, bus, pg)  # the workers are connected and working
    children = _descendants(os.getpid())
    workers = {c.pid for c in running_platform.stack.components.values()}
    assert workers and workers <= set(children)
    seen = 0
    for pid in children:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile
        seen += 1
        for secret in secrets:
            assert secret.encode() not in cmdline, f"a secret on the command line of {pid}"
            assert secret.encode() not in environ, f"a secret in the environment of {pid}"
        assert b"--pg-dsn" not in cmdline and b"pg-superuser" not in environ
        if pid in workers:  # PostgreSQL came from the environment: public DSN and the roles' password file
            env = dict(e.split(b"=", 1) for e in environ.split(b"\0") if b"=" in e)
            assert env[b"RENKEI_PG_DSN"].decode() == public_dsn(s.pg_dsn)
            assert env[b"RENKEI_PG_PASSFILE"].decode() == str(s.resolved_pg_passfile.absolute())
    assert seen >= len(workers)
    for log in running_platform.stack.logs_dir.glob("*.log"):
        text = log.read_text(errors="replace")
        assert not any(secret in text for secret in secrets), log.name
    assert not any(secret in (s.state_dir / "stack.json").read_text() for secret in secrets)
    assert (await step2(bus, mn))["status"] == "REGISTERED"


# --- production: `renkei db roles` ---------------------------------------------------------------------


async def test_db_roles_prints_verifiers_never_secrets_and_applies_idempotently(endpoints, database, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_")}
    # production's namespace (no schema prefix), under roles of this test's own (not the session's)
    env |= {"RENKEI_PG_DSN": database.admin_dsn, "RENKEI_PG_PASSFILE": str(tmp_path / "prod.pgpass"),
            "RENKEI_PG_ROLE_PREFIX": "dbt_"}
    layout = layout_for(Settings(pg_role_prefix="dbt_"))

    def renkei(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "infra.cli", "db", "roles", *argv, "--state-dir", str(tmp_path)],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=120)

    printed = await asyncio.to_thread(renkei)
    assert printed.returncode == 0, printed.stderr
    secrets = read_passfile(tmp_path / "prod.pgpass")
    assert "dbt_hub" in secrets and stat.S_IMODE((tmp_path / "prod.pgpass").stat().st_mode) == 0o600
    assert not any(secret in printed.stdout for secret in secrets.values())
    assert printed.stdout.count("PASSWORD 'SCRAM-SHA-256$4096:") == len(secrets)
    assert 'CREATE SCHEMA IF NOT EXISTS "registry" AUTHORIZATION "dbt_registry"' in printed.stdout

    admin = await asyncpg.connect(database.admin_dsn)
    try:
        for _ in range(2):  # --apply, then again: the same layout, no error
            applied = await asyncio.to_thread(renkei, "--apply", "--json")
            assert applied.returncode == 0, applied.stderr
        report = json.loads(applied.stdout)
        assert report["applied"] and report["created"] == [] and report["roles"] == layout.roles
        await admin.execute(printed.stdout.replace("BEGIN;", "").replace("COMMIT;", ""))  # the script: idempotent too
        host = urllib.parse.urlsplit(database.admin_dsn)
        hub = await asyncpg.connect(f"postgresql://dbt_hub@{host.hostname}:{host.port}/renkei",
                                    passfile=str(tmp_path / "prod.pgpass"))
        try:  # production's namespace: the role lands in its own schema without a search path in the DSN
            assert await hub.fetchval("SELECT current_schemas(false)") == ["hub"]
            await denied(hub, "SELECT * FROM registry.registry_accounts")
        finally:
            await hub.close()
        refusal = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "infra.cli", "db", "roles", "--apply", "--state-dir", str(tmp_path)],
            capture_output=True, text=True, cwd=REPO, timeout=120,
            env=env | {"RENKEI_PG_DSN": f"postgresql://dbt_hub@{host.hostname}:{host.port}/renkei?passfile="
                                        f"{tmp_path / 'prod.pgpass'}"})
        assert refusal.returncode == 1 and "cannot create Renkei's roles" in refusal.stderr  # a component is no admin
    finally:
        for schema in layout.schemas:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        for role in [r["rolname"] for r in await admin.fetch(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, 'dbt_')")]:
            await admin.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')
        await admin.close()

