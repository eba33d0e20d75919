"""Long-running connector processes: ``python -m connectors.serve bank|portal|agency`` (and ``renkei … serve``).

Why this file is long: the three long-running connector processes (bank, portal, agency) share the start-up,
lease and shutdown path shown here.

Each serves until SIGTERM or SIGINT, then stops gracefully (the runtime's
``stop()``: the pass in flight finishes, the outbox is flushed, offsets of an
unfinished batch are not committed).  Each prints where it listens at start
(``--json``: one JSON line), serves ``/health`` and ``/metrics``, and logs
participant ids, message types and reason codes only — never personal data.

- ``bank --bank 9003 --channel files --root DIR`` or ``--channel http
  --listen-port P --bank-url https://…``: one bank's channel connector (HTTP: TLS
  only, every call signed with the bank's channel key; the certificate is issued
  from the platform's channel CA unless ``--tls-cert``/``--tls-key`` are given).
- ``portal --port P [--tls-cert FILE --tls-key FILE]``: the portal web app and
  API (over TLS with a certificate: the session cookie is then ``Secure``).
- ``agency --agency ID``: the agency outbox relay (:func:`connectors.agency.serve`).

**Bank channel lease.**  ``renkei up`` runs the bank simulator for every bank,
so a connector for bank X would otherwise answer X's existence checks next to
the simulator.  A bank connector holds a lease (``bank_channel_leases``, in its
database: the platform's when run against ``renkei up``) naming X and the
message types its channel handles: taken at start (exit 2 when another live
connector holds it, unless ``--standby``), renewed every ``ttl/3`` seconds,
released after a graceful stop.  In each batch transaction the simulator parks
X's messages of those types while a live lease covers them, and the connector
leaves alone what its live lease does not cover; parked messages go to the lease
holder, or back to the simulator once no live lease covers them.  The claims
(``processed_messages``) are shared, so whichever side reads a message first,
its effect happens once.  A new connector group starts where the simulator's
group is (committed for it before it joins), not at the inbox's beginning.
See docs/connectors.md, "Deploying".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import socket
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from infra.core.errors import ConfigError, RenkeiError, report
from infra.core.logs import configure_logging
from infra.core.settings import Settings
from infra.domain.participants import Kind, Participant, participants_of
from infra.platform.metrics import Counter

log = logging.getLogger("renkei.connector.serve")

LEASE_TTL_S = 15.0
DRAIN_EVERY_S = 1.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)

Announce = Callable[[dict[str, Any]], None]
Body = Callable[[asyncio.Event, Announce], Awaitable[None]]


class LeaseHeld(RenkeiError):
    """Another live connector holds the bank's channel lease (exit 2, reason ``LEASE_HELD``)."""

    def __init__(self, bank_id: str, holder: str, channel: str, expires_at: Any) -> None:
        super().__init__(f"{bank_id} is served by another connector ({channel}, holder {holder}, lease until "
                         f"{expires_at.isoformat()}); stop it first, or start this one with --standby")
        self.detail = {"reason": "LEASE_HELD", "bank": bank_id, "holder": holder, "channel": channel,
                       "expires_at": expires_at.isoformat()}


class LeaseLost(RenkeiError):
    """Another connector took the lease (ours had expired): this one stopped (exit 1)."""


# -- the lease ------------------------------------------------------------------------------------


