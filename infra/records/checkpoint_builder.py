"""Making and publishing provision checkpoints: the hub's side (``run_checkpoints`` runs in the hub worker).

Every ``records_checkpoint_interval_s`` seconds, or as soon as
``records_checkpoint_records`` records wait, one hub worker (a PostgreSQL
advisory lock elects it; the others skip that round) makes the next checkpoint
in one transaction, then publishes it:

1. the state left by the previous checkpoint must still reproduce that
   checkpoint's signed root, and the database must not be behind the topic
   (a restored or rolled-back database is refused, never re-signed);
2. each head that moved since (``seq <> cp_seq``) is taken only if its seal
   verifies with the records key, it moved forward, and the records between
   the checkpointed head and the new one recompute and link — so a tampering
   the builder can see is never laundered into a checkpoint (such heads are
   left out, counted and logged; the person's verifier reports them);
3. the buckets those heads fall in are re-hashed (their previous roots must
   match what the previous checkpoint committed), the new root is signed,
   and the checkpoint is stored unpublished with the heads' new ``cp_*``;
4. after the commit it is produced to ``<prefix>.audit.checkpoints`` and
   marked published; one that could not be published is published first on
   the next round (same bytes), so the topic never misses a number.

The very first checkpoint also takes heads without a seal (records written
before the records key existed) once their whole chain verifies; after it,
an unsealed head is never taken.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from infra.core.errors import RenkeiError
from infra.core.settings import Settings
from infra.crypto.records_keys import RecordsKey, Seal
from infra.platform.topics import TopicNames
from infra.records.checkpoint_log import CheckpointLog
from infra.records.checkpoints import (
    Checkpoint,
    CheckpointError,
    bucket_root,
    empty_bucket_root,
    open_checkpoint,
    sign_checkpoint,
    tree_levels,
    updated_root,
)
from infra.records.provisions import (
    ANCHOR_DOMAIN,
    GENESIS_HASH,
    HEAD_DOMAIN,
    ProvisionRecord,
    anchor_statement,
    bucket_of,
    head_statement,
    record_from_row,
    walk_chain,
)

__all__ = ["BuildResult", "CheckpointBuilder", "CheckpointRefused", "run_checkpoints"]

log = logging.getLogger("renkei.checkpoints")

MAX_HEADS = 50_000  # heads taken into one checkpoint; the rest go into the next one, made at once


class CheckpointRefused(RenkeiError):
    """The database's checkpoint state was altered: no checkpoint is made over it (the message names no value)."""


@dataclass(frozen=True)
class BuildResult:
    checkpoint: Checkpoint | None  # None: every moved head was left out
    heads: int  # heads taken into this checkpoint
    left_out: dict[str, int] = field(default_factory=dict)  # heads left out (tampering seen), by reason


_LOCK = "SELECT pg_try_advisory_xact_lock(hashtextextended('renkei_checkpoints:' || current_schema(), 0))"

_MOVED = """
SELECT person_token, seq, last_hash, seal, cp_seq, cp_hash FROM provision_chain_heads
WHERE seq <> cp_seq ORDER BY person_token LIMIT $1
"""

_RECORDS_SINCE = """
SELECT r.* FROM provision_records r
JOIN unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(p, after, upto)
  ON r.person_token = u.p AND r.seq > u.after AND r.seq <= u.upto
ORDER BY r.person_token, r.seq
"""


