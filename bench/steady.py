"""Instructions per applied record in steady state, in process, into PostgreSQL.

    .venv/bin/python bench/steady.py --database-url postgresql://USER:PW@HOST:PORT/postgres
    .venv/bin/python bench/steady.py --database-url URL --records 8000 --stream FILE.jsonl

Applies the first ``--records`` lines of the stream (default: the default bench stream,
100,000 leads over 90 days, seed 7, generated here) with ``LeadflowApp.apply_batch``, 1,000
records a transaction, as the CLI configures the app (aggregate cache on, GC tuned), into a
fresh database, under ``valgrind --tool=callgrind``; then the first half alone, into another
fresh database. The difference, divided by the records between the two, is what a record
costs once the process is warm: start-up, imports and the first half's growth cancel out.
Unlike CPU time, an instruction count does not depend on what else the machine runs (on the
bench's 2-core VMs one and the same run varied by 15 % within an hour), so two versions of
the code compare in one figure each (check out each and run this; ``PYTHONHASHSEED`` is
fixed, so set iteration orders are the same). Note what it does not weigh: waiting for
PostgreSQL, and work whose instruction count differs from its time (valgrind's CPU has no
SHA extensions, so hashing counts for more than it costs).

``URL`` names an existing database of a server this user may create databases on (the
bench's and the tests' PostgreSQL: ``eval "$(scripts/services up)"`` prints it as
``LEADFLOW_TEST_POSTGRES_URL``). The two databases are dropped afterwards.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import secrets
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
BATCH = 1000


def _url(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name


def child(stream: Path, records: int, url: str) -> None:
    """Apply the stream's first ``records`` lines (the part valgrind counts)."""
    sys.path.insert(0, str(HERE))
    from cost_child import parse_lines, read_lines  # the bench's own sample reading

    from leadflow.config import Settings
    from leadflow.engine.app import LeadflowApp
    from leadflow.runtime import tune_gc

    parsed = parse_lines(read_lines(stream, records), datetime(2027, 1, 1, tzinfo=UTC))
    tune_gc()
    app = LeadflowApp(env=Settings(database_url=url).eventsourcing_env({}))
    try:
        for start in range(0, len(parsed), BATCH):
            app.apply_batch(parsed[start:start + BATCH])
    finally:
        app.close()


def applied(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM leadflow_record_ids").fetchone()
    return int(row[0]) if row else 0


def count(stream: Path, records: int, admin_url: str, work: Path) -> tuple[int, int]:
    """(instructions, applied records) of one run of the first ``records`` lines."""
    name = f"steady_{os.getpid()}_{records}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _url(admin_url, name)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    for key in ("LEADFLOW_AUDIT_KEY", "LEADFLOW_MASTER_KEY"):
        env.setdefault(key, secrets.token_hex(32))  # any key: the cost is the same
    log = work / f"callgrind.{records}.log"
    try:
        with log.open("w") as out:
            subprocess.run(
                ["valgrind", "--tool=callgrind",
                 f"--callgrind-out-file={work / f'callgrind.{records}.out'}",
                 sys.executable, __file__, "--child", str(stream), str(records), url],
                env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
        found = re.search(r"Collected : (\d+)", log.read_text())
        if found is None:
            raise SystemExit(f"no instruction count in {log}")
        return int(found.group(1)), applied(url)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True,
                        help="an existing database of the PostgreSQL server to use")
    parser.add_argument("--records", type=int, default=8000,
                        help="lines applied in the long run (the short run applies half)")
    parser.add_argument("--stream", type=Path,
                        help="a JSONL stream (default: the default bench stream's first lines)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="leadflow-steady-") as tmp:
        work = Path(tmp)
        stream = args.stream
        if stream is None:
            from leadflow.generator import generate

            stream = work / "stream.jsonl"
            with stream.open("w", encoding="utf-8") as sink:
                for line in itertools.islice(generate(leads=100_000, days=90, seed=7),
                                             args.records):
                    sink.write(line + "\n")
        half = args.records // 2
        short, short_applied = count(stream, half, args.database_url, work)
        long, long_applied = count(stream, args.records, args.database_url, work)
    per_record = (long - short) / max(1, long_applied - short_applied)
    print(f"{long:,} instructions for {long_applied:,} applied records, {short:,} for "
          f"{short_applied:,}: {per_record:,.0f} a record in steady state")


if __name__ == "__main__":
    main()
