"""``renkei keys list|rotate|retire|revoke|sync`` and ``renkei participants [list]|suspend|resume``.

Who may run them: ``keys list`` and ``participants list`` only read (the public root key
``root.pub`` and the keys topic). Every other command changes the key directory and needs the
platform root key — ``root.key`` in the keys folder and its passphrase — so only ops holding it
can; without it the command exits 2 with ``ROOT_KEY_UNAVAILABLE`` before it reads or writes
anything (``infra.platform.keyadmin``). Its broker principal must be the key publisher (``User:keys``,
``infra.platform.acls``): no other principal may write the keys topic.

Each change is root-signed with the next version of its key id (or participant), published on
the keys topic — the hub and every participant runtime apply it within a poll, no restart — kept
in the root holder's journal, and written to the ops audit trail (``<prefix>.audit.ops``) with
its ``--reason``. Output is a table, or with ``--json`` one JSON object (docs/cli.md). Exit codes:
0 done (or nothing to change), 2 refused (the reason code is in the output), 1 error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from infra.core.settings import Settings

EXIT_DONE, EXIT_ERROR, EXIT_REFUSED = 0, 1, 2
STATES = ("ACTIVE", "RETIRED", "REVOKED")

Run = Callable[[Settings, argparse.Namespace], Awaitable[int]]
Apply = Callable[[Settings, Any, Any], Awaitable[Any]]


# --------------------------------------------------------------------------- output


def _emit(args: argparse.Namespace, report: dict[str, Any], title: str, columns: list[str],
          rows: list[list[Any]], code: int = EXIT_DONE, note: str | None = None) -> int:
    from infra.ops import emit

    emit(args, report, title, columns, rows)
    if note:
        print(f"renkei: {note}", file=sys.stderr)
    return code


def _refused(args: argparse.Namespace, reason: str, detail: str) -> int:
    report = {"command": args.command_name, "status": "REJECTED", "reason": reason, "detail": detail,
              "changes": [], "restored": 0, "warnings": [], "audit": None}
    return _emit(args, report, f"renkei {args.command_name}", ["status", "reason", "detail"],
                 [["REJECTED", reason, detail]], EXIT_REFUSED, f"{args.command_name} refused: {reason} ({detail})")


def _iso(ms: int | None) -> str | None:
    from infra.ops import iso

    return iso(ms)


# --------------------------------------------------------------------------- reading


async def _directory(settings: Settings) -> Any:
    from infra.platform.keystore import KeyStore, load_directory

    return await load_directory(settings, KeyStore.for_settings(settings).root_public_key())


def key_row(entry: Any) -> dict[str, Any]:
    return {"key_id": entry.key_id, "participant": entry.participant_id, "use": entry.purpose.value.lower(),
            "algorithm": entry.algorithm, "state": entry.status.value, "version": entry.version,
            "created": _iso(entry.not_before), "not_after": _iso(entry.not_after)}


def status_row(status: Any) -> dict[str, Any]:
    return {"participant": status.participant_id, "state": status.state.value, "version": status.version,
            "changed_at": _iso(status.changed_at)}


async def cmd_keys_list(settings: Settings, args: argparse.Namespace) -> int:
    from infra.ops import emit
    from infra.platform.endpoints import resolve_running

    directory = await _directory(resolve_running(settings))
    entries = sorted(directory.entries(), key=lambda e: (e.participant_id, e.purpose.value, -e.not_before, e.key_id))
    if args.owner:
        entries = [e for e in entries if e.participant_id == args.owner]
    if args.state:
        entries = [e for e in entries if e.status.value == args.state]
    keys = [key_row(e) for e in entries]
    statuses = [status_row(s) for s in sorted(directory.statuses(), key=lambda s: s.participant_id)
                if not args.owner or s.participant_id == args.owner]
    report = {"keys": keys, "participants": statuses, "skipped": dict(sorted(directory.skipped.items()))}
    skipped = sum(directory.skipped.values())
    footer = f"{len(keys)} keys" + (f"; {skipped} bad records on the keys topic skipped" if skipped else "")
    if statuses and not args.json:
        emit(args, report, "Participant statuses", ["participant", "state", "version", "changed at"],
             [[s["participant"], s["state"], s["version"], s["changed_at"]] for s in statuses])
    emit(args, report, "Key directory", ["key id", "participant", "use", "state", "version", "created", "not after"],
         [[k["key_id"], k["participant"], k["use"], k["state"], k["version"], k["created"], k["not_after"]]
          for k in keys], footer)
    return EXIT_DONE


async def cmd_participants_list(settings: Settings, args: argparse.Namespace) -> int:
    """The registered participants; with a running stack, each one's suspension as published on the keys topic."""
    from infra.core.errors import RenkeiError
    from infra.domain.participants import participants_of
    from infra.platform.endpoints import resolve_running

    participants = participants_of(settings)
    statuses: dict[str, Any] = {}
    followed = False
    try:
        directory = await _directory(resolve_running(settings))
    except RenkeiError:  # no running stack or no root.pub: the participants file alone
        pass
    except Exception as exc:  # noqa: BLE001 - a broker configured but away: still list the file, and say so
        print(f"renkei: the keys topic could not be read ({type(exc).__name__}): suspensions as in the "
              "participants file", file=sys.stderr)
    else:
        followed = True
        statuses = {s.participant_id: s for s in directory.statuses()}
    rows = []
    for p in participants:
        row = p.to_json()
        published = statuses.get(p.id)
        if published is not None:
            row["suspended"] = published.suspended
        row["status_version"] = published.version if published is not None else None
        rows.append(row)
    report = {"participants": rows, "directory": followed}
    return _emit(args, report, "Participants", ["id", "kind", "name", "bank_code", "suspended"],
                 [[r["id"], r["kind"], r["name"], r["bank_code"], r["suspended"]] for r in rows])


