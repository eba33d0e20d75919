"""``renkei portal card issue|lock|unlock|report-lost``: the card issuer's commands, run at the counter.

Who may run them: the card issuer — the portal's operator at the municipal
counter, on the portal's machine.  They need the portal's database (its role,
where ``portal_people`` lives) and the portal's keys: ``issue`` and ``unlock``
obtain the person's portal token through the token-issuance exchange, which
the token authority answers only for a request signed with the portal's own
key.  A person has neither; they use their card on the page or with
``renkei portal register|… --card ID --pin -``.  A machine without the
portal's keyset is refused (exit 2, ``UNAUTHORISED``) before anything is read.

- ``issue --card ID --my-number - --pin -``: both secrets from standard input,
  the My Number first, then the PIN (on a terminal: prompted, never echoed;
  never on the command line).  The My Number is exchanged for the portal's
  token and not kept.  ``CARD_EXISTS`` if the id was issued already.
- ``lock --card ID``: lock the card (the person asks, or the issuer suspects
  misuse); every session of it ends.
- ``report-lost --card ID``: suspend a lost card at once; every session ends.
- ``unlock --card ID --my-number - --pin -``: the holder shows their My
  Number (it must give the card's token: ``NOT_CARD_HOLDER`` otherwise) and
  sets a new PIN; a locked or suspended card becomes usable again.

Exit codes as the other participant commands: 0 done, 2 refused (with the
reason code), 1 error.
"""

from __future__ import annotations

import argparse
from typing import Any

from connectors.commands import (
    EXIT_DONE,
    Outcome,
    act,
    emit,
    normalise_my_number,
    read_secret,
    refused,
    report,
    subcommand,
)

PORTAL_ID = "portal"
ACTIONS = {
    "issue": "issue a card to a person: --my-number - --pin - (both from standard input)",
    "lock": "lock a card; every session of it ends",
    "unlock": "unlock a locked or lost card at the counter: the holder's --my-number - and a new --pin -",
    "report-lost": "suspend a lost card at once; every session of it ends",
}


def _no_portal_keys(settings: Any) -> str | None:
    """Why this machine may not act as the card issuer (no portal keyset), or None."""
    from infra.core.errors import ConfigError
    from infra.platform.keystore import KeyStore

    try:
        KeyStore.for_settings(settings).keyset(PORTAL_ID)
    except ConfigError:
        return "this machine holds no portal keys: cards are issued and managed by the card issuer on the portal's " \
               "machine"
    return None


async def cmd_card(settings: Any, args: argparse.Namespace) -> int:
    from connectors.portal_cards import CardStore, validate_card_id, validate_pin
    from connectors.portal_schema import migrate_portal
    from infra.core.errors import Rejection, ValidationError

    action = args.card_action
    why = _no_portal_keys(settings)
    if why is not None:
        return emit(args, refused(args, "UNAUTHORISED", why))
    try:
        card = validate_card_id(args.card, "--card")
    except ValidationError as exc:
        return emit(args, refused(args, exc.code, exc.message))
    needs_person = action in ("issue", "unlock")
    my_number = pin = None
    if needs_person:
        if args.my_number != "-" or args.pin != "-":
            return emit(args, refused(args, "INVALID_FIELD", "--my-number and --pin are read from standard input "
                                                             "only (--my-number - --pin -)"))
        raw, pin = read_secret("My Number: "), read_secret("PIN (4 digits): ")
        try:
            my_number = normalise_my_number(raw)
            validate_pin(pin)
        except ValidationError as exc:
            return emit(args, refused(args, exc.code, exc.message))

    async def work(settings: Any, client: Any, _: Any) -> Outcome:
        from infra.platform.pgdsn import component_dsn
        from infra.platform.storage import create_pool

        token = await client.token_for(PORTAL_ID, my_number, timeout=args.timeout) if needs_person else None
        pool = await create_pool(component_dsn(settings, PORTAL_ID), min_size=1, max_size=2)  # the portal's tables
        try:
            await migrate_portal(pool)
            cards = CardStore(pool)
            try:
                if action == "issue":
                    await cards.issue(card, token, pin)
                elif action == "unlock":
                    await cards.unlock(card, token, pin)
                elif action == "lock":
                    await cards.lock(card)
                else:
                    await cards.report_lost(card)
            except Rejection as exc:
                return refused(args, exc.code, exc.message)
            state = await cards.state(card)
        finally:
            await pool.close()
        assert state is not None
        return Outcome(EXIT_DONE, report(args, "DONE", card=card, state=state[0].value), [(f"Card {card}: {action}", ["card", "state"], [[card, state[0].value]])])

    return await act(settings, args, PORTAL_ID if needs_person else None, work, person=False)


def register() -> None:
    """Add ``renkei portal card issue|lock|unlock|report-lost`` (after :func:`connectors.commands.register`)."""
    from infra.core.arguments import common_parser

    group = subcommand("portal", "card", cmd_card, "the card issuer's commands: issue, lock, unlock, report a lost card")
    actions = group.add_subparsers(dest="card_action", required=True, metavar="ACTION")
    for action, help_text in ACTIONS.items():
        p = actions.add_parser(action, parents=[common_parser()], help=help_text, description=help_text)
        p.set_defaults(command_name=f"portal card {action}", report_defaults={"card": None, "state": None})
        p.add_argument("--card", required=True, metavar="ID", help="the card id: 4 to 32 letters, digits or '-'")
        if action in ("issue", "unlock"):
            p.add_argument("--my-number", dest="my_number", required=True, metavar="-",
                           help="`-`: the person's My Number from standard input (first line)")
            p.add_argument("--pin", required=True, metavar="-",
                           help="`-`: the card's (new) PIN, 4 digits, from standard input (after the My Number)")
        p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                       help="seconds to wait for the token issuance (default 30)")


__all__ = ["ACTIONS", "cmd_card", "register"]
