"""``renkei bank channel-key``: issue, rotate, retire and export a bank's HTTP channel keys.

Works on the key store only (no running stack needed).  Without options it
issues the bank's first key if there is none and lists the key ids; ``--rotate``
issues the next key (it signs from then on), ``--retire ID`` stops accepting a
key, ``--export FILE`` writes the bank's copy (0600) for its own systems.  A
running connector reads its keys when it starts: restart it after a change.
Never prints a secret.  Exit 0 done, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


async def cmd_bank_channel_key(settings: Any, args: argparse.Namespace) -> int:
    from connectors import channel_keys
    from connectors.commands import EXIT_DONE, Outcome, emit
    from infra.core.errors import ConfigError
    from infra.domain.participants import Kind, participants_of

    participants = participants_of(settings)
    bank = participants.by_bank_code(args.bank) or participants.get(args.bank)
    if bank is None or bank.kind is not Kind.BANK:
        raise ConfigError(f"--bank {args.bank}: no participating bank has this code or id")
    keys = channel_keys.load(settings, bank.id, create=True)
    if args.rotate:
        keys = channel_keys.rotate(settings, bank.id)
    if args.retire:
        keys = channel_keys.retire(settings, bank.id, args.retire)
    if args.export is not None:
        channel_keys.export(keys, args.export)
    report = {"command": args.command_name, "status": "DONE", "reason": None, "detail": None, "bank": bank.id,
              "keys": [k.key_id for k in keys.keys], "current": keys.current.key_id,
              "exported_to": str(args.export) if args.export is not None else None}
    return emit(args, Outcome(EXIT_DONE, report, [(
        f"{bank.id}: HTTP channel keys (the last one signs)", ["key id", "signs", "exported to"],
        [[k.key_id, "yes" if k is keys.current else "", report["exported_to"] or ""] for k in keys.keys])]))


def register() -> None:
    """Add ``renkei bank channel-key`` (after :func:`connectors.commands.register`, which creates the group)."""
    from connectors.commands import subcommand

    p = subcommand("bank", "channel-key", cmd_bank_channel_key,
                   "issue, rotate, retire or export the bank's HTTP channel keys (request signatures)",
                   report_defaults={"bank": None, "keys": [], "current": None, "exported_to": None})
    p.add_argument("--bank", required=True, help="bank code (9000) or bank participant id (bank-9000)")
    p.add_argument("--rotate", action="store_true", help="issue the next key; it signs from now on")
    p.add_argument("--retire", metavar="KEY_ID", help="stop accepting this key (not the last one)")
    p.add_argument("--export", type=Path, metavar="FILE", help="write the bank's copy of its keys (mode 0600)")
