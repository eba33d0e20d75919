"""``renkei ops serve``: a read-only web page of the platform's state, for the people who run it.

It shows what ``renkei status``, ``renkei lag`` and ``renkei dlq list`` show, on one page that
refreshes itself: each component and its health, the lag of each consumer group, dead letters of
the last day by reason code, and the most recent events of the ops audit trail
(``<prefix>.audit.ops``).  Metadata only: no body, no token, no subject, no dead letter's sender;
reason codes outside the closed set show as ``OTHER``, and an operator's free-text reason has its
long digit runs hidden (it must not echo a My Number typed by mistake).

Who may use it (:class:`PageAccess`):

- by default it listens on loopback only and answers only loopback peers: whoever can open a
  socket on the machine running the platform (the same people who can run ``renkei status``);
- with a token (``--token-file``, a file holding it: never a command-line value) every request
  must carry ``Authorization: Bearer <token>``; a page on any other address needs one;
- it is read-only: GET and HEAD only, nothing on it changes the platform.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import ipaddress
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infra.core.arguments import hide_digit_runs
from infra.core.errors import ConfigError, Reason
from infra.core.settings import Settings
from infra.platform.metrics import OTHER, REASON_CODES

DEAD_LETTER_WINDOW_S = 24 * 3600
AUDIT_EVENTS_SHOWN = 20
CACHE_S = 5.0
"""A page reloaded by several people at once scans the broker once."""


# --------------------------------------------------------------------------- who may look


@dataclass(frozen=True)
class PageAccess:
    """The ops page's rule: a bearer token when one is set, else loopback peers only."""

    token: str | None = None

    @staticmethod
    def for_address(host: str, token_file: Path | None) -> PageAccess:
        """The rule for a page served on ``host``; a non-loopback address without a token is refused."""
        token = read_token(token_file) if token_file is not None else None
        if token is None and not is_loopback(host):
            raise ConfigError(f"--host {host}: the ops page answers other machines only with a token "
                              "(--token-file FILE); without one it listens on loopback")
        return PageAccess(token)

    def refusal(self, peer: str | None, authorization: str | None) -> tuple[int, str] | None:
        """``(HTTP status, why)`` when the request may not see the page, else None."""
        if self.token is not None:
            scheme, _, given = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                return 401, "this page needs Authorization: Bearer <the ops page token>"
            return None
        if peer is None or not is_loopback(peer):
            return 403, "this page answers the machine it runs on only (serve it with --token-file for others)"
        return None


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"--token-file {path}: cannot read it ({exc.strerror})") from None
    if len(token) < 16:
        raise ConfigError(f"--token-file {path}: the token must be at least 16 characters")
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- what it shows


@dataclass(frozen=True)
class ComponentRow:
    name: str
    pid: int
    alive: bool
    health: str | None  # ok | starting | failing | unreachable | down | None (broker, PostgreSQL)
    metrics: str | None
    processed: int | None
    rejected: int | None


@dataclass(frozen=True)
class GroupRow:
    group: str
    state: str
    members: int
    lag: int


@dataclass(frozen=True)
class AuditRow:
    at: str
    who: str
    what: str
    reason: str  # the operator's words, digit runs hidden
    dry_run: bool
    counts: dict[str, int]


@dataclass
class Overview:
    """Everything the page shows; a section that could not be read says why in ``unavailable``."""

    prefix: str
    generated_at: float
    components: list[ComponentRow] = field(default_factory=list)
    groups: list[GroupRow] = field(default_factory=list)
    dead_letters: dict[str, int] = field(default_factory=dict)
    audit: list[AuditRow] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def closed_reason(code: str | None) -> str:
    return code if code in REASON_CODES else OTHER


def audit_row(record: dict[str, Any]) -> AuditRow:
    """One ops audit event as shown: who, what, when, why, numeric counts only (no window, no detail)."""
    counts = {str(k): int(v) for k, v in (record.get("counts") or {}).items()
              if isinstance(v, int) and not isinstance(v, bool)}
    return AuditRow(at=str(record.get("at") or ""), who=hide_digit_runs(str(record.get("who") or "")),
                    what=hide_digit_runs(str(record.get("what") or "")),
                    reason=hide_digit_runs(str(record.get("reason") or "")), dry_run=bool(record.get("dry_run")),
                    counts=counts)


