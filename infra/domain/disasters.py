"""The registry of declared disasters (災害救助法の適用): the only disasters a 災害時照会 may be made under.

A disaster lookup (口座管理法) is possible only where the Disaster Relief Act
applies.  The platform keeps the disasters it was told of as data, one row
each: an id, a name, the areas it covers (全国地方公共団体コード without the
check digit: a prefecture's 2 digits, or a municipality's 5) and the period
in which lookups may be made under it.  Operators declare one with ``renkei
disaster declare`` and change its period with ``renkei disaster
change-period`` (:mod:`infra.cli.disasters_cli`), each audited in the ops audit
trail; participants cannot: no message type declares a disaster.

DICJ checks every disaster application against this registry before any bank
is asked (:func:`check_application`): an unknown id is ``UNKNOWN_DISASTER``, a
date outside its period ``DISASTER_EXPIRED``, an area it does not cover
``OUTSIDE_DISASTER_AREA`` — told to the applicant in DICJ's notification.

The checks are pure functions; the table and its history
(``disaster_changes``, who changed what, why, with the audit event's id) are
in PostgreSQL, read by DICJ's desk.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from infra.core.errors import Reason, Rejection, ValidationError

__all__ = ["DISASTER_MIGRATIONS", "Disaster", "check_application", "covers", "declare", "disasters", "find",
           "change_period", "today_jst", "validate_area_code", "validate_areas", "validate_disaster_id"]

JST = timezone(timedelta(hours=9), "JST")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
_AREA = re.compile(r"[0-9]{2}(?:[0-9]{3})?")

DISASTER_MIGRATIONS = [
    """
    CREATE TABLE disasters (
        disaster_id   text PRIMARY KEY,
        name          text NOT NULL,
        areas         text[] NOT NULL,
        applies_from  date NOT NULL,
        applies_until date NOT NULL CHECK (applies_until >= applies_from),
        declared_by   text NOT NULL,
        declared_at   timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE disaster_changes (
        id            bigserial PRIMARY KEY,
        disaster_id   text NOT NULL REFERENCES disasters,
        what          text NOT NULL CHECK (what IN ('DECLARED', 'PERIOD_CHANGED')),
        applies_until date NOT NULL,
        who           text NOT NULL,
        reason        text NOT NULL,
        audit_event   uuid NOT NULL,
        at            timestamptz NOT NULL DEFAULT now()
    );
    """,
]
"""Component ``disasters``: migrated by DICJ's desk and by the ops commands."""


@dataclass(frozen=True)
class Disaster:
    """One declared disaster: where, and when lookups may be made under it (both dates included, JST)."""

    id: str
    name: str
    areas: tuple[str, ...]
    applies_from: date
    applies_until: date

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "areas": list(self.areas),
                "applies_from": self.applies_from.isoformat(), "applies_until": self.applies_until.isoformat()}


def today_jst(now: datetime | None = None) -> date:
    """The date in Japan: disaster periods are Japanese calendar days."""
    return (now or datetime.now(UTC)).astimezone(JST).date()


def validate_disaster_id(value: Any, *, field: str = "disaster_id") -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ValidationError(field, "1 to 40 ASCII letters, digits, - or _, starting with a letter or digit")
    return value


def validate_area_code(value: Any, *, field: str = "area_code") -> str:
    """A 全国地方公共団体コード without its check digit: 2 digits (prefecture 01-47) or 5 (municipality)."""
    if not isinstance(value, str) or not _AREA.fullmatch(value) or not 1 <= int(value[:2]) <= 47:
        raise ValidationError(field, "a prefecture code (2 digits, 01-47) or a municipality code (5 digits)")
    return value


def validate_areas(values: Iterable[Any]) -> tuple[str, ...]:
    areas = tuple(dict.fromkeys(validate_area_code(v, field="areas") for v in values))
    if not areas:
        raise ValidationError("areas", "at least one area")
    return areas


def covers(areas: Iterable[str], area: str) -> bool:
    """Does a disaster over ``areas`` cover ``area``?  A prefecture covers its municipalities; a
    municipality covers itself only (an applicant giving only a prefecture is covered by a prefecture)."""
    return any(area.startswith(a) for a in areas)


def check_application(disaster: Disaster | None, *, area: str, on: date) -> Disaster:
    """May a disaster lookup be made under ``disaster`` by a depositor of ``area`` on ``on``?  The disaster,
    else :class:`Rejection` with the reason (safe to tell the applicant: ids and dates only)."""
    if disaster is None:
        raise Rejection(Reason.UNKNOWN_DISASTER, "no declared disaster has this id")
    if not disaster.applies_from <= on <= disaster.applies_until:
        raise Rejection(Reason.DISASTER_EXPIRED, f"lookups under {disaster.id} may be made from "
                                                 f"{disaster.applies_from} to {disaster.applies_until}")
    if not covers(disaster.areas, area):
        raise Rejection(Reason.OUTSIDE_DISASTER_AREA, f"{disaster.id} does not cover the applicant's area")
    return disaster


def _disaster(row: Any) -> Disaster:
    return Disaster(row["disaster_id"], row["name"], tuple(row["areas"]), row["applies_from"], row["applies_until"])


async def find(conn: Any, disaster_id: str) -> Disaster | None:
    row = await conn.fetchrow("SELECT * FROM disasters WHERE disaster_id = $1", disaster_id)
    return None if row is None else _disaster(row)


async def disasters(conn: Any) -> list[Disaster]:
    return [_disaster(r) for r in await conn.fetch("SELECT * FROM disasters ORDER BY applies_from, disaster_id")]


async def declare(conn: Any, disaster: Disaster, *, who: str, reason: str, audit_event: uuid.UUID) -> bool:
    """Declare ``disaster`` (in the caller's transaction).  True if new; False if the same was declared before.

    Raises :class:`ValidationError` (field ``id``) when the id is taken by a different declaration: a
    declaration is never silently rewritten (change its period with :func:`change_period`).
    """
    if disaster.applies_until < disaster.applies_from:
        raise ValidationError("until", "the period ends before it begins")
    inserted = await conn.fetchval(
        "INSERT INTO disasters (disaster_id, name, areas, applies_from, applies_until, declared_by) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING 1",
        disaster.id, disaster.name, list(disaster.areas), disaster.applies_from, disaster.applies_until, who)
    if inserted is None:
        if await find(conn, disaster.id) != disaster:
            raise ValidationError("id", "another disaster is declared under this id (change-period changes one)")
        return False
    await conn.execute(
        "INSERT INTO disaster_changes (disaster_id, what, applies_until, who, reason, audit_event) "
        "VALUES ($1, 'DECLARED', $2, $3, $4, $5)", disaster.id, disaster.applies_until, who, reason, audit_event)
    return True


async def change_period(conn: Any, disaster_id: str, until: date, *, who: str, reason: str,
                        audit_event: uuid.UUID) -> Disaster:
    """End a disaster's period early or extend it (in the caller's transaction); the changed disaster."""
    row = await conn.fetchrow(
        "UPDATE disasters SET applies_until = $2 WHERE disaster_id = $1 AND applies_from <= $2 RETURNING *",
        disaster_id, until)
    if row is None:
        if await find(conn, disaster_id) is None:
            raise Rejection(Reason.UNKNOWN_DISASTER, "no declared disaster has this id")
        raise ValidationError("until", "the period would end before it begins")
    await conn.execute(
        "INSERT INTO disaster_changes (disaster_id, what, applies_until, who, reason, audit_event) "
        "VALUES ($1, 'PERIOD_CHANGED', $2, $3, $4, $5)", disaster_id, until, who, reason, audit_event)
    return _disaster(row)