class BankChannelLease:
    """One bank's channel lease, held by this process (``holder`` = host:pid:random)."""

    def __init__(self, dsn: str, bank_id: str, channel: str, types: list[str], *, ttl_s: float = LEASE_TTL_S) -> None:
        self.dsn, self.bank_id, self.channel = dsn, bank_id, channel
        self.types = sorted(types)
        self.ttl_s = ttl_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.pool: Any = None
        self.held = False

    async def open(self) -> None:
        from connectors.bank_sim import HANDOVER_MIGRATIONS
        from infra.platform.storage import create_pool, migrate

        self.pool = await create_pool(self.dsn, min_size=1, max_size=2)
        await migrate(self.pool, "bank-handover", HANDOVER_MIGRATIONS)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def take(self) -> Any:
        """Take the lease if it is free, expired or ours; otherwise return the live holder's row."""
        row = await self.pool.fetchrow(
            "INSERT INTO bank_channel_leases AS l (bank_id, channel, holder, types, expires_at) "
            "VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) ON CONFLICT (bank_id) DO UPDATE "
            "SET channel = EXCLUDED.channel, holder = EXCLUDED.holder, types = EXCLUDED.types, taken_at = now(), "
            "expires_at = EXCLUDED.expires_at, released_at = NULL WHERE l.expires_at <= now() OR l.holder = $3 "
            "RETURNING holder", self.bank_id, self.channel, self.holder, self.types, self.ttl_s)
        if row is not None:
            self.held = True
            return None
        return await self.pool.fetchrow("SELECT holder, channel, expires_at FROM bank_channel_leases "
                                        "WHERE bank_id = $1", self.bank_id)

    async def acquire(self, *, standby: bool, stop: asyncio.Event) -> None:
        """Take the lease; when held by another live connector: :class:`LeaseHeld`, or wait (``standby``)."""
        waiting = False
        while (other := await self.take()) is not None:
            if not standby:
                raise LeaseHeld(self.bank_id, other["holder"], other["channel"], other["expires_at"])
            if not waiting:
                log.info("%s: standing by; the lease is held by %s (%s)", self.bank_id, other["holder"],
                         other["channel"])
                waiting = True
            try:
                await asyncio.wait_for(stop.wait(), min(self.ttl_s / 3, 2.0))
                return
            except asyncio.TimeoutError:
                pass

    async def renew(self) -> bool:
        """Extend our lease (also after it expired, as long as nobody took it); False once another holds it."""
        renewed = await self.pool.fetchval(
            "UPDATE bank_channel_leases SET expires_at = now() + make_interval(secs => $3) "
            "WHERE bank_id = $1 AND holder = $2 RETURNING 1", self.bank_id, self.holder, self.ttl_s)
        self.held = renewed is not None
        return self.held

    async def release(self) -> None:
        if self.held:
            await self.pool.execute("UPDATE bank_channel_leases SET expires_at = now(), released_at = now() "
                                    "WHERE bank_id = $1 AND holder = $2", self.bank_id, self.holder)
            self.held = False

    def divert(self, metrics: Any) -> Any:
        """The connector's divert hook: leave alone what our live lease does not cover (checked in the
        message's transaction): types the channel does not carry, and everything while the lease lapsed.
        ``metrics``: the participant runtime's ``WorkerMetrics`` (the lapse counter is added to it)."""
        lapsed = Counter("renkei_connector_lease_lapsed_total",
                         "Messages of the channel's types left to others while this connector's lease had lapsed")
        metrics.register(lapsed)  # rendered with the worker's metrics

        async def divert(conn: Any, items: list[Any]) -> set[int]:
            held = set(await conn.fetchval(
                "SELECT types FROM bank_channel_leases WHERE bank_id = $1 AND holder = $2 AND expires_at > now()",
                self.bank_id, self.holder) or ())
            out = {n for n, item in enumerate(items) if item.opened.meta.type not in held}
            if not held:
                lapsed.inc(sum(1 for item in items if item.opened.meta.type in self.types))
            return out

        return divert

    def to_json(self) -> dict[str, Any]:
        return {"holder": self.holder, "ttl_s": self.ttl_s, "types": self.types}


async def keep_lease(lease: BankChannelLease, runtime: Any, lost: asyncio.Event, stopping: asyncio.Event) -> None:
    """Renew every ``ttl/3`` s (until cancelled, so also while the runtime stops) and, until ``stopping``,
    hand parked messages to the runtime every second; set ``lost`` once another connector took the lease."""
    from connectors.bank_sim import drain_parked

    renew_every = lease.ttl_s / 3
    since_renewal = 0.0
    while True:
        await asyncio.sleep(DRAIN_EVERY_S)
        since_renewal += DRAIN_EVERY_S
        try:
            if since_renewal >= renew_every:
                since_renewal = 0.0
                if not await lease.renew():
                    log.error("%s: the lease was taken by another connector; stopping", lease.bank_id)
                    lost.set()
                    return
            if not stopping.is_set():
                await drain_parked(runtime, holder=lease.holder)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # database away: retry; the lease check in each transaction guards the effects
            log.warning("%s: lease renewal or parked messages failed (%s)", lease.bank_id, type(exc).__name__)


