"""The database layout (roles, schemas, grants as SQL), password files and DSNs: pure logic."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest

from infra.core.errors import ConfigError
from infra.core.settings import Settings, load_settings
from infra.domain.participants import Kind, Participant, Participants, load_participants
from infra.platform.pgdsn import (
    component_dsn,
    names_user,
    observer_dsn,
    ops_dsn,
    public_dsn,
    records_dsn,
    with_search_path,
)
from infra.platform.pglayout import (
    BANKS,
    CLIENTS,
    DbLayout,
    component_for,
    ident,
    namespace_statements,
    role_statements,
    scram_verifier,
    shared_grant_statements,
    shared_grant_steps,
)
from infra.platform.pgpass import ensure_secrets, read_passfile, write_passfile
from infra.platform.stack import settings_args, settings_env

PARTICIPANTS = load_participants(banks=3)
LAYOUT = DbLayout.for_participants(PARTICIPANTS)


# --- names and components ---------------------------------------------------------------------------


def test_identifiers_are_safe_lower_case_and_bounded():
    assert ident("bank-9003") == "bank_9003"
    assert ident("Agency-City.Minato") == "agency_city_minato"
    assert ident("9lives") == "_9lives"
    long_a, long_b = "agency-" + "x" * 80, "agency-" + "x" * 79 + "y"
    assert len(ident(long_a)) == 63 and ident(long_a) != ident(long_b)


def test_a_runtime_works_in_its_participants_component():
    assert component_for(["registry"], PARTICIPANTS) == "registry"
    assert component_for(["bank-9001"], PARTICIPANTS) == "bank-9001"  # a bank's own connector
    assert component_for(["bank-9000", "bank-9001", "bank-9002"], PARTICIPANTS) == BANKS  # the simulator
    assert component_for(["agency-nta", "agency-mhlw"], PARTICIPANTS) == "agencies"
    assert component_for(["portal", "agency-nta"], PARTICIPANTS) == CLIENTS
    assert component_for(["agency-nta", "bank-9001"], PARTICIPANTS) == CLIENTS
    with pytest.raises(ValueError):
        component_for([], PARTICIPANTS)


def test_every_participant_has_a_role_and_a_schema_of_its_own():
    assert {"hub", "registry", "portal", "dicj", "agency-nta", "bank-9000", BANKS, CLIENTS} <= set(LAYOUT.components)
    assert len(set(LAYOUT.roles)) == len(LAYOUT.roles) and len(set(LAYOUT.schemas)) == len(LAYOUT.schemas)
    assert LAYOUT.role("bank-9001") == "renkei_bank_9001" and LAYOUT.schema("bank-9001") == "bank_9001"
    assert LAYOUT.ops_role == "renkei_ops"
    spaced = DbLayout.for_participants(PARTICIPANTS, role_prefix="r1_", schema_prefix="t42_")
    assert spaced.role("hub") == "r1_hub" and spaced.schema("hub") == "t42_hub"


def test_a_bank_connector_sees_the_simulator_after_its_own_schema_and_no_one_else_does():
    assert LAYOUT.search_path("bank-9001") == ["bank_9001", "banks"]
    assert LAYOUT.search_path("hub") == ["hub"] and LAYOUT.search_path("agency-nta") == ["agency_nta"]
    assert LAYOUT.observer_path()[:3] == ["registry", "hub", "banks"]
    assert set(LAYOUT.observer_path()) == set(LAYOUT.schemas)


def test_names_that_would_share_a_role_are_refused():
    clash = Participants([Participant("agency-x", Kind.AGENCY, "a"), Participant("agency_x", Kind.AGENCY, "b")])
    with pytest.raises(ConfigError, match="share a database role"):
        DbLayout.for_participants(clash)
    for reserved in ("banks", "ops", "Clients"):
        impostor = Participants([Participant(reserved, Kind.AGENCY, "an agency named like a component")])
        with pytest.raises(ConfigError, match="database component of Renkei's own"):
            DbLayout.for_participants(impostor)
    with pytest.raises(ConfigError, match="pg_schema_prefix"):
        DbLayout.for_participants(PARTICIPANTS, schema_prefix="Bad-Prefix")


# --- SQL ------------------------------------------------------------------------------------------------


def test_scram_verifier_is_what_a_scram_server_checks_a_client_proof_against():
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = scram_verifier("pencil", salt=salt)
    assert verifier == scram_verifier("pencil", salt=salt) != scram_verifier("pencil")
    method, rest = verifier.split("$", 1)
    iterations_salt, keys = rest.split("$")
    assert method == "SCRAM-SHA-256" and iterations_salt == "4096:W22ZaJ0SNY7soEsUEjb6gQ=="
    stored_key, server_key = (base64.b64decode(k) for k in keys.split(":"))
    # A client that knows the password proves it; the server, holding only the verifier, accepts (RFC 5802 §3).
    auth = b"n=user,r=abc,r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=abcdef"
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, hmac.new(stored_key, auth, hashlib.sha256).digest()))
    recovered = bytes(a ^ b for a, b in zip(proof, hmac.new(stored_key, auth, hashlib.sha256).digest()))
    assert hashlib.sha256(recovered).digest() == stored_key
    assert server_key == hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    with pytest.raises(ValueError):
        scram_verifier("pässword")


def test_roles_get_login_and_nothing_more_and_no_secret_in_the_sql():
    verifiers = {r: scram_verifier("s3cret-" + r) for r in LAYOUT.roles}
    sql = role_statements(LAYOUT, "renkei", verifiers, existing=[])
    text = "\n".join(sql)
    assert "s3cret" not in text  # verifiers only
    created = [s for s in sql if s.startswith("CREATE ROLE")]
    assert len(created) == len(LAYOUT.roles)
    assert all("NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS" in s for s in created)
    assert 'REVOKE "pg_execute_server_program" FROM "renkei_hub"' in sql
    assert 'REVOKE ALL ON DATABASE "renkei" FROM PUBLIC' in sql
    with pytest.raises(ValueError, match="no secret"):
        role_statements(LAYOUT, "renkei", {}, existing=[])
    # an existing role is left alone unless reasserted (renkei up) or given a secret now
    quiet = role_statements(LAYOUT, "renkei", {"renkei_hub": verifiers["renkei_hub"]}, existing=LAYOUT.roles,
                            reassert=False)
    assert [s for s in quiet if "ROLE" in s and "REVOKE" not in s] == [
        f'ALTER ROLE "renkei_hub" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS '
        f"INHERIT PASSWORD '{verifiers['renkei_hub']}'"]
    loud = role_statements(LAYOUT, "renkei", {}, existing=LAYOUT.roles)
    assert sum(s.startswith("ALTER ROLE") for s in loud) == len(LAYOUT.roles)


def test_each_schema_belongs_to_its_role_and_only_ops_and_the_named_readers_get_usage():
    sql = namespace_statements(LAYOUT, "renkei", role_defaults=True)
    assert 'CREATE SCHEMA IF NOT EXISTS "registry" AUTHORIZATION "renkei_registry"' in sql
    grants = [s for s in sql if s.startswith("GRANT USAGE")]
    readers = {(s.split('"')[1], s.split('"')[3]) for s in grants}
    foreign = {(schema, role) for schema, role in readers if role != "renkei_ops"}
    assert foreign == {("banks", f"renkei_bank_900{n}") for n in range(3)} | {("hub", "renkei_portal")}
    assert not any("registry" in schema for schema, _ in foreign)  # nobody else may look at the registry
    assert 'ALTER ROLE "renkei_bank_9001" IN DATABASE "renkei" SET search_path = bank_9001, banks' in sql
    assert not any("search_path" in s for s in namespace_statements(LAYOUT, "renkei", role_defaults=False))


def test_shared_grants_name_tables_and_rows_of_the_connectors_own_bank_only():
    present = {("hub", "provision_records"), ("hub", "provision_chain_heads"), ("hub", "hub_messages"),
               ("banks", "processed_messages"), ("banks", "participant_outbox"),
               ("banks", "participant_outbox_id_seq"), ("banks", "bank_accounts"), ("banks", "renkei_migrations")}
    sql = shared_grant_statements(LAYOUT, present)
    text = "\n".join(sql)
    assert 'GRANT SELECT ON "hub"."provision_records" TO "renkei_portal"' in sql
    assert "hub_messages" not in text and "bank_accounts" not in text
    assert 'ALTER TABLE "banks"."processed_messages" ENABLE ROW LEVEL SECURITY' in sql
    assert ('CREATE POLICY "handover_bank_9001" ON "banks"."processed_messages" TO "renkei_bank_9001" '
            "USING (consumer = 'bank-9001') WITH CHECK (consumer = 'bank-9001')") in sql
    assert 'GRANT USAGE ON SEQUENCE "banks"."participant_outbox_id_seq" TO "renkei_bank_9002"' in sql
    assert "bank_parked_messages" not in text  # not created yet: nothing granted on it
    assert shared_grant_statements(LAYOUT, set()) == []


def test_each_shared_grant_step_locks_one_table_and_turns_row_security_on_before_granting():
    present = {("hub", "provision_records"), ("hub", "provision_chain_heads"), ("banks", "renkei_migrations"),
               ("banks", "processed_messages"), ("banks", "participant_outbox"), ("banks", "participant_outbox_id_seq"),
               ("banks", "bank_parked_messages"), ("banks", "bank_parked_messages_id_seq")}
    steps = shared_grant_steps(LAYOUT, present)
    assert [s.table for s in steps] == [
        '"hub"."provision_chain_heads"', '"hub"."provision_records"', '"banks".renkei_migrations',
        '"banks"."processed_messages"', '"banks"."participant_outbox"', '"banks"."bank_parked_messages"']
    names = {t for _, t in present}
    for step in steps:  # a step's transaction names its own table (and that table's sequence), nothing else
        bare = step.table.rsplit(".", 1)[1].strip('"')
        assert all({n for n in names if n in s} <= {bare, f"{bare}_id_seq"} for s in step.statements), step.table
    parked = next(s.statements for s in steps if "bank_parked_messages" in s.table)
    assert parked[0] == 'ALTER TABLE "banks"."bank_parked_messages" ENABLE ROW LEVEL SECURITY'
    for bank in LAYOUT.banks:  # in the same transaction, the bank's policy before its rights
        role = f'TO "renkei_{ident(bank)}"'
        policy = next(i for i, s in enumerate(parked) if s.startswith("CREATE POLICY") and role in s)
        assert policy < next(i for i, s in enumerate(parked) if s.startswith("GRANT SELECT") and s.endswith(role))
    assert shared_grant_statements(LAYOUT, present) == [s for step in steps for s in step.statements]


# --- password files ----------------------------------------------------------------------------------------


def test_password_file_is_private_atomic_and_keeps_known_secrets(tmp_path):
    path = tmp_path / "secrets" / "roles.pgpass"
    secrets, fresh = ensure_secrets(path, ["renkei_hub", "renkei_registry"])
    assert fresh == {"renkei_hub", "renkei_registry"} and len(set(secrets.values())) == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again, fresh = ensure_secrets(path, ["renkei_hub", "renkei_portal"])
    assert fresh == {"renkei_portal"} and again["renkei_hub"] == secrets["renkei_hub"]
    assert read_passfile(path) == again
    assert all(line.startswith(("#", "*:*:*:")) for line in path.read_text().splitlines())
    assert not list(path.parent.glob(".*.tmp"))
    os.chmod(path, 0o644)  # a looser copy would be ignored by libpq and asyncpg: tightened again
    ensure_secrets(path, ["renkei_hub"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ValueError):
        write_passfile(path, {"renkei_hub": "a:b"})


# --- DSNs ----------------------------------------------------------------------------------------------


def _settings(**kw) -> Settings:
    return Settings(pg_dsn="postgresql://admin:TopSecret@db.example:5432/renkei?sslmode=require",
                    state_dir=Path("/srv/renkei"), **kw)


def test_a_component_dsn_names_its_role_and_password_file_never_a_password():
    s = _settings(pg_schema_prefix="t1_")
    dsn = component_dsn(s, "bank-9001")
    assert dsn == ("postgresql://renkei_bank_9001@db.example:5432/renkei?sslmode=require"
                   "&passfile=%2Fsrv%2Frenkei%2Fsecrets%2Fpg-roles.pgpass&search_path=t1_bank_9001%2Ct1_banks")
    assert "TopSecret" not in dsn and "admin" not in dsn
    assert records_dsn(s).startswith("postgresql://renkei_portal@") and records_dsn(s).endswith("search_path=t1_hub")
    assert ops_dsn(s).startswith("postgresql://renkei_ops@") and "TopSecret" not in ops_dsn(s)
    assert observer_dsn(s).startswith("postgresql://admin:TopSecret@")  # the administrator, for inspection only
    with pytest.raises(ConfigError, match="no database component"):
        component_dsn(s, "bank-7777")
    own_file = component_dsn(_settings(pg_passfile=Path("/run/secrets/pg")), "hub")
    assert own_file.count("passfile=%2Frun%2Fsecrets%2Fpg") == 1


def test_what_a_child_process_is_handed_has_no_secret_and_no_password_file_of_the_administrator():
    s = _settings()
    assert public_dsn(s.pg_dsn) == "postgresql://admin@db.example:5432/renkei?sslmode=require"
    assert public_dsn("postgresql://127.0.0.1:5/r?passfile=/x/pg-superuser.pgpass&user=postgres") == \
        "postgresql://postgres@127.0.0.1:5/r"
    env = settings_env(s)
    assert env["RENKEI_PG_DSN"] == public_dsn(s.pg_dsn) and env["RENKEI_PG_PASSFILE"].endswith("pg-roles.pgpass")
    args = settings_args(s)
    assert "--pg-dsn" not in args and not any("TopSecret" in a for a in args)
    assert not any("TopSecret" in v for v in env.values())
    assert names_user(s.pg_dsn) and not names_user("postgresql://db/renkei") and not names_user("")
    assert with_search_path("postgresql://u@h/d?search_path=x", ["a", "b"]) == "postgresql://u@h/d?search_path=a%2Cb"


def test_postgres_keys_from_env_and_file(tmp_path):
    cfg = tmp_path / "renkei.toml"
    cfg.write_text('[postgres]\ndsn = "postgresql://db/renkei"\npassfile = "/run/secrets/renkei.pgpass"\n'
                   'role_prefix = "prod_"\n')
    s = load_settings(environ={"RENKEI_PG_SCHEMA_PREFIX": "blue_"}, config_file=cfg)
    assert (s.pg_dsn, s.pg_passfile, s.pg_role_prefix, s.pg_schema_prefix) == (
        "postgresql://db/renkei", Path("/run/secrets/renkei.pgpass"), "prod_", "blue_")
    assert load_settings(environ={}).resolved_pg_passfile == Path(".renkei/secrets/pg-roles.pgpass")
