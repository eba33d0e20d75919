"""A stand-in for J-LIS (地方公共団体情報システム機構): the resident record's deaths, for DICJ's 相続時照会 check.

In the real system DICJ obtains the deceased's number from J-LIS (the basic
resident register) and so learns that the person has died before any bank is
asked.  Here that check is this small simulation with its own table,
``jlis_deaths`` — one row per recorded death: the person, as DICJ knows them
(DICJ's own token, standing for the 住民票コード J-LIS answers from), and the
date of death on the resident record.

It is OUTSIDE the platform's trust: it is not a participant, it signs
nothing, the hub never sees it.  DICJ trusts its answer as it would trust
J-LIS, and nothing on the platform can verify it (docs/lookups.md).  Deaths
are recorded by the demo, the tests, or by hand with ``renkei dicj
record-death`` (connectors.commands).
"""

from __future__ import annotations

from datetime import date
from typing import Any

__all__ = ["JLIS_MIGRATIONS", "date_of_death", "death_confirmed", "record_death"]

JLIS_MIGRATIONS = [
    """
    CREATE TABLE jlis_deaths (
        person      text PRIMARY KEY,
        died_on     date NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now()
    );
    """,
]
"""Component ``jlis-sim``: migrated by DICJ's desk (its only reader) and by ``renkei dicj record-death``."""


async def record_death(conn: Any, person: str, died_on: date) -> None:
    """Record on the (simulated) resident record that ``person`` (DICJ's token) died on ``died_on``."""
    await conn.execute("INSERT INTO jlis_deaths (person, died_on) VALUES ($1, $2) ON CONFLICT (person) "
                       "DO UPDATE SET died_on = EXCLUDED.died_on, recorded_at = now()", person, died_on)


async def date_of_death(conn: Any, person: str) -> date | None:
    """The date of death the resident record holds for ``person``, or None (alive, or unknown)."""
    return await conn.fetchval("SELECT died_on FROM jlis_deaths WHERE person = $1", person)


def death_confirmed(recorded: date | None, stated: date) -> bool:
    """An heir's application stands only if the resident record shows the death on the date its evidence states."""
    return recorded is not None and recorded == stated