async def start_where_the_simulator_is(settings: Settings, group: str, simulator: str, topic: str) -> dict[int, int]:
    """Commit ``group``'s offsets on ``topic`` forward to ``simulator``'s where those are further.

    Everything before the simulator's committed offsets was handled or parked by it (parked messages
    come to the lease holder anyway), so the connector does not re-open the inbox's history (old
    envelopes would be refused as expired).  A group never committed anywhere starts at the earliest
    offset.  Returns the offsets committed (partition → offset).
    """
    from aiokafka import TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    from infra.platform.kafka import admin_client, topic_partitions
    from infra.platform.kafka import consumer as make_consumer

    admin = admin_client(settings)
    committer = make_consumer(settings, group_id=group)
    await admin.start()
    await committer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await topic_partitions(committer, topic))]
        if not tps:
            return {}
        own = await admin.list_consumer_group_offsets(group, partitions=tps)
        theirs = await admin.list_consumer_group_offsets(simulator, partitions=tps)

        def at(offsets: dict, tp: Any) -> int:
            found = offsets.get(tp)
            return found.offset if found is not None and found.offset >= 0 else -1

        targets = {tp: at(theirs, tp) for tp in tps if at(theirs, tp) > at(own, tp)}
        if targets:
            committer.assign(list(targets))
            await committer.commit({tp: OffsetAndMetadata(off, "") for tp, off in targets.items()})
        return {tp.partition: off for tp, off in targets.items()}
    finally:
        await committer.stop()
        await admin.close()


# -- serving ----------------------------------------------------------------------------------------


def _print_start(args: argparse.Namespace, info: dict[str, Any]) -> None:
    if getattr(args, "json", False):
        print(json.dumps({k: v for k, v in info.items() if k != "title"}, ensure_ascii=False, default=str),
              flush=True)
        return
    print(f"{info['title']} (pid {info['pid']})", flush=True)
    for key in ("url", "registrations", "openapi", "bank_url", "key_id", "tls_ca", "inbound", "outbound", "archive",
                "health", "metrics"):
        if info.get(key):
            print(f"  {key + ':':<14} {info[key]}", flush=True)
    if info.get("lease"):
        lease = info["lease"]
        print(f"  {'lease:':<14} {lease['holder']} ({', '.join(lease['types'])}; {lease['ttl_s']:g} s, renewed "
              f"every {lease['ttl_s'] / 3:g} s)", flush=True)
    print("Serving; SIGTERM or Ctrl-C stops gracefully.", flush=True)


def _ops(url: str) -> dict[str, str]:
    return {"ops_url": url, "health": f"{url}/health", "metrics": f"{url}/metrics"}