# --------------------------------------------------------------------------- changing


async def _change(settings: Settings, args: argparse.Namespace, what: str, detail: dict[str, Any],
                  change: Apply) -> int:
    """The shared path of every directory change: root key first, then publish, then the audit event."""
    from infra.core.errors import ConfigError
    from infra.domain.participants import participants_of
    from infra.ops import OpsEvent, emit, ensure_ops_audit_topic, ops_audit_topic, write_ops_event
    from infra.platform.endpoints import resolve_running
    from infra.platform.kafka import producer
    from infra.platform.keyadmin import KeyAdminRefused
    from infra.platform.keystore import KeyStore

    reason = (args.reason or "").strip()
    if not reason:
        raise ConfigError("--reason is required: say why, it goes into the ops audit trail")
    store = KeyStore.for_settings(settings)
    if not store.has_root_key():
        return _refused(args, "ROOT_KEY_UNAVAILABLE",
                        f"no root key at {store.dir / 'root.key'}: only ops holding the platform root key may change "
                        "the key directory")
    settings = resolve_running(settings)
    participants = participants_of(settings)
    await ensure_ops_audit_topic(settings)  # an action that cannot be audited is not taken
    try:
        published = await change(settings, store, participants)
    except KeyAdminRefused as exc:
        return _refused(args, exc.reason, exc.message)
    changes = [c.to_json() for c in published.changes]
    status = "DONE" if changes else "UNCHANGED"
    event = OpsEvent.new(what, reason, {}, dry_run=False, detail=detail | {"changes": changes})
    prod = producer(settings)
    await prod.start()
    try:
        audit = await write_ops_event(settings, prod, event, {"published": len(changes),
                                                              "restored": published.restored,
                                                              "status": status.lower()})
    finally:
        await prod.stop()
    report = {"command": args.command_name, "status": status, "reason": None, "detail": None, "changes": changes,
              "restored": published.restored, "warnings": published.warnings,
              "audit": {"id": audit["id"], "topic": ops_audit_topic(settings.kafka.topic_prefix)}}
    rows = [[c["key"], c["participant"], c["state"], c["version"]] for c in changes]
    footer = (f"{status.lower()}; audit event {audit['id']}"
              + (f"; {published.restored} records restored from the journal" if published.restored else ""))
    emit(args, report, f"renkei {args.command_name}", ["key", "participant", "state", "version"], rows, footer)
    for warning in published.warnings:
        print(f"renkei: warning: {warning}", file=sys.stderr)
    return EXIT_DONE


async def cmd_keys_rotate(settings: Settings, args: argparse.Namespace) -> int:
    from infra.platform.keyadmin import rotate

    return await _change(settings, args, "keys.rotate", {"participant": args.participant, "overlap_s": args.overlap},
                         lambda s, store, ps: rotate(s, store, ps, args.participant, overlap_s=args.overlap))


async def cmd_keys_retire(settings: Settings, args: argparse.Namespace) -> int:
    from infra.platform.keyadmin import retire

    return await _change(settings, args, "keys.retire", {"key": args.key_id},
                         lambda s, store, ps: retire(s, store, args.key_id))


