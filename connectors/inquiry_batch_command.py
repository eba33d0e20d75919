"""``renkei agency inquire-batch``: a municipality's bulk inquiry (一括照会), resumable (connectors.inquiry_batch).

    renkei agency inquire-batch --agency agency-city-minato --procedure child-allowance \\
        --in people.csv --out results.csv

Who may do this: an agency, for a public-benefit procedure it is entitled to
(infra/domain/procedures.toml) — checked here before anything is sent (the whole
batch is refused, nothing is asked), and by the hub on every inquiry (a hub
refusal about the agency or the procedure stops the batch).  The command acts
with the agency's keys, as ``agency inquire`` does.

At most ``--window`` people are in flight at once (token issuance, then the
inquiry); a progress bar shows on a terminal (none with ``--json``).  Exit
codes: 0 every line has its answer (a person's own refusal — INVALID_FIELD,
BLOCKED — is an answer, on its line), 2 the batch was refused, 1 some lines
got no answer in time (run the same command again: it waits for those, it
does not ask again).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connectors.commands import (
    EXIT_DONE,
    EXIT_ERROR,
    EXIT_REJECTED,
    Outcome,
    act,
    emit,
    normalise_my_number,
    participants_of,
    refused,
    report,
    subcommand,
    timeout_arg,
)

STOPPED_STATUS = "NOT_SENT"


def register() -> None:
    """Add ``renkei agency inquire-batch`` (after ``connectors.commands.register``)."""
    p = subcommand("agency", "inquire-batch", cmd_inquire_batch,
                   "bulk inquiry (一括照会): the public-funds accounts of every person of a CSV file, one result "
                   "line each; run it again to resume",
                   report_defaults={"batch_id": None, "agency": None, "procedure": None, "lines": None,
                                    "resumed": None, "sent": None, "counts": {}, "out": None, "elapsed_s": None,
                                    "rate_per_s": None})
    p.add_argument("--agency", required=True, help="the agency's participant id (e.g. agency-city-minato)")
    p.add_argument("--procedure", "--procedure-code", dest="procedure", required=True, metavar="CODE",
                   help="the public-benefit procedure, one the agency is entitled to (infra/domain/procedures.toml)")
    p.add_argument("--in", dest="input", required=True, type=Path, metavar="CSV",
                   help="the people: a CSV file with a header naming my_number (and optionally ref, the "
                        "agency's own id for the person, echoed in the results)")
    p.add_argument("--out", dest="output", required=True, type=Path, metavar="CSV",
                   help="the results, one line per person (line, ref, status, reason, detail, account, "
                        "request_id); written whole at the end, mode 0600")
    p.add_argument("--batch", default=None, metavar="NAME",
                   help="name the batch (default: a keyed digest of agency, procedure and the file: the same "
                        "command resumes); a new name asks again")
    p.add_argument("--window", type=int, default=64, metavar="N",
                   help="at most N people in flight at once (default 64)")
    timeout_arg(p, 120.0)


async def cmd_inquire_batch(settings: Any, args: argparse.Namespace) -> int:
    from connectors.inquiry_batch import read_people
    from infra.core.errors import PolicyDenied, ValidationError
    from infra.domain.participants import Kind
    from infra.domain.procedures import Procedures

    participants = participants_of(settings)
    agency = participants.get(args.agency)
    if agency is None or agency.kind is not Kind.AGENCY:
        return emit(args, refused(args, "UNKNOWN_PARTICIPANT", "--agency names no agency"))
    try:  # the hub checks every inquiry too; refusing here means nothing of a refused batch is ever sent
        Procedures.load().check(args.procedure, agency)
    except PolicyDenied as exc:
        return emit(args, refused(args, exc.code, exc.message))
    if args.window < 1:
        return emit(args, refused(args, "INVALID_FIELD", "--window: at least 1"))
    try:
        people, content = read_people(args.input, normalise_my_number)
    except OSError as exc:
        return emit(args, refused(args, "INVALID_FIELD", f"--in: cannot read the file ({exc.strerror})"))
    except ValidationError as exc:
        return emit(args, refused(args, exc.code, exc.message))

    async def work(settings: Any, _client: Any, _: Any) -> Outcome:
        return await BatchRun(settings, args, agency.id, people, content).run()

    return await act(settings, args, None, work, person=False)


class BatchRun:
    """One run of a batch: lock it, find what earlier runs did, send the rest within the window, write results."""

    def __init__(self, settings: Any, args: argparse.Namespace, agency: str, people: list[Any], content: bytes):
        self.settings, self.args, self.agency, self.people, self.content = settings, args, agency, people, content
        self.results: dict[int, Any] = {}
        self.stop_reason: tuple[str, str] | None = None
        self.sent = 0

    async def run(self) -> Outcome:
        import asyncpg

        from connectors.inquiry_batch import BATCH_MIGRATIONS, BatchStore, batch_digest
        from infra.platform.keystore import KeyStore
        from infra.platform.pgdsn import participants_dsn
        from infra.platform.storage import migrate

        args = self.args
        secret = KeyStore.for_settings(self.settings).secret(f"{self.agency}.inquiry-batch")
        derived, fingerprint = batch_digest(secret, self.agency, args.procedure, self.content)
        self.batch_id = args.batch or derived
        dsn = participants_dsn(self.settings, [self.agency], participants_of(self.settings))
        lock = await asyncpg.connect(dsn)  # holds the batch's advisory lock for the whole run
        try:
            await migrate(lock, "inquiry-batch", BATCH_MIGRATIONS)
            if not await lock.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                                       f"inquiry-batch:{self.batch_id}"):
                return refused(args, "BATCH_BUSY", f"batch {self.batch_id} is being run by another process")
            from infra.core.errors import ValidationError

            try:
                state = await BatchStore(lock).state(self.batch_id, fingerprint)
            except ValidationError:
                return refused(args, "BATCH_MISMATCH", f"batch {self.batch_id} was started with another file or "
                                                       "procedure; name a new batch with --batch")
            return await self._run(state, fingerprint)
        finally:
            await lock.close()

    async def _run(self, state: Any, fingerprint: bytes) -> Outcome:
        import contextlib

        from connectors.cli_client import CommandClient
        from connectors.inquiry_batch import BatchStore, LineResult, write_results
        from infra.ops import progress

        args = self.args
        start = time.perf_counter()
        resumed = state is not None
        client = CommandClient(self.settings, [self.agency], since=state.inbox_offsets if resumed else None)
        loop = asyncio.get_running_loop()
        waiting: dict[int, asyncio.Future[Any]] = {}
        if resumed:
            self.results.update(state.answered)
            for line, correlation in state.pending.items():  # waiters first: the listener rereads the inbox
                waiting[line] = client.runtime.waiters[(self.agency, correlation)] = loop.create_future()
        refs = {p.line: p.ref for p in self.people}
        quiet = contextlib.nullcontext(lambda n=1, **fields: None)  # --json: no bar
        with (quiet if args.json else progress(f"inquire-batch {self.batch_id}", len(self.people))) as advance:
            advance(len(self.results))
            async with client:
                store = BatchStore(client.runtime.pool)  # the agency's schema, where its outbox is
                if resumed:
                    await store.resumed(self.batch_id)
                else:
                    await store.create(self.batch_id, self.agency, args.procedure, fingerprint, len(self.people),
                                       client.inbox_offsets)
                window = asyncio.Semaphore(args.window)
                tasks = [self._answer(store, line, refs[line], state.pending[line], fut, advance)
                         for line, fut in waiting.items()]
                tasks += [self._ask(client, store, p, window, advance) for p in self.people
                          if p.line not in self.results and p.line not in waiting]
                await asyncio.gather(*tasks)
                for p in self.people:  # lines a batch-level refusal kept from being sent
                    if p.line not in self.results:
                        self.results[p.line] = LineResult(p.line, p.ref, STOPPED_STATUS, self.stop_reason[0]
                                                          if self.stop_reason else "TIMEOUT", None)
                missing = [r for r in self.results.values() if r.status in ("TIMEOUT", STOPPED_STATUS)]
                if not missing:
                    await store.finished(self.batch_id)
        write_results(args.output, self.results.values())
        elapsed = time.perf_counter() - start
        counts: dict[str, int] = {}
        for r in self.results.values():
            counts[r.status] = counts.get(r.status, 0) + 1
        if self.stop_reason:
            code, status, reason, detail = EXIT_REJECTED, "REJECTED", *self.stop_reason
        elif missing:
            code, status, reason = EXIT_ERROR, "INCOMPLETE", "TIMEOUT"
            detail = f"{len(missing)} line(s) without an answer in time: run the same command again to wait for them"
        else:
            code, status, reason, detail = EXIT_DONE, "DONE", None, None
        rate = round(self.sent / elapsed, 1) if elapsed > 0 else None
        out = report(args, status, reason=reason, detail=detail, batch_id=self.batch_id, agency=self.agency,
                     procedure=args.procedure, lines=len(self.people), resumed=resumed, sent=self.sent,
                     counts=dict(sorted(counts.items())), out=str(args.output), elapsed_s=round(elapsed, 2),
                     rate_per_s=rate)
        return Outcome(code, out, [(f"Bulk inquiry {self.batch_id} ({self.agency}, {args.procedure}): {status}",
                                    ["status", "lines"], [[k, v] for k, v in sorted(counts.items())]),
                                   ("Run", ["lines", "asked now", "resumed", "seconds", "inquiries/s", "results"],
                                    [[len(self.people), self.sent, "yes" if resumed else "no", out["elapsed_s"],
                                      rate, str(args.output)]])],
                       note=f"{args.command_name}: {reason}" + (f" ({detail})" if detail else ""))

    async def _ask(self, client: Any, store: Any, person: Any, window: asyncio.Semaphore, advance: Any) -> None:
        """One person not yet asked: a bad number is answered on its line; else token, then the inquiry,
        sealed in the transaction that records the line."""
        from connectors.cli_client import Refused
        from connectors.inquiry_batch import LineResult

        if person.my_number is None:
            result = LineResult(person.line, person.ref, "REJECTED", "INVALID_FIELD", person.problem)
            await store.answered(self.batch_id, result, sent=False)
            self._done(result, advance)
            return
        async with window:
            if self.stop_reason is not None:
                return
            try:
                token = await client.token_for(self.agency, person.my_number, timeout=self.args.timeout)
            except Refused as exc:  # token issuance is about the agency, never the person
                self.stop_reason = self.stop_reason or (exc.code, exc.message)
                return
            except TimeoutError:
                self._done(LineResult(person.line, person.ref, "TIMEOUT", "TIMEOUT", "no token in time"), advance)
                return
            if self.stop_reason is not None:
                return
            correlation = str(uuid.uuid4())
            future = client.runtime.waiters[(self.agency, correlation)] = asyncio.get_running_loop().create_future()
            try:
                if not await self._send(client, store, person, token, correlation):
                    return
                self.sent += 1
                await self._answer(store, person.line, person.ref, correlation, future, advance)
            finally:
                client.runtime.waiters.pop((self.agency, correlation), None)

    async def _send(self, client: Any, store: Any, person: Any, token: str, correlation: str) -> bool:
        from connectors.agency import SUPPORTED_ITEMS
        from infra.crypto.envelope import Message
        from infra.domain.policy import DATA_PUBLIC_FUNDS_ACCOUNT

        type_, basis = SUPPORTED_ITEMS[DATA_PUBLIC_FUNDS_ACCOUNT]
        message = Message(body={"procedure_code": self.args.procedure, "requested_at": datetime.now(UTC)},
                          type=type_, to="registry", subject=token, data_item=DATA_PUBLIC_FUNDS_ACCOUNT, basis=basis,
                          correlation_id=correlation, procedure=self.args.procedure)
        runtime = client.runtime
        async with runtime.pool.acquire() as conn, conn.transaction():
            if not await store.claim_line(conn, self.batch_id, person, correlation):
                return False  # asked already (cannot happen under the batch lock; never ask twice anyway)
            ids = await runtime.send(self.agency, [message], conn=conn)
            await store.sent(conn, self.batch_id, person.line, ids[0])
        return True

    async def _answer(self, store: Any, line: int, ref: str | None, correlation: str, future: asyncio.Future[Any],
                      advance: Any) -> None:
        from connectors.inquiry_batch import STOPPING_REASONS, LineResult, result_from_answer

        try:
            answer = await asyncio.wait_for(future, self.args.timeout)
        except TimeoutError:  # the line stays asked-and-unanswered: the next run waits for it, never re-asks
            self._done(LineResult(line, ref, "TIMEOUT", "TIMEOUT", "no answer in time; run again to wait for it",
                                  request_id=correlation), advance)
            return
        result = result_from_answer(line, ref, answer.meta.type, answer.body, correlation)
        if result.status == "REJECTED" and result.reason in STOPPING_REASONS:
            self.stop_reason = self.stop_reason or (result.reason, result.detail or "")
        await store.answered(self.batch_id, result)
        self._done(result, advance)

    def _done(self, result: Any, advance: Any) -> None:
        self.results[result.line] = result
        advance(1)