async def serving(args: argparse.Namespace, settings: Settings, body: Body, component: str = "connector") -> int:
    """Run ``body(stop, announce)`` until SIGTERM/SIGINT; 0 after a graceful stop, 2 refused, 1 lease lost.

    A signal before ``announce`` (still starting) cancels the start; after it, sets ``stop`` and the body
    shuts down in order.
    """
    if not logging.getLogger().handlers:
        configure_logging(settings.log_level, settings.log_format, component)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    started = False

    def announce(info: dict[str, Any]) -> None:
        nonlocal started
        started = True
        _print_start(args, {**info, "pid": os.getpid()})

    work = asyncio.ensure_future(body(stop, announce))

    def on_signal() -> None:
        stop.set()
        if not started:
            work.cancel()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    try:
        await work
    except asyncio.CancelledError:
        if not stop.is_set():
            raise
    except LeaseHeld as exc:
        if getattr(args, "json", False):
            print(json.dumps(exc.detail), flush=True)
        print(f"renkei: {exc}", file=sys.stderr, flush=True)
        return 2
    except LeaseLost as exc:
        print(f"renkei: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
    return 0


def _resolve(settings: Settings) -> Settings:
    from infra.platform.endpoints import resolve_running

    return resolve_running(settings)


# -- bank --------------------------------------------------------------------------------------------


def add_bank_serve(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``renkei bank serve`` / ``python -m connectors.serve bank``."""
    parser.add_argument("--bank", required=True, help="the bank: its code (9003) or participant id (bank-9003)")
    parser.add_argument("--channel", required=True, choices=["files", "http"], help="the channel adapter")
    parser.add_argument("--root", type=Path, help="files: the bank's folder (inbound/, outbound/, archive/)")
    parser.add_argument("--result-deadline", dest="result_deadline", type=float, metavar="S",
                        help="files: seconds a result file waits for the hub's answers before the rest are "
                             "NO_ANSWER (default 300; later answers go out in LATE_ files)")
    parser.add_argument("--listen-host", default="127.0.0.1", help="http: address of the registration server")
    parser.add_argument("--listen-port", type=int, default=0, help="http: its port (0 = a free one)")
    parser.add_argument("--bank-url", help="http: the bank's endpoint for existence checks (https://)")
    parser.add_argument("--bank-ca", dest="bank_ca", type=Path, metavar="FILE",
                        help="http: CA certificate(s) that sign the bank's endpoint (default: the system's trust store)")
    parser.add_argument("--tls-cert", dest="tls_cert", type=Path, metavar="FILE",
                        help="http: the server's certificate chain (PEM); default: issued from the platform's "
                             "channel CA (<keys>/bank-http-ca.pem, which the bank trusts)")
    parser.add_argument("--tls-key", dest="tls_key", type=Path, metavar="FILE",
                        help="http: the private key of --tls-cert (PEM, unencrypted, mode 0600)")
    parser.add_argument("--tls-name", dest="tls_names", action="append", default=[], metavar="NAME",
                        help="http: another name or address the bank reaches the server under (repeat; for the "
                             "issued certificate)")
    parser.add_argument("--timeout", type=float, default=5.0, help="http: seconds per call to the bank (default 5)")
    parser.add_argument("--lease-ttl", type=float, default=LEASE_TTL_S,
                        help=f"seconds a lease lives unrenewed (default {LEASE_TTL_S:g}; renewed every third)")
    parser.add_argument("--standby", action="store_true",
                        help="wait for the bank's lease instead of exiting 2 while another connector holds it")
    return parser


def _bank(settings: Settings, ref: str) -> Participant:
    participants = participants_of(settings)
    found = participants.by_bank_code(ref) or participants.get(ref)
    if found is None or found.kind is not Kind.BANK or found.bank_code is None:
        raise ConfigError(f"--bank {ref}: no participating bank has this code or id (see `renkei participants`)")
    return found


def _without_userinfo(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


async def bank_serve(settings: Settings, args: argparse.Namespace) -> int:
    """``renkei bank serve --bank B --channel files|http …``: one bank's channel connector, under its lease."""
    from connectors.bank_sim import simulator_group
    from connectors.bankfiles import bank_file_connector
    from connectors.bankhttp import BankHttpConnector, require_https
    from connectors.channel_tls import CA_FILE, ServerCertificate, certificate_hosts, server_certificate
    from infra.platform.pgdsn import component_dsn

    if args.channel == "files" and args.root is None:
        raise ConfigError("--channel files needs --root DIR (the bank's folder)")
    if args.channel == "http" and not args.bank_url:
        raise ConfigError("--channel http needs --bank-url URL (the bank's endpoint for existence checks)")
    if args.channel == "http":
        require_https(args.bank_url)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if args.result_deadline is not None and args.result_deadline <= 0:
        raise ConfigError("--result-deadline: a positive number of seconds")
    if args.lease_ttl < 3:
        raise ConfigError("--lease-ttl: at least 3 seconds")
    settings = _resolve(settings)
    bank = _bank(settings, args.bank)
    assert bank.bank_code is not None
    group = f"{settings.kafka.topic_prefix}.connector.{bank.id}"
    if args.channel == "files":
        deadline = {} if args.result_deadline is None else {"result_deadline_s": args.result_deadline}
        runtime = bank_file_connector(settings, bank.id, bank.bank_code, args.root, **deadline)
        http = None
    else:
        if args.tls_cert is not None:
            tls = ServerCertificate(args.tls_cert, args.tls_key)
        else:
            tls = server_certificate(settings, bank.id, certificate_hosts(args.listen_host, args.tls_names))
        http = BankHttpConnector(settings, bank.id, bank.bank_code, args.bank_url, host=args.listen_host,
                                 port=args.listen_port, timeout_s=args.timeout, tls=tls, bank_ca=args.bank_ca)
        runtime = http.runtime
    assert runtime.runtime.group == group
    types = sorted(t for adapter in runtime.adapters for t in adapter.handlers())
    lease = BankChannelLease(component_dsn(settings, bank.id), bank.id, f"bank-{args.channel}", types,
                             ttl_s=args.lease_ttl)  # as the bank's own role
    runtime.runtime.divert = lease.divert(runtime.runtime.metrics)

    async def body(stop: asyncio.Event, announce: Announce) -> None:
        lost = asyncio.Event()
        await lease.open()
        try:
            await lease.acquire(standby=args.standby, stop=stop)
            if stop.is_set():
                return
            try:
                offsets = await start_where_the_simulator_is(settings, group, simulator_group(settings),
                                                             runtime.runtime.names.inbox(bank.id))
            except Exception as exc:  # e.g. a crashed instance's member still in the group: parked covers it
                log.warning("%s: left at the group's committed offsets (%s)", bank.id, type(exc).__name__)
                offsets = {}
            info: dict[str, Any] = {
                "title": f"{bank.id} ({bank.bank_code}) {args.channel} channel", "connector": "bank",
                "bank": bank.id, "bank_code": bank.bank_code, "channel": args.channel, "consumer_group": group,
                "start_offsets": {str(p): o for p, o in offsets.items()}, "lease": lease.to_json()}
            if http is None:
                await runtime.start()
                adapter = runtime.adapters[0]
                info |= {"root": str(args.root), "inbound": str(adapter.inbound), "outbound": str(adapter.outbound),
                         "archive": str(adapter.archive), **_ops(runtime.ops_url)}
                stopping: Any = runtime.stop
            else:
                await http.__aenter__()
                assert http.url is not None
                info |= {"url": http.url, "registrations": f"{http.url}/v1/registrations",
                         "openapi": f"{http.url}/openapi.json", "bank_url": _without_userinfo(args.bank_url),
                         "key_id": http.adapter.keys.current.key_id,
                         "tls_ca": None if args.tls_cert else str(settings.resolved_keys_dir / CA_FILE),
                         **_ops(runtime.ops_url)}
                stopping = http.__aexit__
            stopping_now = asyncio.Event()
            keeper = asyncio.create_task(keep_lease(lease, runtime.runtime, lost, stopping_now), name=f"{bank.id}-lease")
            try:
                log.info("%s: %s channel serving (lease %s)", bank.id, args.channel, lease.holder)
                announce(info)
                await asyncio.wait([asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())],
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                log.info("%s: stopping", bank.id)
                stopping_now.set()
                try:
                    await stopping()
                finally:
                    keeper.cancel()
                    await asyncio.gather(keeper, return_exceptions=True)
            if lost.is_set():
                raise LeaseLost(f"{bank.id}: another connector took the lease after ours lapsed; stopped")
        finally:
            try:
                await lease.release()  # after the runtime stopped: what it did not finish goes to the simulator
            finally:
                await lease.close()
        log.info("%s: stopped; lease released", bank.id)

    return await serving(args, settings, body, "connector-bank")


# -- portal ------------------------------------------------------------------------------------------


def add_portal_serve(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``renkei portal serve`` / ``python -m connectors.serve portal``."""
    parser.add_argument("--host", default="127.0.0.1", help="address of the web page and API (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="its port (0 = a free one)")
    parser.add_argument("--provisions-dsn", help="PostgreSQL with the provision records (default: the portal's "
                                                 "role reading the hub's schema)")
    parser.add_argument("--tls-cert", dest="tls_cert", type=Path, metavar="FILE",
                        help="serve over TLS with this certificate chain (PEM); the session cookie is then Secure")
    parser.add_argument("--tls-key", dest="tls_key", type=Path, metavar="FILE",
                        help="the private key of --tls-cert (PEM, unencrypted, mode 0600)")
    return parser


async def portal_serve(settings: Settings, args: argparse.Namespace) -> int:
    """``renkei portal serve [--port P]``: the portal web page and API, /health and /metrics on the same server."""
    from connectors.channel_tls import ServerCertificate
    from connectors.portal import PortalConnector
    from infra.platform.pgdsn import records_dsn

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    tls = ServerCertificate(args.tls_cert, args.tls_key).server_context() if args.tls_cert is not None else None
    settings = _resolve(settings)
    portal = PortalConnector(settings, provisions_dsn=args.provisions_dsn or records_dsn(settings), host=args.host,
                             port=args.port, ssl_context=tls)

    async def body(stop: asyncio.Event, announce: Announce) -> None:
        async with portal:
            assert portal.url is not None
            log.info("portal serving")
            announce({"title": "portal", "connector": "portal", "url": portal.url,
                      "consumer_group": portal.runtime.runtime.group, **_ops(portal.url)})
            await stop.wait()
            log.info("portal: stopping")

    return await serving(args, settings, body, "connector-portal")


# -- agency ------------------------------------------------------------------------------------------


def add_agency_serve(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``renkei agency serve`` / ``python -m connectors.serve agency``."""
    parser.add_argument("--agency", required=True, action="append",
                        help="the agency's participant id (repeat, or separate with commas, for several)")
    return parser


async def agency_serve(settings: Settings, args: argparse.Namespace) -> int:
    """``renkei agency serve --agency ID``: the agency outbox relay (connectors.agency.serve)."""
    from connectors import agency

    settings = _resolve(settings)
    agencies = list(dict.fromkeys(a.strip() for arg in args.agency for a in arg.split(",") if a.strip()))
    participants = participants_of(settings)
    unknown = [a for a in agencies if (p := participants.get(a)) is None or p.kind is not Kind.AGENCY]
    if unknown:
        raise ConfigError(f"--agency: not an agency: {', '.join(unknown)} (see `renkei participants`)")

    async def body(stop: asyncio.Event, announce: Announce) -> None:
        def ready(connector: Any) -> None:
            announce({"title": f"agency connector for {', '.join(agencies)}", "connector": "agency",
                      "agencies": agencies, "consumer_group": connector.runtime.runtime.group,
                      **_ops(connector.runtime.ops_url)})

        await agency.serve(settings, agencies, None, ready=ready, stop=stop)  # settings.ops_host/ops_port

    return await serving(args, settings, body, "connector-agency")


# -- python -m connectors.serve ----------------------------------------------------------------------

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], Any], Callable[..., Awaitable[int]], str]] = {
    "bank": (add_bank_serve, bank_serve, "one bank's channel connector (batch files or HTTP)"),
    "portal": (add_portal_serve, portal_serve, "the portal web page and API"),
    "agency": (add_agency_serve, agency_serve, "the agency outbox relay"),
}


