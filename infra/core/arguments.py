"""The configuration flags every command and every worker process accepts, and a worker's settings from them.

Flags beat ``RENKEI_*`` environment variables, which beat a ``--config`` file, which beats the defaults
(docs/configuration.md). A usage error never echoes a long digit run (a mistyped My Number).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import NoReturn

from infra.core.settings import Settings, load_settings

__all__ = ["Parser", "common_parser", "hide_digit_runs", "worker_settings"]


def common_parser() -> argparse.ArgumentParser:
    """The configuration flags every command and every worker process accepts."""
    common = argparse.ArgumentParser(add_help=False)
    S = argparse.SUPPRESS
    g = common.add_argument_group("configuration (flags > RENKEI_* env > --config file > defaults)")
    g.add_argument("--config", type=Path, default=S, help="TOML configuration file")
    g.add_argument("--state-dir", dest="state_dir", default=S, help="state folder (default .renkei)")
    g.add_argument("--kafka-bootstrap", dest="kafka_bootstrap", default=S,
                   help="Kafka bootstrap servers; unset = the embedded broker")
    g.add_argument("--broker", choices=["auto", "kafka", "tansu"], default=S,
                   help="the embedded broker: Apache Kafka, Tansu (memory only), or auto = Kafka if Java 17+")
    g.add_argument("--pg-dsn", dest="pg_dsn", default=S, help="PostgreSQL DSN; unset = the embedded PostgreSQL")
    g.add_argument("--participants-file", dest="participants_file", default=S, help="participants TOML file")
    g.add_argument("--banks", type=int, default=S, help="number of generated demo banks (default 5)")
    g.add_argument("--topic-prefix", dest="kafka_topic_prefix", default=S, help="topic name prefix (default renkei)")
    g.add_argument("--participant-id", dest="participant_id", default=S, help="the participant this process acts as")
    g.add_argument("--registry-check-deadline", dest="registry_check_deadline_s", type=int, default=S, metavar="S",
                   help="seconds the registry waits for a bank's existence check before answering TIMEOUT (3600)")
    for flag, dest, meaning in (
            ("--lookup-deadline-inheritance", "lookup_deadline_inheritance_s", "an inheritance lookup gathers "
             "the banks' answers (10d)"),
            ("--lookup-deadline-disaster", "lookup_deadline_disaster_s", "a disaster lookup gathers answers (3d)"),
            ("--lookup-reminder-interval", "lookup_reminder_interval_s", "DICJ waits before re-sending a lookup "
             "to the banks that have not answered (1d)"),
            ("--numbering-deadline", "numbering_deadline_s", "DICJ gathers the banks' answers to a numbering "
             "request it passes on (3d)")):
        g.add_argument(flag, dest=dest, default=S, metavar="DURATION",
                       help=f"how long {meaning}; seconds or 90s, 30m, 36h, 10d")
    g.add_argument("--ops-host", dest="ops_host", default=S, metavar="HOST",
                   help="address of this process's /metrics and /health (default 127.0.0.1)")
    g.add_argument("--ops-port", dest="ops_port", type=int, default=S, metavar="PORT",
                   help="port of /metrics and /health (0 = a free one; `up`: the first worker's, +1 each after)")
    g.add_argument("--json", action="store_true", default=S, help="print stable JSON instead of tables")
    return common


_DIGIT_RUN = re.compile(r"\d(?:[\d \-]*\d)?")


def hide_digit_runs(text: str) -> str:
    """``text`` with every run of 10 or more digits (spaces and hyphens allowed between them) replaced by
    ``[digits hidden]``: a mistyped flag must not echo a My Number (12 digits) into a terminal or a log."""
    return _DIGIT_RUN.sub(
        lambda m: "[digits hidden]" if sum(c.isdigit() for c in m.group()) >= 10 else m.group(), text)


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors (unrecognized arguments, invalid values) never echo a long digit run.

    Subcommand parsers are of the same class (``add_subparsers`` uses the parent's class)."""

    def error(self, message: str) -> NoReturn:
        super().error(hide_digit_runs(message))


def worker_settings(argv: list[str] | None = None, *, participant_id: str | None = None) -> Settings:
    """Settings for a worker process (``python -m streams.hub_loop --kafka-bootstrap ...``)."""
    args = Parser(parents=[common_parser()]).parse_args(argv)
    flat = {k: v for k, v in vars(args).items() if k not in ("json", "config")}
    if participant_id and "participant_id" not in flat:
        flat["participant_id"] = participant_id
    return load_settings(cli=flat, config_file=getattr(args, "config", None))
