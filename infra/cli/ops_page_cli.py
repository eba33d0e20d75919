"""``renkei ops serve`` (the read-only ops page, infra.ops.ops_page) and ``renkei ops targets`` (Prometheus
file-based discovery of the running workers, infra.ops.metrics_targets)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path
from typing import Any

from infra.core.settings import Settings


async def cmd_ops_serve(settings: Settings, args: argparse.Namespace) -> int:
    """Serve the ops page until SIGINT or SIGTERM."""
    from infra.ops.ops_page import OpsPage, PageAccess
    from infra.platform.endpoints import resolve_running

    access = PageAccess.for_address(args.host, args.token_file)
    settings = resolve_running(settings)
    async with OpsPage(settings, access, host=args.host, port=args.port) as page:
        if args.json:
            print(json.dumps({"url": page.url, "token_required": access.token is not None}), flush=True)
        else:
            print(f"Renkei ops page: {page.url} (read-only; "
                  f"{'Authorization: Bearer <token> required' if access.token else 'loopback peers only'})", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    return 0


async def cmd_ops_targets(settings: Settings, args: argparse.Namespace) -> int:
    """Print (or write for ``file_sd_configs``) the scrape targets of the running workers."""
    from infra.ops.metrics_targets import scrape_targets, write_file_sd

    targets = scrape_targets(settings.state_dir)
    if args.output is not None:
        write_file_sd(targets, args.output)
    if args.json or args.output is None:
        print(json.dumps([t.to_file_sd() for t in targets], indent=2))
    else:
        print(f"{len(targets)} targets written to {args.output}")
    return 0 if targets else 1


async def _dispatch(settings: Settings, args: argparse.Namespace) -> int:
    return int(await args.run(settings, args))


def register(add: Any, common: argparse.ArgumentParser) -> None:
    """Add ``renkei ops serve|targets`` to the ``renkei`` parser (``add(name, handler, help)``)."""
    ops = add("ops", _dispatch, "the ops page (read-only, metadata only) and Prometheus targets of the workers")
    sub = ops.add_subparsers(dest="ops_command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", parents=[common], help="serve the read-only ops page",
                           description="A web page of components and health, lag per group, dead letters by "
                                       "reason and recent ops audit events; metadata only. Loopback peers only, "
                                       "or a bearer token (--token-file) on any address.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other "
                                                          "needs --token-file)")
    serve.add_argument("--port", type=int, default=0, help="port (0 = a free one)")
    serve.add_argument("--token-file", dest="token_file", type=Path, metavar="FILE",
                       help="file holding the token every request must send as Authorization: Bearer …")
    serve.set_defaults(run=cmd_ops_serve)
    targets = sub.add_parser("targets", parents=[common], help="scrape targets of the running workers",
                             description="The workers serving /metrics under the state folder, in Prometheus "
                                         "file_sd format (label component); --output writes the file atomically.")
    targets.add_argument("--output", type=Path, metavar="FILE", help="write the file_sd JSON here")
    targets.set_defaults(run=cmd_ops_targets)