class CheckpointBuilder:
    """Makes checkpoints from the hub database (``build``) and publishes them (``publish``)."""

    def __init__(self, pool: asyncpg.Pool, key: RecordsKey, published: CheckpointLog) -> None:
        self.pool = pool
        self.key = key
        self.keys = key.public()
        self.published = published

    async def waiting(self) -> tuple[int, int, datetime | None]:
        """Heads moved since the latest checkpoint, the records they added, and when it was made (None: never)."""
        row = await self.pool.fetchrow(
            "SELECT h.heads, h.records, (SELECT issued_at FROM provision_checkpoints ORDER BY number DESC LIMIT 1) "
            "AS at FROM "
            "(SELECT count(*) AS heads, coalesce(sum(greatest(seq - cp_seq, 0)), 0) AS records "
            " FROM provision_chain_heads WHERE seq <> cp_seq) h")
        return row["heads"], int(row["records"]), row["at"]

    async def build(self) -> BuildResult | None:
        """Make the next checkpoint (stored unpublished). None: another worker holds the lock, or nothing moved."""
        published = await self.published.latest()  # before the database: it only ever runs ahead of the topic
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(_LOCK):
                return None
            previous = await self._previous(conn, published)
            roots = {r["bucket"]: bytes(r["root"]) for r in await conn.fetch(
                "SELECT bucket, root FROM provision_checkpoint_buckets")}
            levels = tree_levels(roots)
            if previous is not None and levels[-1][0] != previous.root:
                raise CheckpointRefused(f"the stored bucket roots do not reproduce checkpoint #{previous.number}")
            moved = await conn.fetch(_MOVED, MAX_HEADS)
            taken, left_out = await self._take(conn, moved, first=previous is None)
            if not taken:
                return BuildResult(None, 0, left_out) if left_out else None
            touched = sorted({bucket_of(t) for t in taken})
            rows = await conn.fetch("SELECT person_token, cp_seq, cp_hash FROM provision_chain_heads "
                                    "WHERE bucket = ANY($1::smallint[]) AND cp_seq > 0", touched)
            before: dict[int, dict[str, tuple[int, bytes]]] = {b: {} for b in touched}
            for r in rows:
                b = bucket_of(r["person_token"])
                if b in before:
                    before[b][r["person_token"]] = (r["cp_seq"], bytes(r["cp_hash"]))
            for b in touched:
                if bucket_root(b, [(t, s, h) for t, (s, h) in before[b].items()]) != roots.get(b, empty_bucket_root(b)):
                    raise CheckpointRefused(f"bucket {b} no longer matches what checkpoint "
                                            f"#{previous.number if previous else 0} committed")
            new_chains = sum(1 for t in taken if before[bucket_of(t)].get(t, (0, b""))[0] == 0)
            new_records = sum(seq - before[bucket_of(t)].get(t, (0, b""))[0] for t, (seq, _) in taken.items())
            for t, head in taken.items():
                before[bucket_of(t)][t] = head
            for b in touched:
                roots[b] = bucket_root(b, [(t, s, h) for t, (s, h) in before[b].items()])
            checkpoint = sign_checkpoint(
                self.key, number=(previous.number if previous else 0) + 1, issued_at=datetime.now(UTC),
                root=updated_root(levels, {b: roots[b] for b in touched}),
                chains=(previous.chains if previous else 0) + new_chains,
                records=(previous.records if previous else 0) + new_records,
                previous=previous.digest if previous else GENESIS_HASH)
            # The writes last, heads locked in person order as appenders lock them (no deadlock, short waits).
            tokens = sorted(taken)
            await conn.execute("SELECT 1 FROM provision_chain_heads WHERE person_token = ANY($1::text[]) "
                               "ORDER BY person_token FOR UPDATE", tokens)
            unsealed = [r["person_token"] for r in moved if r["person_token"] in taken and r["seal"] is None]
            if unsealed:  # the first checkpoint's heads from before the records key: sealed now, verified above
                seals = self.key.seal(HEAD_DOMAIN, [head_statement(t, *taken[t]) for t in unsealed])
                await conn.execute(
                    "UPDATE provision_chain_heads h SET seal = u.seal FROM unnest($1::text[], $2::bytea[]) "
                    "AS u(p, seal) WHERE h.person_token = u.p AND h.seal IS NULL",
                    unsealed, [s.to_bytes() for s in seals])
            await conn.execute(
                "UPDATE provision_chain_heads h SET cp_seq = u.s, cp_hash = u.h "
                "FROM unnest($1::text[], $2::bigint[], $3::bytea[]) AS u(p, s, h) WHERE h.person_token = u.p",
                tokens, [taken[t][0] for t in tokens], [taken[t][1] for t in tokens])
            await conn.executemany(
                "INSERT INTO provision_checkpoint_buckets (bucket, root) VALUES ($1, $2) "
                "ON CONFLICT (bucket) DO UPDATE SET root = $2", [(b, roots[b]) for b in touched])
            await conn.execute("INSERT INTO provision_checkpoints (number, signed, issued_at) VALUES ($1, $2, $3)",
                               checkpoint.number, checkpoint.signed, checkpoint.issued_at)
        return BuildResult(checkpoint, len(taken), left_out)

    async def _previous(self, conn: asyncpg.Connection, published: Checkpoint | None) -> Checkpoint | None:
        signed = await conn.fetchval("SELECT signed FROM provision_checkpoints ORDER BY number DESC LIMIT 1")
        if signed is None:
            if published is not None:
                raise CheckpointRefused(f"checkpoint #{published.number} is published but the database holds none")
            return None
        try:
            previous = open_checkpoint(bytes(signed), self.keys)
        except CheckpointError:
            raise CheckpointRefused("the database's latest checkpoint is not signed by the records key") from None
        if published is not None and (published.number > previous.number or (
                published.number == previous.number and published.body != previous.body)):
            raise CheckpointRefused(f"the database holds checkpoint #{previous.number} but #{published.number} "
                                    "is published (the database was rolled back)")
        return previous

    async def _take(self, conn: asyncpg.Connection, moved: list[Any], *,
                    first: bool) -> tuple[dict[str, tuple[int, bytes]], dict[str, int]]:
        """The moved heads that may go into the checkpoint, and how many were left out by reason."""
        if not moved:
            return {}, {}
        tokens = [r["person_token"] for r in moved]
        anchors = {r["person_token"]: r for r in await conn.fetch(
            "SELECT person_token, seq, last_hash, purged_before, seal FROM provision_chain_anchors "
            "WHERE person_token = ANY($1::text[])", tokens)}
        starts: dict[str, tuple[int, bytes]] = {}
        for r in moved:
            start = (r["cp_seq"], bytes(r["cp_hash"]))
            anchor = anchors.get(r["person_token"])
            if anchor is not None and anchor["seq"] >= start[0]:
                start = (anchor["seq"], bytes(anchor["last_hash"]))
            starts[r["person_token"]] = start
        records: dict[str, list[ProvisionRecord]] = {t: [] for t in tokens}
        for row in await conn.fetch(_RECORDS_SINCE, tokens, [starts[t][0] for t in tokens], [r["seq"] for r in moved]):
            records[row["person_token"]].append(record_from_row(row))
        taken: dict[str, tuple[int, bytes]] = {}
        left_out: Counter[str] = Counter()
        for r in moved:
            token, seq, last_hash = r["person_token"], r["seq"], bytes(r["last_hash"])
            reason = self._refusal(token, r, anchors.get(token), starts[token], records[token], first=first)
            if reason:
                left_out[reason] += 1
            else:
                taken[token] = (seq, last_hash)
        return taken, dict(left_out)

    def _refusal(self, token: str, head: Any, anchor: Any, start: tuple[int, bytes],
                 records: list[ProvisionRecord], *, first: bool) -> str | None:
        """Why a moved head may not be checkpointed (a reason code for the log), or None."""
        seq, last_hash = head["seq"], bytes(head["last_hash"])
        if seq < head["cp_seq"]:
            return "moved_back"
        seal = Seal.from_bytes(head["seal"])
        if seal is None and not first:
            return "unsealed"
        if seal is not None and not self.keys.check(HEAD_DOMAIN, head_statement(token, seq, last_hash), seal):
            return "bad_seal"
        if anchor is not None and start[0] == anchor["seq"]:
            if not self.keys.check(ANCHOR_DOMAIN, anchor_statement(token, anchor["seq"], bytes(anchor["last_hash"]),
                                                                   anchor["purged_before"]),
                                   Seal.from_bytes(anchor["seal"])):
                return "bad_anchor"
            if head["cp_seq"] == anchor["seq"] and bytes(head["cp_hash"]) != start[1]:
                return "chain_broken"
        walk = walk_chain(records, start)
        if walk.problems or walk.last_seq != seq or walk.last_hash != last_hash:
            return "chain_broken"
        return None

    async def publish(self, producer: Any, topic: str) -> int:
        """Produce every unpublished checkpoint, oldest first, and mark each published once acknowledged."""
        done = 0
        for row in await self.pool.fetch(
                "SELECT number, signed FROM provision_checkpoints WHERE NOT published ORDER BY number"):
            meta = await producer.send_and_wait(topic, bytes(row["signed"]), key=str(row["number"]).encode())
            await self.pool.execute("UPDATE provision_checkpoints SET published = true, topic_offset = $2 "
                                    "WHERE number = $1", row["number"], meta.offset)
            done += 1
        return done


