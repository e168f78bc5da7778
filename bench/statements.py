"""The server's side of a record: PostgreSQL's time per statement, per applied record.

    .venv/bin/python bench/statements.py --database-url URL
    .venv/bin/python bench/statements.py --database-url URL --warm 400000 --records 40000

Applies the first ``--warm`` lines of the stream (default: the default bench stream, 100,000
leads over 90 days, seed 7, generated here) with ``LeadflowApp.apply_batch``, 1,000 records
a transaction, into a fresh database, as the CLI configures the app; then resets
``pg_stat_statements`` and applies the next ``--records`` lines. It prints, per applied
record: the engine's CPU and wall time, the CPU of every PostgreSQL process on this machine
(from ``/proc``, exited backends included), and the server's execution time of each
statement (``pg_stat_statements``, this database's only), largest first. This is how the
eighth session found two lookups planned as scans of their whole tables (README,
Performance): a plan that is cheap on a small table shows up only at the table sizes of a
real stream, hence ``--warm``.

``URL`` names an existing database of a server this user may create databases on, with
``pg_stat_statements`` loaded (``shared_preload_libraries``; the bench's own server does not
load it, so its figures stay comparable between runs). To load it into the tests' server::

    psql URL -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
    # restart PostgreSQL (scripts/services: `pg_ctl restart -D <state dir>/postgres/data`)

and ``ALTER SYSTEM RESET shared_preload_libraries`` plus a restart when done. The database
made here is dropped afterwards. Exit codes: 0 done, 2 the extension is not loaded.
"""

from __future__ import annotations

import argparse
import itertools
import os
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the bench's modules; tests.integration

from common import postgres_cpu_seconds  # noqa: E402
from cost_child import parse_lines, read_lines  # noqa: E402

from leadflow.config import Settings  # noqa: E402
from leadflow.engine.app import LeadflowApp  # noqa: E402
from leadflow.runtime import tune_gc  # noqa: E402

BATCH = 1000
TOP = """SELECT total_exec_time, calls, rows, regexp_replace(query, '\\s+', ' ', 'g')
FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s)
ORDER BY total_exec_time DESC"""


def loaded(admin_url: str) -> bool:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SHOW shared_preload_libraries").fetchone()
        if row is None or "pg_stat_statements" not in str(row[0]):
            return False
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return True


def measure(stream: Path, warm: int, records: int, admin_url: str, top: int) -> None:
    name = f"statements_{os.getpid()}"
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parsed = parse_lines(read_lines(stream, warm + records), datetime(2027, 1, 1, tzinfo=UTC))
    tune_gc()
    app = LeadflowApp(env=Settings(database_url=url).eventsourcing_env({}))
    try:
        for start in range(0, warm, BATCH):
            app.apply_batch(parsed[start:min(start + BATCH, warm)])
            print(f"\rwarming: {min(start + BATCH, warm):,} of {warm:,} records", end="",
                  file=sys.stderr, flush=True)
        print(file=sys.stderr)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")
        server, wall, cpu = postgres_cpu_seconds(), time.perf_counter(), time.process_time()
        measured = parsed[warm:]
        for start in range(0, len(measured), BATCH):
            app.apply_batch(measured[start:start + BATCH])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        server_after = postgres_cpu_seconds()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            rows = conn.execute(TOP, (name,)).fetchall()
    finally:
        app.close()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    n = max(1, len(measured))
    total = sum(float(r[0]) for r in rows)
    print(f"{len(measured):,} records after {warm:,}; per record: engine wall "
          f"{wall / n * 1e6:.1f} µs, engine CPU {cpu / n * 1e6:.1f} µs, PostgreSQL CPU "
          + (f"{(server_after - server) / n * 1e6:.1f} µs"
             if server is not None and server_after is not None else "- (not on this machine)")
          + f", statements' execution {total / n * 1e3:.1f} µs")
    for exec_ms, calls, found, query in rows[:top]:
        print(f"{float(exec_ms) / n * 1e3:7.2f} µs  {calls:6d} calls {found:8d} rows  "
              f"{query[:110]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True,
                        help="an existing database of the PostgreSQL server to use")
    parser.add_argument("--warm", type=int, default=150_000,
                        help="lines applied before the measured ones (the tables' size)")
    parser.add_argument("--records", type=int, default=50_000, help="lines measured")
    parser.add_argument("--top", type=int, default=15, help="statements printed")
    parser.add_argument("--stream", type=Path,
                        help="a JSONL stream (default: the default bench stream's first lines)")
    args = parser.parse_args()
    if not loaded(args.database_url):
        print("pg_stat_statements is not loaded by this server: see the top of "
              "bench/statements.py for how to load it", file=sys.stderr)
        return 2
    os.environ.setdefault("LEADFLOW_AUDIT_KEY", secrets.token_hex(32))
    os.environ.setdefault("LEADFLOW_MASTER_KEY", secrets.token_hex(32))
    stream = args.stream
    if stream is None:
        from leadflow.generator import generate

        stream = Path(f"/tmp/leadflow-statements-{os.getpid()}.jsonl")
        with stream.open("w", encoding="utf-8") as sink:
            for line in itertools.islice(generate(leads=100_000, days=90, seed=7),
                                         args.warm + args.records):
                sink.write(line + "\n")
    try:
        measure(stream, args.warm, args.records, args.database_url, args.top)
    finally:
        if args.stream is None:
            stream.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
