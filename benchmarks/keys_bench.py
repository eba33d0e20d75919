"""Key bootstrap for N banks on the embedded stack: what `renkei up` spends on keys.

Not a timed test: run it by hand and read the figures.

    .venv/bin/python -m benchmarks.keys_bench --banks 1000

It starts the embedded broker and PostgreSQL in a temporary state folder, applies the topic layout
for ``--banks`` simulated banks, then times ``infra.platform.stack.bootstrap_keys`` three times: with no keys
(every keyset generated, the directory published), with the keys and the directory in place (the
second ``renkei up``), and with the keys in place but the topic emptied (a memory broker restarted:
the directory is published again from the root holder's journal). Last it times loading the
directory from the topic, as every worker does at start. Each figure is wall time, and ``*_cpu_s``
this process's CPU time for the same step (steadier on a shared machine; the broker's is not in it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

from infra.core.settings import Settings


async def run(banks: int) -> dict:
    from infra.domain.participants import load_participants
    from infra.platform.embedded import EmbeddedStack
    from infra.platform.kafka import admin_client
    from infra.platform.keystore import KeyStore, load_directory
    from infra.platform.stack import bootstrap_keys
    from infra.platform.topics import TopicNames, apply_layout, layout

    state = Path(tempfile.mkdtemp(prefix="renkei-keys-bench-"))
    out: dict = {"banks": banks}
    try:
        async with EmbeddedStack(state, die_with_parent=True) as stack:
            settings = Settings(state_dir=state, banks=banks, log_level="WARNING").with_endpoints(
                bootstrap=stack.bootstrap, pg_dsn=stack.pg_dsn)
            participants = load_participants(None, banks=banks)

            async def fresh_topics(prefix: str) -> Settings:
                s = Settings(kafka=settings.kafka.__class__(bootstrap=stack.bootstrap, topic_prefix=prefix),
                             pg_dsn=stack.pg_dsn, state_dir=state, banks=banks)
                admin = admin_client(s)
                await admin.start()
                try:
                    await apply_layout(admin, layout(TopicNames(prefix), participants))
                finally:
                    await admin.close()
                return s

            async def timed(name: str, step):
                wall, cpu = time.perf_counter(), time.process_time()
                result = await step
                out[f"{name}_s"] = round(time.perf_counter() - wall, 2)
                out[f"{name}_cpu_s"] = round(time.process_time() - cpu, 2)
                return result

            first = await fresh_topics("kb1")
            await timed("bootstrap_new_keys", bootstrap_keys(first, participants))
            await timed("bootstrap_again", bootstrap_keys(first, participants))
            second = await fresh_topics("kb2")
            await timed("bootstrap_empty_topic", bootstrap_keys(second, participants))
            directory = await timed("directory_load",
                                    load_directory(first, KeyStore.for_settings(first).root_public_key()))
            out["directory_entries"] = len(directory)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--banks", type=int, default=1000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.banks)), indent=2))


if __name__ == "__main__":
    main()
