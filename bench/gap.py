"""Where the engine's time goes beyond the floor, in process, on the same records.

    LEADFLOW_TEST_POSTGRES_URL=postgresql://… .venv/bin/python bench/gap.py MODE \\
        [--warm 30000] [--records 60000] [--stream PATH]

Three ways to apply the default stream's records into a fresh PostgreSQL store, 1,000
records a transaction, the first ``--warm`` records first (not timed), then ``--records``
timed (process CPU and wall a record, contract parsing included):

- ``floor``: ``bench/floor.py``'s batch (a nearly free decision layer: one dict and one row
  a record);
- ``aggregates``: the floor with each lead an engine ``Lead``: its created event, its
  touchpoints through ``Lead.record_touchpoint`` (the engine's scoring and event), cut per
  record and encoded by the engine's codec (the library's JSON format, envelopes, sealed
  personal values, chain links) — what the aggregates and their events cost over the floor;
- ``engine``: ``LeadflowApp.apply_batch``, every decision.

The stream is ``leadflow generate --leads 100000 --days 90 --seed 7`` (the default bench's)
unless ``--stream`` names a file of its lines.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import secrets
import sys
import time
import types
from itertools import islice
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for entry in (str(ROOT / "src"), str(ROOT / "bench")):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import psycopg  # noqa: E402
from floor import AggregateFloor, Floor  # noqa: E402
from kafka import TopicPartition  # noqa: E402

from leadflow.config import Settings  # noqa: E402
from leadflow.consumers.settings import KafkaSettings  # noqa: E402
from leadflow.engine.app import LeadflowApp  # noqa: E402
from leadflow.generator import generate  # noqa: E402
from leadflow.runtime import collector_paused, tune_gc  # noqa: E402

BATCH = 1000
PARTITION = TopicPartition("gap", 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("floor", "aggregates", "engine"))
    parser.add_argument("--warm", type=int, default=30000)
    parser.add_argument("--records", type=int, default=60000)
    parser.add_argument("--stream", type=Path)
    parser.add_argument("--profile", type=Path,
                        help="write cProfile's statistics of the timed records here")
    args = parser.parse_args()
    os.environ.setdefault("LEADFLOW_AUDIT_KEY", secrets.token_hex(32))
    os.environ.setdefault("LEADFLOW_MASTER_KEY", secrets.token_hex(32))
    os.environ.setdefault("LEADFLOW_KAFKA_TOPIC", "gap")
    admin = os.environ["LEADFLOW_TEST_POSTGRES_URL"]
    total = args.warm + args.records
    if args.stream:
        with args.stream.open(encoding="utf-8") as lines:
            values = [line.encode() for line in islice(lines, total)]
    else:
        values = [line.encode() for line in islice(generate(leads=100000, days=90, seed=7),
                                                    total)]
    raw = [types.SimpleNamespace(value=value, offset=i) for i, value in enumerate(values)]
    name = f"gap_{os.getpid()}"
    url = admin.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    tune_gc()
    app = LeadflowApp(env=Settings(database_url=url).eventsourcing_env({}))
    try:
        if args.mode == "engine":
            parser_only = Floor(app, KafkaSettings.from_env(), subscribe=False)

            def step(batch: list[Any]) -> None:
                app.apply_batch(parser_only.parse(batch))
        else:
            kind = Floor if args.mode == "floor" else AggregateFloor
            applier = kind(app, KafkaSettings.from_env(), subscribe=False)

            def step(batch: list[Any]) -> None:
                applier.apply(PARTITION, batch)

        for start in range(0, args.warm, BATCH):
            with collector_paused():
                step(raw[start:min(start + BATCH, args.warm)])
        timed = raw[args.warm:]
        profiler = cProfile.Profile() if args.profile else None
        wall, cpu = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.enable()
        for start in range(0, len(timed), BATCH):
            with collector_paused():
                step(timed[start:start + BATCH])
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        app.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    print(f"{args.mode}: {len(timed)} records after {args.warm}: "
          f"{cpu / len(timed) * 1e6:.1f} us of CPU and {wall / len(timed) * 1e6:.1f} us of "
          "wall a record (parsing included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
