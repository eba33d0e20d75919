"""The portal's tables (component ``connector-portal``): cards, sessions, requests, notices, the account seen.

One list of migrations, applied by the portal connector when it starts and by
the commands that act on the portal's database (``renkei portal card …``,
``renkei portal register --card …``), so whichever runs first creates them.
Nothing here holds a My Number: people are known by the portal's token.
"""

from __future__ import annotations

from typing import Any

PORTAL_COMPONENT = "connector-portal"

PORTAL_MIGRATIONS = [
    """
    CREATE TABLE portal_people (
        card_id     text PRIMARY KEY,
        token       text NOT NULL,
        pin_salt    bytea NOT NULL,
        pin_hash    bytea NOT NULL,
        failed      integer NOT NULL DEFAULT 0,
        locked      boolean NOT NULL DEFAULT false
    );
    CREATE TABLE portal_sessions (
        session_id  text PRIMARY KEY,
        card_id     text NOT NULL REFERENCES portal_people (card_id),
        expires_at  timestamptz NOT NULL
    );
    CREATE TABLE portal_requests (
        correlation_id uuid PRIMARY KEY,
        card_id     text NOT NULL REFERENCES portal_people (card_id),
        kind        text NOT NULL,
        status      text NOT NULL,
        detail      text,
        created_at  timestamptz NOT NULL DEFAULT now(),
        answered_at timestamptz
    );
    """,
    # Cards get a state (ACTIVE / LOCKED / SUSPENDED = reported lost); sessions are stored as the SHA-256 of
    # the cookie (the old plain ids are dropped: everyone logs in again) with idle and absolute limits;
    # wrong-PIN counts of ids that name no card are kept like a card's (no enumeration); numbering requests
    # keep each bank's answer; notices (お知らせ) and the account they last showed are sealed under the
    # portal's notice key (connectors.portal_notices).
    """
    ALTER TABLE portal_people ADD COLUMN state text NOT NULL DEFAULT 'ACTIVE'
            CHECK (state IN ('ACTIVE', 'LOCKED', 'SUSPENDED')),
        ADD COLUMN issued_at timestamptz NOT NULL DEFAULT now(),
        ADD COLUMN state_changed_at timestamptz;
    UPDATE portal_people SET state = 'LOCKED', state_changed_at = now() WHERE locked;
    ALTER TABLE portal_people DROP COLUMN locked;
    CREATE INDEX portal_people_token ON portal_people (token);
    DROP TABLE portal_sessions;
    CREATE TABLE portal_sessions (
        session_hash bytea PRIMARY KEY,
        card_id      text NOT NULL REFERENCES portal_people (card_id),
        created_at   timestamptz NOT NULL DEFAULT now(),
        last_seen_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX portal_sessions_card ON portal_sessions (card_id);
    CREATE TABLE portal_unknown_cards (
        card_key    bytea PRIMARY KEY,
        failed      integer NOT NULL,
        updated_at  timestamptz NOT NULL DEFAULT now()
    );
    ALTER TABLE portal_requests ADD COLUMN banks jsonb;
    CREATE INDEX portal_requests_card ON portal_requests (card_id, created_at DESC);
    CREATE TABLE portal_notices (
        message_id  uuid PRIMARY KEY,
        token       text NOT NULL,
        sender      text NOT NULL,
        kind        text NOT NULL,
        content_ct  bytea NOT NULL,
        occurred_at timestamptz NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now(),
        read_at     timestamptz
    );
    CREATE INDEX portal_notices_token ON portal_notices (token, occurred_at DESC);
    CREATE TABLE portal_accounts (
        token       text PRIMARY KEY,
        account_ct  bytea NOT NULL,
        occurred_at timestamptz NOT NULL
    );
    """,
]


async def migrate_portal(pool_or_conn: Any) -> list[int]:
    """Create or update the portal's tables (idempotent; safe while the portal runs)."""
    from infra.platform.storage import migrate

    return await migrate(pool_or_conn, PORTAL_COMPONENT, PORTAL_MIGRATIONS)


__all__ = ["PORTAL_COMPONENT", "PORTAL_MIGRATIONS", "migrate_portal"]
