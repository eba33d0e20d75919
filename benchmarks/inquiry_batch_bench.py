"""Bulk inquiry (一括照会, ``renkei agency inquire-batch``) on the embedded stack: people per second.

Not a timed test: run it by hand and read the figures.

    .venv/bin/python -m benchmarks.inquiry_batch_bench --people 2000 --registered 100 --window 64

It starts a fresh embedded platform (broker + PostgreSQL, hub, registry and bank simulator as real
processes) in a temporary state folder, registers ``--registered`` people through STEP1 (the bank's
existence check included), writes a CSV of ``--people`` people (the registered ones among them), and
runs the command exactly as an operator types it, as a process of its own with ``--json``.  The figure
is the command's own: inquiries sent per second over the run (each = token issuance + inquiry + answer,
the registry's provision record written).  The command's report is printed as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from infra.core.settings import Settings
from infra.platform.stack import WORKERS, Platform

AGENCY, PROCEDURE = "agency-city-minato", "child-allowance"


async def run(people: int, registered: int, window: int, keep: bool) -> dict:
    from infra.domain.validation import generate_my_number
    from infra.platform.pgdsn import public_dsn
    from infra.platform.stack import settings_env

    state = Path(tempfile.mkdtemp(prefix="renkei-batch-bench-"))
    settings = Settings(state_dir=state, log_level="WARNING")
    platform = Platform(settings, workers=[w for w in WORKERS if w.name in ("hub", "registry", "banks")])
    await platform.start()
    try:
        await platform.wait_ready(600)
        s = platform.settings
        rng = random.Random(2000)
        numbers = [generate_my_number(rng) for _ in range(people)]
        t0 = time.perf_counter()
        from infra.tools.bench import register_people
        from streams.client import BusClient

        async with BusClient(s, ["portal"], group=f"{s.kafka.topic_prefix}.batch-bench") as bus:
            await register_people(s, bus, numbers[:registered], first_account=2_000_000, timeout=120)
        registered_s = time.perf_counter() - t0
        path = state / "people.csv"
        with path.open("w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["ref", "my_number"])
            out.writerows((f"resident-{i:06d}", mn) for i, mn in enumerate(numbers))
        argv = [sys.executable, "-m", "infra.cli", "agency", "inquire-batch", "--agency", AGENCY,
                "--procedure", PROCEDURE, "--in", str(path), "--out", str(state / "results.csv"),
                "--window", str(window), "--json", "--kafka-bootstrap", s.kafka.bootstrap,
                "--pg-dsn", public_dsn(s.pg_dsn), "--state-dir", str(s.state_dir), "--topic-prefix",
                s.kafka.topic_prefix]
        t1 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*argv, env={**os.environ, **settings_env(s)},
                                                    stdout=asyncio.subprocess.PIPE)
        stdout, _ = await proc.communicate()
        wall = time.perf_counter() - t1
        report = json.loads(stdout)
        report.update(exit_code=proc.returncode, wall_s_with_process_start=round(wall, 2),
                      registration_s=round(registered_s, 2), load_avg=os.getloadavg(), cpus=os.cpu_count())
        return report
    finally:
        await platform.stop()
        if not keep:
            shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--people", type=int, default=2000)
    p.add_argument("--registered", type=int, default=100)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--keep", action="store_true", help="keep the state folder")
    a = p.parse_args()
    print(json.dumps(asyncio.run(run(a.people, a.registered, a.window, a.keep)), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
