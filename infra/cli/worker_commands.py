"""``renkei worker hub|registry|banks|dicj``: run one of the platform's workers in the foreground.

What `renkei up` starts as supervised children (``infra.platform.stack.WORKERS``), as a command a container or a
service manager runs directly: the process becomes the worker (``exec``: same pid, so SIGTERM from
``docker stop`` or systemd reaches it and it stops as it does under `renkei up`). Hub workers scale out
by running the command again (one consumer group).

Who may run it: whoever holds the worker's credentials (its Kafka principal's password file, its
PostgreSQL role's line in the password file, the key passphrase); the command adds no right of its own.
The configuration flags, ``RENKEI_*`` variables and ``--config`` work as for every command; they reach
the worker as ``RENKEI_*`` variables (never secrets on a command line), and ``--ops-host``/``--ops-port``
as ``RENKEI_OPS_HOST``/``RENKEI_OPS_PORT``, where /health and /metrics are served.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from infra.core.errors import RenkeiError, report
from infra.core.settings import ENV_PREFIX, Settings, setting_keys

__all__ = ["WORKER_MODULES", "register", "run_worker_module", "worker_environment"]

WORKER_MODULES: dict[str, tuple[str, str]] = {
    "hub": ("streams.hub_loop", "the hub gateway (verify, authorise, translate, record, forward); run N for N workers"),
    "registry": ("streams.registry", "the public-funds account registry (Digital Agency)"),
    "banks": ("connectors.bank_sim", "the simulated banks (every bank no channel connector serves)"),
    "dicj": ("connectors.dicj", "DICJ's desk: numbering requests passed on, inheritance and disaster lookups"),
}
"""Worker name -> (module run with ``python -m``, what it is)."""


def worker_environment(args: argparse.Namespace, environ: dict[str, str]) -> dict[str, str]:
    """The worker's environment: ``environ`` plus the configuration given as flags (flags win over the
    environment, as in :func:`infra.core.settings.load_settings`)."""
    env = dict(environ)
    keys = set(setting_keys())
    for key, value in vars(args).items():
        if key in keys and value is not None:
            env[ENV_PREFIX + key.upper()] = str(value)
    if getattr(args, "config", None) is not None:
        env["RENKEI_CONFIG"] = str(args.config)
    return env


async def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    module = WORKER_MODULES[args.worker][0]
    sys.stdout.flush()
    sys.stderr.flush()
    # -P: the current folder is not on sys.path, so no streams/ or infra/ there can stand in for Renkei's.
    os.execve(sys.executable, [sys.executable, "-P", "-m", __name__, module],
              worker_environment(args, dict(os.environ)))
    return 1  # not reached: exec replaced this process


def run_worker_module(module: str) -> int:
    """Run ``module``'s ``main`` (its settings from the environment); errors as the CLI reports them, exit
    2 for a configuration error and 1 for another, never a traceback."""
    main = importlib.import_module(module).main
    try:
        main([])
    except RenkeiError as exc:
        return report(exc)
    return 0


def register(add: Any) -> None:
    """Add ``renkei worker NAME`` (``add`` is :func:`infra.cli.build_parser`'s)."""
    parser = add("worker", cmd_worker, "run one platform worker in the foreground (containers, service managers)")
    parser.add_argument("worker", choices=sorted(WORKER_MODULES),
                        help="; ".join(f"{name}: {text}" for name, (_, text) in WORKER_MODULES.items()))


if __name__ == "__main__":  # what `renkei worker NAME` execs: python -m infra.cli.worker_commands <module>
    if len(sys.argv) != 2 or sys.argv[1] not in {m for m, _ in WORKER_MODULES.values()}:
        sys.exit("usage: renkei worker {%s}" % ",".join(sorted(WORKER_MODULES)))
    sys.exit(run_worker_module(sys.argv[1]))