async def cmd_keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from infra.platform.keyadmin import revoke

    return await _change(settings, args, "keys.revoke", {"key": args.key_id},
                         lambda s, store, ps: revoke(s, store, args.key_id))


async def cmd_keys_sync(settings: Settings, args: argparse.Namespace) -> int:
    from infra.platform.keyadmin import sync

    return await _change(settings, args, "keys.sync", {}, lambda s, store, ps: sync(s, store, ps))


async def cmd_participants_suspend(settings: Settings, args: argparse.Namespace) -> int:
    from infra.platform.keyadmin import set_suspended

    return await _change(settings, args, "participants.suspend", {"participant": args.participant},
                         lambda s, store, ps: set_suspended(s, store, ps, args.participant, True))


async def cmd_participants_resume(settings: Settings, args: argparse.Namespace) -> int:
    from infra.platform.keyadmin import set_suspended

    return await _change(settings, args, "participants.resume", {"participant": args.participant},
                         lambda s, store, ps: set_suspended(s, store, ps, args.participant, False))


# --------------------------------------------------------------------------- parser


async def _dispatch(settings: Settings, args: argparse.Namespace) -> int:
    return await args.run(settings, args)


def register(add: Any, common: argparse.ArgumentParser) -> None:
    """Add ``renkei keys …`` and ``renkei participants …`` to the ``renkei`` parser (``add(name, handler, help)``)."""
    def sub(group: Any, name: str, run: Run, help_text: str) -> argparse.ArgumentParser:
        p = group.add_parser(name, parents=[common], help=help_text, description=help_text)
        command = f"{group_name[group]} {name}"
        p.set_defaults(run=run, command_name=command)
        return p

    def reason(p: argparse.ArgumentParser, *, required: bool, default: str | None = None) -> None:
        p.add_argument("--reason", required=required, default=default,
                       help="why (goes into the ops audit trail)" + ("" if required else f"; default {default!r}"))

    keys = add("keys", _dispatch, "the key directory: list keys; rotate, retire, revoke (ops holding the root key)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    people = add("participants", _dispatch, "list the registered participants; suspend or resume one (root key)")
    people.set_defaults(run=cmd_participants_list, command_name="participants list")
    people_sub = people.add_subparsers(dest="participants_command", required=False, metavar="COMMAND")
    group_name = {keys_sub: "keys", people_sub: "participants"}

    p = sub(keys_sub, "list", cmd_keys_list, "every key: id, participant, use, state, version, created, not-after")
    p.add_argument("--owner", metavar="PARTICIPANT", help="only this participant's keys and status")
    p.add_argument("--state", choices=STATES, help="only keys in this state")
    p = sub(keys_sub, "rotate", cmd_keys_rotate,
            "new signing and encryption keys for a participant (its keyset in this key store); the old ones retire")
    p.add_argument("participant", help="participant id, e.g. bank-9000")
    p.add_argument("--overlap", type=float, default=10.0, metavar="S",
                   help="seconds until the new keys take over (every process has them by then); the old keys "
                        "verify what they signed for as long again (default 10; 0 after a revocation)")
    reason(p, required=False, default="routine rotation")
    p = sub(keys_sub, "retire", cmd_keys_retire,
            "retire a key now: what it signed until now still verifies, nothing later; never sealed to again")
    p.add_argument("key_id", help="key id (see `renkei keys list`)")
    reason(p, required=False, default="retired")
    p = sub(keys_sub, "revoke", cmd_keys_revoke, "revoke a key: refused at once and for good (a compromised key)")
    p.add_argument("key_id", help="key id (see `renkei keys list`)")
    reason(p, required=True)
    p = sub(keys_sub, "sync", cmd_keys_sync,
            "publish what the keys topic lacks (keys of this store's keysets, records it lost); never a key back "
            "to ACTIVE — what `renkei up` does")
    reason(p, required=False, default="sync")

    sub(people_sub, "list", cmd_participants_list, "the registered participants (suspension as published)")
    p = sub(people_sub, "suspend", cmd_participants_suspend,
            "refuse everything from or to a participant, on the running bus within seconds")
    p.add_argument("participant", help="participant id")
    reason(p, required=True)
    p = sub(people_sub, "resume", cmd_participants_resume, "lift a participant's suspension")
    p.add_argument("participant", help="participant id")
    reason(p, required=True)

