"""The database layout: one PostgreSQL role and one schema per component (DESIGN §8a).

Every component that keeps state works in a schema of its own, owned by a role of its own; no
other component role is granted anything in it. So the hub cannot read the registry's accounts,
a bank's connector cannot read another bank's tables, and a bug (or an injection) in one
component reaches only that component's data. No component role is a superuser, may create
roles or databases, bypass row security, or run programs on the server (``COPY … TO PROGRAM``).

================  ======================  ================================================
component         schema (role: prefix+)  what lives there
================  ======================  ================================================
``hub``           ``hub``                 hub_messages, provision records, lookups, claims
``registry``      ``registry``            the registry's (encrypted) accounts
``banks``         ``banks``               the bank simulator: every simulated bank's own data
``bank-<code>``   ``bank_<code>``         one bank's channel connector
``agency-<x>``    ``agency_<x>``          one agency's connector and its SDK tables
``agencies``      ``agencies``            a connector serving several agencies
``portal``        ``portal``              the portal connector (cards, sessions, requests)
``dicj``          ``dicj``                DICJ's desk (lookups, numbering)
``clients``       ``clients``             a test or demo process acting as several participants
``ops``           (none)                  read-only: SELECT on every component's tables
================  ======================  ================================================

Two reads cross a boundary, each granted on named tables only, and only once the owner created
them (:func:`shared_grant_steps`):

- the portal reads the hub's ``provision_*`` tables: the person's provision records
  (情報提供等記録) are shown on the portal;
- a bank's channel connector that takes its bank over from the simulator (``renkei bank serve``
  next to ``renkei up``) shares the handover rows *of its own bank*: claims, outbox, dead letters,
  lease and parked messages, through row-level security keyed by the bank's participant id. Its
  search path reaches the simulator's schema after its own (:meth:`DbLayout.search_path`), and
  its runtime finds those tables already migrated there (``infra.platform.storage.migrate``).

Names: a schema is ``<schema_prefix><component>``, a role ``<role_prefix><component>``, with
``-`` made ``_`` and letters lower-cased. The schema prefix gives the test harness (and the
benchmark's sub-platforms) a namespace of their own on one server; production uses none.

Everything here is pure: the SQL is built, not run (``infra.platform.pgprovision`` runs it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from infra.core.errors import ConfigError
from infra.domain.participants import Kind, Participants

__all__ = [
    "AGENCIES",
    "BANKS",
    "CLIENTS",
    "DbLayout",
    "GrantStep",
    "HANDOVER_TABLES",
    "HUB",
    "OPS",
    "PORTAL",
    "RECORDS_TABLES",
    "SHARED_TABLES_OF",
    "component_for",
    "drop_statements",
    "ident",
    "namespace_statements",
    "path_setting",
    "role_statements",
    "scram_verifier",
    "shared_grant_statements",
    "shared_grant_steps",
]

HUB = "hub"
BANKS = "banks"
AGENCIES = "agencies"
CLIENTS = "clients"
OPS = "ops"
PORTAL = "portal"

RECORDS_TABLES = "provision_%"
"""The hub's tables the portal may read (a LIKE pattern): the provision records and their chain."""

HANDOVER_TABLES: dict[str, str] = {
    "processed_messages": "consumer",
    "participant_outbox": "sender",
    "participant_dead_letters": "participant",
    "bank_channel_leases": "bank_id",
    "bank_parked_messages": "bank_id",
}
"""The simulator's tables a bank's channel connector shares, each with the column naming the bank."""

SHARED_TABLES_OF: dict[str, tuple[str, ...]] = {
    HUB: ("provision_records", "provision_chain_heads"),
    BANKS: tuple(HANDOVER_TABLES),
}
"""Tables a component creates that another one is granted rights on (wait for them before granting)."""

MAX_IDENT = 63  # PostgreSQL's NAMEDATALEN - 1
_PREFIX_RE = re.compile(r"[a-z_][a-z0-9_]{0,39}")
_SERVER_ROLES = ("pg_execute_server_program", "pg_read_server_files", "pg_write_server_files",
                 "pg_read_all_data", "pg_write_all_data")
