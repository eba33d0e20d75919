"""A participant as a client of the bus: send a request, await its answer, keep what arrives.

Used by the simulated portal and agencies of the embedded world, DICJ's desk,
the CLI's participant commands, the demo, bench and chaos tools and the
tests; it lives beside :class:`streams.participant.ParticipantRuntime`, the
runtime it wraps.  Every message arriving in the client's inbox is stored in
``client_inbox`` (the participant's own database) in the runtime's
transaction, so an answer is never lost even if nobody is awaiting it.
Tokens (符号) are obtained through the token-issuance exchange: the My Number
is sealed to the token authority and never travels in the clear.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from infra.core.settings import Settings
from infra.crypto.envelope import Message, Opened
from infra.crypto.tokens import TokenIssuanceClient
from infra.domain.policy import BASIS_TOKEN_ISSUANCE, DATA_PERSON_TOKEN
from schemas import codec
from schemas import types as msg
from streams.participant import Context, ParticipantRuntime

CLIENT_MIGRATIONS = [
    """
    CREATE TABLE client_inbox (
        participant    text NOT NULL,
        message_id     uuid PRIMARY KEY,
        correlation_id uuid NOT NULL,
        type           text NOT NULL,
        sender         text NOT NULL,
        received_at    timestamptz NOT NULL DEFAULT now()
    );
    """,
]


async def _keep(ctx: Context) -> None:
    await ctx.conn.execute(
        "INSERT INTO client_inbox (participant, message_id, correlation_id, type, sender) VALUES ($1, $2, $3, $4, $5)",
        ctx.me, ctx.meta.message_id, ctx.meta.correlation_id, ctx.meta.type, ctx.meta.sender)


class Requester(Protocol):
    """What the token-issuance exchange needs: a started runtime (for the key directory) and ``request``."""

    runtime: ParticipantRuntime

    async def request(self, sender: str, *, type: str, to: str, subject: str, body: dict, data_item: str,
                      basis: str, timeout: float = 30.0) -> Opened: ...


async def obtain_token(client: Requester, participant: str, my_number: str, *, timeout: float = 30.0) -> str:
    """Obtain ``participant``'s token for a person (符号取得) from the hub's token authority.

    The My Number is sealed to the token authority's key; it never travels in the clear.  Goes through
    ``client.request`` so a client that turns rejection notices into errors (the CLI's) does so here too.
    """
    assert client.runtime.directory is not None
    issuer = TokenIssuanceClient(participant, client.runtime.directory.encryption_key("hub"))
    body = codec.decode(issuer.request(my_number), "token_issue_request")
    answer = await client.request(participant, type=msg.TOKEN_ISSUE_REQUEST, to="hub", subject="",
                                  body=body, data_item=DATA_PERSON_TOKEN, basis=BASIS_TOKEN_ISSUANCE, timeout=timeout)
    if answer.meta.type != msg.TOKEN_ISSUE_RESPONSE:
        raise RuntimeError(f"token issuance answered with {answer.meta.type}")
    return answer.body["token"].decode()


class BusClient:
    """One or more participant identities (e.g. the portal and the agencies) talking to the bus."""

    def __init__(self, settings: Settings, identities: list[str], *, group: str) -> None:
        handlers = {t: _keep for t in msg.MESSAGE_TYPES}
        self.runtime = ParticipantRuntime(settings, identities, handlers, group=group,
                                          migrations={"bus-client": CLIENT_MIGRATIONS})

    async def __aenter__(self) -> BusClient:
        await self.runtime.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.runtime.stop()

    async def token_for(self, participant: str, my_number: str, *, timeout: float = 30.0) -> str:
        """Obtain ``participant``'s token for a person (符号取得) from the hub's token authority."""
        return await obtain_token(self, participant, my_number, timeout=timeout)

    async def request(self, sender: str, *, type: str, to: str, subject: str, body: dict, data_item: str,
                      basis: str, timeout: float = 30.0, procedure: str | None = None) -> Opened:
        """Send one message and await the first answer in ``sender``'s inbox with its correlation.

        ``procedure``: the public-benefit procedure it serves (infra/domain/procedures.toml), signed in the
        envelope; a STEP2 inquiry without one is refused by the hub (UNKNOWN_PROCEDURE).
        """
        message = Message(body=body, type=type, to=to, subject=subject, data_item=data_item, basis=basis,
                          correlation_id=str(uuid.uuid4()), procedure=procedure)
        return await self.runtime.request(sender, message, timeout=timeout)
