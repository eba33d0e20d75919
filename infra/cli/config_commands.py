"""The conventions an operator expects of a CLI: ``renkei --version``, ``renkei completion bash|zsh``,
``renkei config show [--json]``.

``completion`` is generated from the parser itself (shtab: a static script, so pressing TAB does not
start Python, and no hook in the user's shell beyond sourcing it). ``config show`` prints the
effective configuration — every key, its value and where it came from (default, file, environment,
flag; ``infra.core.settings.setting_sources``) — with secrets redacted. Who may run them: anyone who may
run ``renkei``; none reads a secret's value out (``config show`` prints that one is set, never what),
nor touches a broker, database or key.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from infra.core.settings import Settings, setting_keys, setting_sources, setting_value

REDACTED = "<redacted>"
SHELLS = ("bash", "zsh")


def version() -> str:
    """The installed package's version (pyproject.toml's), or "unknown" when run from a bare checkout."""
    try:
        return metadata.version("renkei")
    except metadata.PackageNotFoundError:
        return "unknown"


def completion_script(shell: str, parser: argparse.ArgumentParser) -> str:
    import shtab

    return shtab.complete(parser, shell=shell)


def _shown(key: str, value: Any, secret: bool) -> Any:
    if value is None or value == "":
        return None
    if key == "pg_dsn":
        from infra.platform.pgdsn import public_dsn

        return public_dsn(str(value))  # where the server is, never a password or a password file
    if secret:
        return REDACTED
    return str(value) if isinstance(value, Path) else value


def effective_config(settings: Settings, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every setting of ``settings`` with its source, as ``main`` loaded it from ``args``."""
    from infra.core.arguments import common_parser

    flags = {k: v for k, v in vars(args).items() if k not in ("handler", "command", "json", "config")}
    sources = setting_sources(cli=flags, config_file=getattr(args, "config", None))
    # argparse has no public accessor for a parser's actions; this is the stdlib's, read only.
    flag_names = {a.dest: a.option_strings[0] for a in common_parser()._actions if a.option_strings}
    rows = []
    for key in setting_keys():
        source = sources[key]
        origin = flag_names.get(key, "") if source.source == "flag" else source.origin
        rows.append({"key": key, "value": _shown(key, setting_value(settings, key), source.secret),
                     "source": source.source, "origin": origin, "secret": source.secret})
    return rows


async def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    from infra.ops import emit

    rows = effective_config(settings, args)
    emit(args, {"settings": rows}, "Effective configuration (flags > RENKEI_* env > --config file > defaults)",
         ["key", "value", "source", "origin"],
         [[r["key"], "" if r["value"] is None else r["value"], r["source"], r["origin"]] for r in rows])
    return 0


def register(add, common: argparse.ArgumentParser, parser: argparse.ArgumentParser) -> None:
    """``renkei --version``, ``renkei completion``, ``renkei config show`` (hooks of infra.cli)."""
    parser.add_argument("--version", action="version", version=f"renkei {version()}")
    async def cmd_completion(settings: Settings, args: argparse.Namespace) -> int:
        sys.stdout.write(completion_script(args.shell, parser))  # the whole `renkei` parser, built by then
        return 0

    completion = add("completion", cmd_completion, "print a shell completion script for bash or zsh")
    completion.add_argument("shell", choices=SHELLS)
    completion.epilog = ("bash: `source <(renkei completion bash)` (or save it under "
                         "~/.local/share/bash-completion/completions/renkei); zsh: save it as _renkei in a "
                         "folder on $fpath, then `compinit`")
    config = add("config", cmd_config, "show the effective configuration, each value's source, secrets redacted")
    sub = config.add_subparsers(dest="config_action", required=True, metavar="ACTION")
    sub.add_parser("show", parents=[common], help="every setting, its value and its source (default, file, "
                                                  "environment, flag)")