"""Predefined roles that would let a component run programs or reach files or other components' data."""


def ident(name: str) -> str:
    """A safe, unquoted PostgreSQL identifier for ``name``: lower case, ``-`` → ``_``, at most 63 bytes
    (a longer one keeps a hash of the whole name so two long names stay distinct)."""
    out = re.sub(r"[^a-z0-9_]", "_", name.lower())
    if not out or not (out[0].isalpha() or out[0] == "_"):
        out = "_" + out
    if len(out) > MAX_IDENT:
        out = out[:MAX_IDENT - 9] + "_" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return out


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def component_for(identities: Iterable[str], participants: Participants) -> str:
    """The database component of a process serving ``identities``.

    One identity: that participant's own component. Several banks: the bank simulator. Several
    agencies: one connector's ``agencies``. Any other mix (a test or demo client acting as the
    portal and agencies at once): ``clients``.
    """
    ids = list(dict.fromkeys(identities))
    if not ids:
        raise ValueError("a runtime serves at least one participant")
    if len(ids) == 1:
        return ids[0]
    kinds = {p.kind if (p := participants.get(i)) is not None else None for i in ids}
    if kinds == {Kind.BANK}:
        return BANKS
    if kinds == {Kind.AGENCY}:
        return AGENCIES
    return CLIENTS


@dataclass(frozen=True)
class DbLayout:
    """The roles and schemas of one deployment (or one test namespace) on one database."""

    components: tuple[str, ...]
    banks: tuple[str, ...] = ()  # bank participant ids: their connectors share the simulator's handover
    role_prefix: str = "renkei_"
    schema_prefix: str = ""

    def __post_init__(self) -> None:
        for what, prefix in (("pg_role_prefix", self.role_prefix), ("pg_schema_prefix", self.schema_prefix)):
            if prefix and not _PREFIX_RE.fullmatch(prefix):
                raise ConfigError(f"{what}: lower-case letters, digits and '_' (at most 40), not starting "
                                  "with a digit")
        seen: dict[str, str] = {}
        for c in (*self.components, OPS):
            taken = seen.setdefault(ident(c), c)
            if taken != c:
                raise ConfigError(f"participants {taken!r} and {c!r} would share a database role and schema "
                                  f"({ident(c)}); rename one")

    @classmethod
    def for_participants(cls, participants: Participants, *, role_prefix: str = "renkei_",
                         schema_prefix: str = "") -> DbLayout:
        """Every participant's own component, plus the simulator, the multi-agency connector and clients."""
        own = [p.id for p in participants]
        reserved = sorted({ident(c) for c in (BANKS, AGENCIES, CLIENTS, OPS)} & {ident(c) for c in own})
        if reserved:  # it would work with the simulator's, several agencies', the clients' or ops' rights
            raise ConfigError(f"participants: {', '.join(reserved)} names a database component of Renkei's own; "
                              "choose another id")
        fixed = [c for c in (HUB, BANKS, AGENCIES, CLIENTS) if c not in own]
        return cls(components=tuple(own + fixed), banks=tuple(p.id for p in participants.of_kind(Kind.BANK)),
                   role_prefix=role_prefix, schema_prefix=schema_prefix)

    def role(self, component: str) -> str:
        return ident(self.role_prefix + component)

    def schema(self, component: str) -> str:
        return ident(self.schema_prefix + component)

    @property
    def ops_role(self) -> str:
        return self.role(OPS)

    @property
    def roles(self) -> list[str]:
        return [self.role(c) for c in self.components] + [self.ops_role]

    @property
    def schemas(self) -> list[str]:
        return [self.schema(c) for c in self.components]

    def search_path(self, component: str) -> list[str]:
        """The schemas ``component`` resolves names in: its own; a bank's connector then the simulator's."""
        own = [self.schema(component)]
        if component in self.banks:
            own.append(self.schema(BANKS))  # skipped by PostgreSQL where the role has no USAGE on it
        return own

    def observer_path(self) -> list[str]:
        """Every schema, the central ones first: for whoever inspects the whole namespace (ops, tests)."""
        first = [c for c in ("registry", HUB, BANKS, "dicj", CLIENTS, PORTAL) if c in self.components]
        return [self.schema(c) for c in first + [c for c in self.components if c not in first]]