def register() -> None:
    """Add ``renkei bank serve``, ``renkei portal serve`` and ``renkei agency serve`` (after
    :func:`connectors.commands.register`, which creates the groups)."""
    from connectors.commands import subcommand

    for group, (add, handler, help_text) in COMMANDS.items():
        add(subcommand(group, "serve", handler, f"serve {help_text} until SIGTERM or SIGINT"))


def build_parser() -> argparse.ArgumentParser:
    from infra.core.arguments import Parser, common_parser

    common = common_parser()
    parser = Parser(prog="python -m connectors.serve", parents=[common],
                    description="Serve a connector until SIGTERM or SIGINT.")
    sub = parser.add_subparsers(dest="connector", required=True, metavar="CONNECTOR")
    for name, (add, handler, help_text) in COMMANDS.items():
        add(sub.add_parser(name, parents=[common], help=help_text, description=help_text)).set_defaults(
            handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m connectors.serve bank|portal|agency …`` (flags as ``renkei … serve``); returns the exit code."""
    from infra.core.settings import load_settings
    from streams.app import serve_until_signal

    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    codes: list[int] = []

    async def run(settings: Settings) -> None:
        codes.append(await args.handler(settings, args))

    try:
        settings = load_settings(cli={k: v for k, v in vars(args).items() if k not in ("handler", "connector")},
                                 config_file=getattr(args, "config", None))
        serve_until_signal(run(settings), settings.log_level, settings.log_format, f"connector-{args.connector}")
    except RenkeiError as exc:  # a configuration error exits 2, anything else 1 (as the renkei CLI)
        return report(exc)
    return codes[0] if codes else 0


if __name__ == "__main__":
    sys.exit(main())
