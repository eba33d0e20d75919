"""DSNs: which role a process connects as, where its secret is, which schemas it sees.

``settings.pg_dsn`` says where the server is (host, port, database, TLS options). Its user, if
any, is the administrator — the embedded stack's superuser, whose secret is in
``<state>/secrets/pg-superuser.pgpass`` — and only :func:`admin_dsn` uses it. Every component
connects as its own role (:mod:`infra.platform.pglayout`) through :func:`component_dsn`: the user is the
component's role, the password comes from the roles' password file (``?passfile=``), and the
search path is the component's schema. No DSN built here carries a password.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from infra.core.errors import ConfigError, StackError
from infra.core.settings import Settings
from infra.domain.participants import Participants, load_participants
from infra.platform.pglayout import HUB, OPS, PORTAL, DbLayout, component_for, path_setting

__all__ = [
    "admin_dsn",
    "component_dsn",
    "layout_for",
    "names_user",
    "observer_dsn",
    "ops_dsn",
    "participants_dsn",
    "public_dsn",
    "records_dsn",
    "with_search_path",
]

_CREDENTIALS = ("user", "password", "passfile")


def _split(dsn: str) -> tuple[urllib.parse.SplitResult, list[tuple[str, str]]]:
    if not dsn:
        raise StackError("no PostgreSQL to connect to: start the embedded stack (`renkei up --detach`) or set "
                         "RENKEI_PG_DSN")
    parts = urllib.parse.urlsplit(dsn)
    return parts, urllib.parse.parse_qsl(parts.query, keep_blank_values=True)


def _hosts(parts: urllib.parse.SplitResult) -> str:
    return parts.netloc.rpartition("@")[2]


def _join(parts: urllib.parse.SplitResult, user: str | None, query: list[tuple[str, str]]) -> str:
    userinfo = f"{urllib.parse.quote(user, safe='')}@" if user else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=userinfo + _hosts(parts),
                                                  query=urllib.parse.urlencode(query)))


def _user(parts: urllib.parse.SplitResult, query: list[tuple[str, str]]) -> str | None:
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and userinfo:
        return urllib.parse.unquote(userinfo.partition(":")[0]) or None
    return next((v for k, v in query if k == "user"), None)


def names_user(dsn: str) -> bool:
    """Whether ``dsn`` names a user (the administrator, in Renkei's settings)."""
    if not dsn:
        return False
    parts, query = _split(dsn)
    return _user(parts, query) is not None


def public_dsn(dsn: str) -> str:
    """``dsn`` without any secret or secret's location: no password, no password file (what a worker
    process may be handed; it connects as component roles only)."""
    if not dsn:
        return dsn
    parts, query = _split(dsn)
    return _join(parts, _user(parts, query), [(k, v) for k, v in query if k not in _CREDENTIALS])


def with_search_path(dsn: str, schemas: Sequence[str]) -> str:
    """``dsn`` (credentials and all) with its search path replaced by ``schemas``."""
    parts, query = _split(dsn)
    query = [(k, v) for k, v in query if k != "search_path"] + [("search_path", path_setting(schemas))]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


@lru_cache(maxsize=32)
def _participants(path: Path | None, banks: int) -> Participants:
    return load_participants(path, banks=banks)


def layout_for(settings: Settings, participants: Participants | None = None) -> DbLayout:
    """The database layout of ``settings``' participants, role and schema prefixes."""
    if participants is None:
        participants = _participants(settings.participants_file, settings.banks)
    return DbLayout.for_participants(participants, role_prefix=settings.pg_role_prefix,
                                     schema_prefix=settings.pg_schema_prefix)


def component_dsn(settings: Settings, component: str, *, reading: str | None = None) -> str:
    """Connect as ``component``'s role, its secret from the roles' password file, in its own schemas —
    or, with ``reading``, in another component's schema where the layout grants it rights (the portal
    reading the hub's provision records: :func:`records_dsn`)."""
    layout = layout_for(settings)
    for name in (component, reading):
        if name is not None and name not in layout.components:
            raise ConfigError(f"{name}: no database component of that name (a participant id, or one of "
                              f"banks, agencies, clients; see infra/platform/pglayout.py)")
    path = layout.search_path(component) if reading is None else [layout.schema(reading)]
    return _role_dsn(settings, layout.role(component), path)


def _role_dsn(settings: Settings, role: str, path: Sequence[str]) -> str:
    parts, query = _split(settings.pg_dsn)
    query = [(k, v) for k, v in query if k not in (*_CREDENTIALS, "search_path")]
    query += [("passfile", str(settings.resolved_pg_passfile.absolute())), ("search_path", path_setting(path))]
    return _join(parts, role, query)


def participants_dsn(settings: Settings, identities: Iterable[str], participants: Participants,
                     component: str | None = None) -> str:
    """The DSN of a runtime serving ``identities``: ``component``'s, or the one those participants work in
    (:func:`infra.platform.pglayout.component_for`)."""
    return component_dsn(settings, component or component_for(identities, participants))


def records_dsn(settings: Settings) -> str:
    """The portal's read-only view of the provision records (the hub's ``provision_*`` tables)."""
    return component_dsn(settings, PORTAL, reading=HUB)


def ops_dsn(settings: Settings) -> str:
    """The read-only ``ops`` role, every component schema on its search path (the leak scan)."""
    layout = layout_for(settings)
    return _role_dsn(settings, layout.role(OPS), layout.observer_path())


def admin_dsn(settings: Settings) -> str:
    """The administrator's DSN (``settings.pg_dsn`` as given): creating roles and schemas, and the tools
    that inspect every component (tests, chaos, leak scan). Never handed to a worker."""
    _split(settings.pg_dsn)
    return settings.pg_dsn


def observer_dsn(settings: Settings) -> str:
    """The administrator, with every component schema of the namespace on the search path (central
    components first: a name several components use resolves to the first that has it)."""
    return with_search_path(admin_dsn(settings), layout_for(settings).observer_path())
