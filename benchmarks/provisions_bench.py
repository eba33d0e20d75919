"""Provision-record micro-benchmark: appending a hub batch's records, next to a baseline.

Each hub batch appends its provision records in one transaction (``ProvisionStore.append``: lock the
persons' chain heads, skip records already written, hash-chain, insert, move the heads).  Printed,
for 500 records over 500, 50 and 1 persons (the steady state: every person already has a chain): the
milliseconds of that append, the milliseconds of a plain insert of the same 500 rows into an unindexed
table of the same columns in one transaction on the same database (the baseline), and the ratio.
Speed is measured here, never asserted by a test (docs/testing.md).

    python -m benchmarks.provisions_bench [--records 500] [--runs 5] [--dsn postgresql://…]

Without ``--dsn`` an embedded PostgreSQL is started in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from infra.platform.storage import create_pool
from infra.records.provisions import ProvisionRecord, ProvisionStore, RecordDraft

_PLAIN = """
CREATE TABLE bench_plain_records (record_id uuid, message_id uuid, correlation_id uuid, person_token text,
    requester text, provider text, data_item text, legal_basis text, requested_at timestamptz, status text,
    not_disclosed boolean, seq bigint, prev_hash bytea, hash bytea)
"""


def _token() -> str:
    return base64.urlsafe_b64encode(os.urandom(24)).decode("ascii")


def _draft(person: str) -> RecordDraft:
    return RecordDraft(message_id=uuid.uuid4(), correlation_id=uuid.uuid4(), person_token=person,
                       requester="agency-nta", provider="registry", data_item="public_funds_account",
                       legal_basis="account-registration-act/art9", requested_at=datetime.now(UTC))


async def _one(pool, store: ProvisionStore, records: int, people: int) -> tuple[float, float]:
    persons = [_token() for _ in range(people)]
    async with pool.acquire() as conn, conn.transaction():  # existing chains, as in steady state
        await store.append(conn, [_draft(p) for p in persons])
    drafts = [_draft(persons[n % people]) for n in range(records)]
    started = time.perf_counter()
    async with pool.acquire() as conn, conn.transaction():
        written = await store.append(conn, drafts)
    append_s = time.perf_counter() - started
    assert len(written) == records
    rows = [_plain_row(r) for r in written]
    started = time.perf_counter()
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany("INSERT INTO bench_plain_records VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
                               "$11, $12, $13, $14)", rows)
    return append_s, time.perf_counter() - started


def _plain_row(r: ProvisionRecord) -> tuple:
    return (uuid.uuid4(), r.message_id, r.correlation_id, r.person_token, r.requester, r.provider, r.data_item,
            r.legal_basis, r.requested_at, r.status.value, r.not_disclosed, r.seq, r.prev_hash, r.hash)


async def run(dsn: str, records: int, runs: int) -> list[dict[str, float]]:
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        await pool.execute(f'CREATE SCHEMA "{schema}"')
        await pool.close()
        pool = await create_pool(dsn, min_size=1, max_size=2, server_settings={"search_path": schema})
        store = ProvisionStore(pool)
        await store.migrate()
        await pool.execute(_PLAIN)
        out = []
        for people in (records, records // 10, 1):
            times = [await _one(pool, store, records, people) for _ in range(runs)]
            append_ms = statistics.median(t[0] for t in times) * 1000
            plain_ms = statistics.median(t[1] for t in times) * 1000
            out.append({"people": people, "append_ms": append_ms, "plain_insert_ms": plain_ms,
                        "ratio": append_ms / plain_ms})
        await pool.execute(f'DROP SCHEMA "{schema}" CASCADE')
        return out
    finally:
        await pool.close()


async def _main(args: argparse.Namespace) -> list[dict[str, float]]:
    if args.dsn:
        return await run(args.dsn, args.records, args.runs)
    from infra.platform.embedded import EmbeddedStack

    root = Path(tempfile.mkdtemp(prefix="renkei-provisions-bench-"))
    try:
        async with EmbeddedStack(root, with_broker=False) as stack:
            return await run(stack.pg_dsn, args.records, args.runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5, help="median of this many runs per row")
    parser.add_argument("--dsn", help="an existing PostgreSQL (default: an embedded one)")
    args = parser.parse_args()
    rows = asyncio.run(_main(args))
    print(f"provision records: append {args.records} in one transaction, median of {args.runs} runs")
    print(f"{'persons':>8}{'append ms':>12}{'plain insert ms':>18}{'× plain':>10}")
    for r in rows:
        print(f"{r['people']:>8}{r['append_ms']:>12.1f}{r['plain_insert_ms']:>18.1f}{r['ratio']:>10.2f}")


if __name__ == "__main__":
    main()
