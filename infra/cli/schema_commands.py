"""``renkei schemas list|show|export|check``: the Avro catalogue for operators and schema registries.

``export`` writes the catalogue as Schema Registry request bodies
(``schemas.registry``: RecordNameStrategy subjects, FULL_TRANSITIVE);
``check`` tells whether a proposed ``.avsc`` keeps FULL_TRANSITIVE against every
earlier version of its subject, with the catalogue's own check
(``schemas.catalogue.check_full_transitive``). Who may run them: anyone with the
package: they read only the schemas shipped in it and the file given, and touch
no broker, database or key.

Exit codes: 0 ok (compatible), 1 incompatible, 2 unreadable or invalid input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from infra.core.settings import Settings
from schemas import registry
from schemas.catalogue import (
    Incompatibility,
    SchemaVersion,
    catalogue,
    check_full_transitive,
    fingerprint_of,
    logical_name_of,
    parse_version,
)
from schemas.types import BODY_SCHEMA


def _message_types(name: str) -> list[str]:
    return sorted(t for t, body in BODY_SCHEMA.items() if body == name)


def _fail(message: str) -> int:
    sys.stderr.write(f"renkei: schemas: {message}\n")
    return 2


def _resolve(name: str) -> str | None:
    """A logical name from a logical name or a subject (``renkei.ProvisionInquiry``)."""
    if name in catalogue().by_name:
        return name
    for subject in registry.export():
        if subject.subject == name:
            return subject.logical_name
    return None


async def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    from infra.ops import emit

    rows = []
    for subject in registry.export():
        latest = subject.versions[-1]
        rows.append({"name": subject.logical_name, "subject": subject.subject,
                     "versions": [v.version for v in subject.versions], "latest_fingerprint": latest.fingerprint,
                     "message_types": _message_types(subject.logical_name)})
    rows.sort(key=lambda r: r["name"])
    emit(args, {"schemas": rows}, "Avro catalogue", ["name", "subject", "versions", "latest fingerprint", "message type"],
         [[r["name"], r["subject"], ", ".join(map(str, r["versions"])), r["latest_fingerprint"],
           ", ".join(r["message_types"]) or "—"] for r in rows])
    return 0


async def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    name = _resolve(args.name)
    if name is None:
        return _fail(f"no schema named {args.name!r} (see `renkei schemas list`)")
    versions = catalogue().by_name[name]
    entry = versions.get(args.version) if args.version else versions[max(versions)]
    if entry is None:
        return _fail(f"{name} has no version {args.version} (it has {', '.join(map(str, versions))})")
    if args.json:
        _print({"name": name, "version": entry.version, "subject": registry.subject_name(entry),
                "fingerprint": entry.fingerprint.hex(), "canonical_form": entry.canonical_form,
                "schema": entry.source})
    else:
        _print(entry.source)  # the .avsc itself, so `show NAME > v<N+1>.avsc` starts a new version
    return 0


async def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    subjects = registry.export()
    if args.out is None:
        _print({"subjects": [s.to_json() for s in subjects]})
        return 0
    out: Path = args.out
    for subject in subjects:
        folder = out / subject.subject
        folder.mkdir(parents=True, exist_ok=True)
        _write(folder / "config.json", subject.config_body())
        for version in subject.versions:
            _write(folder / f"v{version.version}.json", version.request_body())
    count = sum(len(s.versions) for s in subjects)
    sys.stderr.write(f"wrote {len(subjects)} subjects, {count} versions under {out}\n")
    return 0


def _write(path: Path, body: dict[str, Any]) -> None:
    path.write_text(json.dumps(body, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _print(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


async def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    try:
        source = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc.strerror}")
    except ValueError:
        return _fail(f"{args.file} is not JSON")
    name = args.name or (logical_name_of(source) if isinstance(source, dict) else "")
    try:
        proposed = parse_version(name, 0, source, where=args.file)
    except ValueError as exc:
        return _fail(str(exc))
    versions: dict[int, SchemaVersion] = dict(catalogue().by_name.get(name, {}))
    same = next((v for v, e in versions.items() if e.source == source), None)
    if same is not None:  # a published version (e.g. the newest, in CI): check it against those before it
        versions = {v: e for v, e in versions.items() if v < same}
    try:
        found = check_full_transitive(source, versions)
    except ValueError as exc:
        return _fail(f"{args.file}: {exc}")
    # A change of docs or defaults only keeps the canonical form, so the single-object header could not
    # tell the two versions apart: the catalogue refuses to load it.
    fingerprint = fingerprint_of(source)
    found += [Incompatibility("proposed", f"v{v}", ("same Parsing Canonical Form and single-object fingerprint "
                                                    f"as v{v} (only docs or defaults differ): not a new version",))
              for v, e in versions.items() if e.fingerprint == fingerprint]
    report = {"file": str(args.file), "name": name, "subject": registry.subject_name(proposed),
              "published_as": same, "checked_against": sorted(versions), "compatibility": "FULL_TRANSITIVE",
              "compatible": not found,
              "incompatibilities": [{"reader": i.reader, "writer": i.writer, "problems": list(i.problems)}
                                    for i in found]}
    if args.json:
        _print(report)
    else:
        where = ", ".join(f"v{v}" for v in sorted(versions)) or "nothing (a new subject)"
        known = f" (published as v{same})" if same is not None else ""
        verdict = "compatible" if not found else "INCOMPATIBLE"
        sys.stdout.write(f"{args.file}{known}: {name}, FULL_TRANSITIVE against {where}: {verdict}\n")
        for incompatibility in found:
            sys.stdout.write(f"  - {incompatibility.describe()}\n")
    return 0 if not found else 1


_ACTIONS = {"list": cmd_list, "show": cmd_show, "export": cmd_export, "check": cmd_check}


async def cmd_schemas(settings: Settings, args: argparse.Namespace) -> int:
    return await _ACTIONS[args.schemas_action](settings, args)


def register(add, common: argparse.ArgumentParser) -> None:
    """``renkei schemas …`` (``add`` is infra.cli's subcommand factory, ``common`` its shared flags)."""
    p = add("schemas", cmd_schemas, "list, show, export (Schema Registry) or check the Avro schemas")
    sub = p.add_subparsers(dest="schemas_action", required=True, metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help_text, description=help_text)

    action("list", "every logical schema: subject, versions, fingerprint, message types")
    show = action("show", "print one schema version's .avsc (--json: with fingerprint)")
    show.add_argument("name", help="logical name (provision_inquiry) or subject (renkei.ProvisionInquiry)")
    show.add_argument("--version", type=int, help="version number (default: the latest)")
    export = action("export", "Schema Registry request bodies, one subject per record "
                                               "(RecordNameStrategy), compatibility FULL_TRANSITIVE")
    export.add_argument("--out", type=Path, help="write <out>/<subject>/config.json and v<N>.json "
                                                 "(default: one JSON document on stdout)")
    check = action("check", "is a proposed .avsc FULL_TRANSITIVE-compatible with every "
                                             "earlier version of its subject? (exit 1 if not)")
    check.add_argument("file", type=Path, help="the proposed .avsc")
    check.add_argument("--name", help="logical name (default: from the record's name)")