async def components(settings: Settings) -> list[ComponentRow]:
    from infra.platform.embedded import read_state
    from infra.platform.metrics_server import add_worker_health, other_endpoints

    recorded = read_state(settings.state_dir)
    rows: list[dict[str, Any]] = [c.status().to_json() for c in recorded]
    rows += [{"name": e.worker, "pid": e.pid, "alive": True, "endpoint": e.endpoint}
             for e in other_endpoints(settings.state_dir, {c.pid for c in recorded})]
    await add_worker_health(settings.state_dir, rows)
    return [ComponentRow(r["name"], int(r["pid"]), bool(r["alive"]), r["health"], r["metrics"], r["processed"],
                         r["rejected"]) for r in rows]


async def groups(settings: Settings) -> list[GroupRow]:
    from infra.ops.lag import consumer_lag

    found = await consumer_lag(settings)
    return [GroupRow(g["group"], g["state"], g["members"], g["total_lag"]) for g in found["groups"]]


async def dead_letters(settings: Settings, window_s: int = DEAD_LETTER_WINDOW_S) -> dict[str, int]:
    from infra.ops.dlq import list_dead_letters

    since = str(int((time.time() - window_s) * 1000))
    found = await list_dead_letters(settings, since=since)
    out: dict[str, int] = {}
    for letter in found.dead_letters:
        reason = closed_reason(letter.reason_code)
        out[reason] = out.get(reason, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


async def audit_events(settings: Settings, shown: int = AUDIT_EVENTS_SHOWN) -> list[AuditRow]:
    """The last ``shown`` events of the ops audit trail, newest first (none when the topic does not exist)."""
    from aiokafka import TopicPartition

    from infra.ops import high_watermarks, ops_audit_topic, read_range, scan_consumer
    from infra.platform.kafka import topic_partitions

    topic = ops_audit_topic(settings.kafka.topic_prefix)
    consumer = scan_consumer(settings)
    await consumer.start()
    events: list[AuditRow] = []
    try:
        parts = sorted(await topic_partitions(consumer, topic) or ())
        tps = [TopicPartition(topic, p) for p in parts]
        marks = await high_watermarks(consumer, tps, kafka=settings.kafka) if tps else {}
        for tp in tps:
            async for record in read_range(consumer, tp, max(0, marks[tp] - shown), marks[tp]):
                try:
                    events.append(audit_row(json.loads(record.value)))
                except (ValueError, TypeError, AttributeError):
                    continue  # not an ops event: skipped rather than shown raw
    finally:
        await consumer.stop()
    return sorted(events, key=lambda e: e.at, reverse=True)[:shown]


async def overview(settings: Settings) -> Overview:
    """Read every section at once; a section that fails is named in ``unavailable`` with the error's kind."""
    out = Overview(prefix=settings.kafka.topic_prefix, generated_at=time.time())
    sections = {"components": components(settings), "groups": groups(settings),
                "dead_letters": dead_letters(settings), "audit": audit_events(settings)}
    results = await asyncio.gather(*(asyncio.wait_for(s, 30) for s in sections.values()), return_exceptions=True)
    for name, result in zip(sections, results):
        if isinstance(result, BaseException):
            out.unavailable[name] = type(result).__name__  # never the message: it could quote a record
        else:
            setattr(out, name, result)
    return out


# --------------------------------------------------------------------------- the page


_HEALTH_CLASS = {"ok": "ok", "starting": "warn", None: "na"}


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def render_page(view: Overview, refresh_s: int = 10) -> str:
    """The page's HTML: four tables, escaped; no script (the page reloads itself with a meta refresh)."""
    def table(title: str, section: str, head: list[str], rows: list[list[str]], empty: str) -> str:
        if section in view.unavailable:
            body = f'<p class="bad">unavailable ({_e(view.unavailable[section])})</p>'
        elif not rows:
            body = f'<p class="na">{_e(empty)}</p>'
        else:
            body = ("<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"
                    + "".join("<tr>" + "".join(rows_cell for rows_cell in r) + "</tr>" for r in rows)
                    + "</tbody></table>")
        return f'<section id="{section}"><h2>{_e(title)}</h2>{body}</section>'

    def cell(value: Any, cls: str = "") -> str:
        return f'<td class="{cls}">{_e(value)}</td>' if cls else f"<td>{_e(value)}</td>"

    comp_rows = [[cell(c.name), cell(c.pid), cell("yes" if c.alive else "NO", "ok" if c.alive else "bad"),
                  cell(c.health or "—", _HEALTH_CLASS.get(c.health, "bad")), cell(c.processed), cell(c.rejected),
                  cell(c.metrics or "")] for c in view.components]
    group_rows = [[cell(g.group), cell(g.state, "ok" if g.state == "Stable" else "warn"), cell(g.members),
                   cell(g.lag, "ok" if g.lag == 0 else "warn")] for g in view.groups]
    dead_rows = [[cell(reason), cell(n)] for reason, n in view.dead_letters.items()]
    audit_rows = [[cell(a.at), cell(a.who), cell(a.what + (" (dry run)" if a.dry_run else "")), cell(a.reason),
                   cell(", ".join(f"{k} {v}" for k, v in a.counts.items()))] for a in view.audit]
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(view.generated_at))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{int(refresh_s)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Renkei ops — {_e(view.prefix)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d2430; background: #f6f7f9; }}
h1 {{ font-size: 1.4em; margin: 0 0 .2em; }} h2 {{ font-size: 1.1em; margin: 1.2em 0 .4em; }}
.meta {{ color: #5b6575; }} section {{ background: #fff; border: 1px solid #d9dde3; border-radius: 6px;
  padding: .3em 1em 1em; margin-bottom: 1em; }}
table {{ border-collapse: collapse; width: 100%; }} th, td {{ text-align: left; padding: .3em .6em;
  border-bottom: 1px solid #e6e9ee; }} th {{ color: #5b6575; font-weight: 600; }}
.ok {{ color: #13795b; font-weight: 600; }} .warn {{ color: #a35d00; font-weight: 600; }}
.bad {{ color: #b42318; font-weight: 600; }} .na {{ color: #8a94a3; }}
</style></head>
<body>
<h1>Renkei ops</h1>
<p class="meta">topic prefix <b>{_e(view.prefix)}</b> · generated {_e(generated)} · refreshes every {int(refresh_s)} s ·
read-only, metadata only (no bodies, no tokens)</p>
{table("Components and health", "components", ["name", "pid", "alive", "health", "processed", "rejected", "metrics"],
       comp_rows, "no component recorded under this state folder")}
{table("Consumer groups: lag", "groups", ["group", "state", "members", "lag"], group_rows, "no consumer group")}
{table("Dead letters of the last 24 h, by reason", "dead_letters", ["reason", "count"], dead_rows,
       "no dead letter in the last 24 h")}
{table(f"Recent ops audit events (last {AUDIT_EVENTS_SHOWN})", "audit", ["at", "who", "what", "why", "counts"],
       audit_rows, "no ops action recorded")}
</body></html>
"""


class OpsPage:
    """The aiohttp server of the page; an async context manager (``url`` once started)."""

    def __init__(self, settings: Settings, access: PageAccess, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.settings = settings
        self.access = access
        self.host = host
        self.port = port
        self.url: str | None = None
        self._runner: Any = None
        self._cached: tuple[float, Overview] | None = None
        self._lock = asyncio.Lock()

    async def view(self) -> Overview:
        async with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > CACHE_S:
                self._cached = (time.monotonic(), await overview(self.settings))
            return self._cached[1]

    def app(self) -> Any:
        from aiohttp import web

        @web.middleware
        async def guard(request: web.Request, handler: Any) -> Any:
            if request.method not in ("GET", "HEAD"):
                return _refused(web, 405, "the ops page is read-only")
            refused = self.access.refusal(request.remote, request.headers.get("Authorization"))
            if refused is not None:
                return _refused(web, *refused)
            response = await handler(request)
            response.headers.update(SECURITY_HEADERS)
            return response

        async def page(request: web.Request) -> web.Response:
            return web.Response(text=render_page(await self.view()), content_type="text/html", charset="utf-8")

        async def api(request: web.Request) -> web.Response:
            return web.json_response((await self.view()).to_json())

        app = web.Application(middlewares=[guard])
        app.add_routes([web.get("/", page), web.get("/api/overview", api)])
        return app

    async def start(self) -> str:
        from aiohttp import web

        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        port = self._runner.addresses[0][1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{port}/"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> OpsPage:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


def _refused(web: Any, status: int, why: str) -> Any:
    return web.json_response({"error": Reason.UNAUTHORISED.value if status in (401, 403) else "METHOD_NOT_ALLOWED",
                              "detail": why}, status=status, headers=SECURITY_HEADERS)