# --- SQL ------------------------------------------------------------------------------------------


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677, as psql's
    ``\\password`` computes it), so ``CREATE ROLE … PASSWORD`` never carries the secret itself: not
    in the statement, not in a server log. ``password`` must be ASCII (SASLprep leaves it unchanged)."""
    if not password.isascii():
        raise ValueError("role secrets are ASCII")
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored_key).decode()}:{b64(server_key).decode()}"


_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"


def role_statements(layout: DbLayout, database: str, verifiers: dict[str, str], existing: Iterable[str] | None, *,
                    reassert: bool = True) -> list[str]:
    """Create the missing roles and (re)assert each role's rights: login with its verifier, nothing more.

    ``verifiers``: role → SCRAM verifier, for the roles whose password is (re)set now (every missing
    role needs one). ``existing``: roles the server already has (``None``: not known — a script for
    someone else's server creates each role only if missing). ``reassert``: also every existing
    role (at every ``renkei up``: it undoes a role raised to superuser or granted a server-program
    role by hand); otherwise only the roles created or given a secret now.
    """
    out: list[str] = [f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC',
                      "REVOKE CREATE ON SCHEMA public FROM PUBLIC"]
    if existing is None:
        out += [f'DO $$ BEGIN CREATE ROLE "{role}"; EXCEPTION WHEN duplicate_object THEN NULL; END $$'
                for role in layout.roles]
        existing = layout.roles
    have = set(existing)
    for role in layout.roles:
        verifier = verifiers.get(role)
        if role in have and verifier is None and not reassert:
            continue
        password = f" PASSWORD {_literal(verifier)}" if verifier else ""
        if role in have:
            out.append(f'ALTER ROLE "{role}" WITH {_ATTRIBUTES}{password}')
        elif verifier is None:
            raise ValueError(f"role {role} is missing and has no secret")
        else:
            out.append(f'CREATE ROLE "{role}" WITH {_ATTRIBUTES}{password}')
        out.append(f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"')
        out.extend(f'REVOKE "{server}" FROM "{role}"' for server in _SERVER_ROLES)
    return out


def namespace_statements(layout: DbLayout, database: str, *, role_defaults: bool) -> list[str]:
    """Create each component's schema, owned by its role, readable by ops; a bank connector's USAGE on
    the simulator's schema (table rights come later: :func:`shared_grant_statements`); the portal's on
    the hub's. ``role_defaults``: also make each role's default search path its own (production's
    namespace, so ``psql`` as a component role lands in its schema)."""
    ops = layout.ops_role
    out: list[str] = []
    for component in layout.components:
        role, schema = layout.role(component), layout.schema(component)
        out += [f'CREATE SCHEMA IF NOT EXISTS "{schema}" AUTHORIZATION "{role}"',
                f'ALTER SCHEMA "{schema}" OWNER TO "{role}"',  # a schema found with another owner is taken back
                f'REVOKE ALL ON SCHEMA "{schema}" FROM PUBLIC',
                f'GRANT USAGE ON SCHEMA "{schema}" TO "{ops}"',
                f'ALTER DEFAULT PRIVILEGES FOR ROLE "{role}" IN SCHEMA "{schema}" GRANT SELECT ON TABLES TO "{ops}"',
                f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{ops}"']
        if role_defaults:
            path = ", ".join(layout.search_path(component))
            out.append(f'ALTER ROLE "{role}" IN DATABASE "{database}" SET search_path = {path}')
    if BANKS in layout.components:
        out += [f'GRANT USAGE ON SCHEMA "{layout.schema(BANKS)}" TO "{layout.role(b)}"' for b in layout.banks]
    if HUB in layout.components and PORTAL in layout.components:
        out.append(f'GRANT USAGE ON SCHEMA "{layout.schema(HUB)}" TO "{layout.role(PORTAL)}"')
    return out


@dataclass(frozen=True)
class GrantStep:
    """The shared rights on one table (with its sequences): the statements that must commit together.

    Each step is its own transaction (``infra.platform.pgprovision.grant_shared``) so it locks one table
    only: a step waits for a worker's transaction on that table but never holds another table that
    worker's statement goes on to lock (the simulator's clean-up deletes parked rows where a claim
    exists: it locks ``bank_parked_messages`` then ``processed_messages``). All of one table's rights
    together: row security is on before a connector is granted anything on the table.
    """

    table: str  # "schema"."name"
    statements: tuple[str, ...]


def shared_grant_steps(layout: DbLayout, relations: Iterable[tuple[str, str]]) -> list[GrantStep]:
    """The cross-component rights on tables that exist now (``relations``: (schema, name) of the
    tables and sequences the server has), one :class:`GrantStep` per table.

    - the portal: SELECT on the hub's ``provision_*`` tables;
    - each bank's connector: its own bank's rows of the simulator's handover tables (row-level
      security; the simulator owns the tables and is not subject to it), the simulator's migration
      record (to see those tables are migrated) and the sequences behind its inserts.

    Idempotent (policies are replaced). Run by an administrator after the owners migrated.
    """
    present = set(relations)
    out: list[GrantStep] = []
    hub, portal = layout.schema(HUB), layout.role(PORTAL)
    if HUB in layout.components and PORTAL in layout.components:
        like = re.compile("^" + re.escape(RECORDS_TABLES).replace("%", ".*") + "$")
        out += [GrantStep(f'"{hub}"."{t}"', (f'GRANT SELECT ON "{hub}"."{t}" TO "{portal}"',))
                for s, t in sorted(present) if s == hub and like.match(t)]
    sim = layout.schema(BANKS)
    if BANKS not in layout.components or not layout.banks:
        return out
    if (sim, "renkei_migrations") in present:
        out.append(GrantStep(f'"{sim}".renkei_migrations',
                             tuple(f'GRANT SELECT ON "{sim}".renkei_migrations TO "{layout.role(b)}"'
                                   for b in layout.banks)))
    for table, column in HANDOVER_TABLES.items():
        if (sim, table) not in present:
            continue
        name = f'"{sim}"."{table}"'
        step = [f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY",
                f"DROP POLICY IF EXISTS ops_read ON {name}",  # row security denies whoever has no policy
                f'CREATE POLICY ops_read ON {name} FOR SELECT TO "{layout.ops_role}" USING (true)']
        for bank in layout.banks:
            role, policy = layout.role(bank), f"handover_{ident(bank)}"
            mine = f"{column} = {_literal(bank)}"
            step += [f'DROP POLICY IF EXISTS "{policy}" ON {name}',
                     f'CREATE POLICY "{policy}" ON {name} TO "{role}" USING ({mine}) WITH CHECK ({mine})',
                     f'GRANT SELECT, INSERT, UPDATE, DELETE ON {name} TO "{role}"']
        # A sequence is locked after its table by an insert too: the same order, in the same step.
        sequences = sorted(t for s, t in present if s == sim and t.startswith(f"{table}_") and t.endswith("_seq"))
        step += [f'GRANT USAGE ON SEQUENCE "{sim}"."{q}" TO "{layout.role(b)}"' for q in sequences for b in layout.banks]
        out.append(GrantStep(name, tuple(step)))
    return out


def shared_grant_statements(layout: DbLayout, relations: Iterable[tuple[str, str]]) -> list[str]:
    """Every statement of :func:`shared_grant_steps`, in order (for a script or a count)."""
    return [s for step in shared_grant_steps(layout, relations) for s in step.statements]


def drop_statements(layout: DbLayout) -> list[str]:
    """Drop the namespace's schemas (the roles stay: other namespaces on the server may use them)."""
    return [f'DROP SCHEMA IF EXISTS "{s}" CASCADE' for s in layout.schemas]


def path_setting(schemas: Sequence[str]) -> str:
    """A ``search_path`` value for ``schemas`` (already safe identifiers)."""
    return ",".join(schemas)