async def run_checkpoints(settings: Settings, pool: asyncpg.Pool, producer: Any, key: RecordsKey, *,
                          on_made: Callable[[BuildResult], None] | None = None,
                          on_refused: Callable[[str], None] | None = None, poll_s: float = 1.0) -> None:
    """The hub's checkpoint task: make and publish checkpoints for as long as it runs (cancel to stop).

    Database or broker failures are logged and retried.  A refused checkpoint
    (altered state) and heads left out as tampered are logged when they first
    appear (``on_refused`` / ``on_made`` see every round) and retried every
    ``records_checkpoint_interval_s`` until an operator acts.
    """
    topic = TopicNames(settings.kafka.topic_prefix).checkpoints
    interval, enough = settings.records_checkpoint_interval_s, settings.records_checkpoint_records
    published = CheckpointLog(settings, key.public())
    builder = CheckpointBuilder(pool, key, published)
    said = ""  # the last problem logged, so a standing one is logged once
    try:
        while True:
            delay, problem = poll_s, ""
            try:
                await builder.publish(producer, topic)
                heads, records, last_at = await builder.waiting()
                age = None if last_at is None else time.time() - last_at.timestamp()
                if heads and (records >= enough or age is None or age >= interval):
                    result = await builder.build()
                    if result is not None:
                        await builder.publish(producer, topic)
                        if on_made is not None:
                            on_made(result)
                        if result.left_out:
                            problem = (f"{sum(result.left_out.values())} moved head(s) left out of the checkpoint "
                                       f"as tampered {result.left_out}")
                        if result.checkpoint is None:
                            delay = max(poll_s, interval)  # nothing else moved: no use asking every second
            except CheckpointRefused as exc:
                problem, delay = f"no checkpoint made: {exc}", max(poll_s, interval)
                if on_refused is not None:
                    on_refused(str(exc))
            except (asyncpg.PostgresError, OSError, asyncio.TimeoutError, RenkeiError) as exc:
                log.warning("checkpoint round failed (%s); retrying", type(exc).__name__)
            except Exception as exc:  # a broker error (aiokafka's KafkaError): retried, never fatal to the hub
                if not type(exc).__module__.startswith("aiokafka"):
                    raise
                log.warning("checkpoint round failed (%s); retrying", type(exc).__name__)
            if problem and problem != said:
                log.error("%s; the records store must be investigated (renkei portal records names the chains' "
                          "problems)", problem)
            said = problem or said
            await asyncio.sleep(delay)
    finally:
        await published.close()
