"""leadflow benchmark: one run, one deterministic stream, every figure of issue 6.

    .venv/bin/python bench/run.py            # 1,000,000 records (--leads 100000 --days 90)
    .venv/bin/python bench/run.py --quick    # ~30,000 records (--leads 3000 --days 90)
    make bench BENCH_ARGS=--quick

Services are the integration tests' own (``tests.integration.services.provide_services``):
explicit ``LEADFLOW_TEST_KAFKA_BOOTSTRAP``/``LEADFLOW_TEST_POSTGRES_URL``, else testcontainers,
else ``scripts/services up``. Services that were already running are reused and left running;
services this script starts are stopped at the end unless ``LEADFLOW_KEEP_SERVICES=1``.

What is measured, all on the same generated stream (see ``--help`` for the sizes):

1. end to end: ``leadflow publish`` (timed on its own), then ``leadflow consume --until-idle``
   on a fresh database and a 6-partition topic: records/s from process start to exit, and
   from the first partition assignment to the last committed batch (from its debug log);
   then two such consumers at once, in one new consumer group, on the same topic and a
   second fresh database (first spawn to last exit; steady from both logs), checked to store
   the same applied records as the single consumer; for both, the CPU PostgreSQL's processes spent
   a record (from ``/proc``, when the server runs on this machine);
   then the floor (``bench/floor.py``: a lean consumer on the engine's real store, contract
   and security, with a nearly free decision layer), one process and then two, each into a
   fresh database: what the engine's decision layer costs (``ratios.*_vs_floor``); and the
   same with the engine's ``Lead`` aggregates and codec deciding only a touchpoint's score
   (``floor.py --aggregates``): what the aggregates cost before any decision
   (``ratios.*aggregates_floor*``);
2. naive baseline: a plain ``eventsourcing`` application that gets, changes and saves one
   aggregate per record on PostgreSQL (the library's examples' way); and leadflow's own
   ``apply_batch`` in process on the same sample;
3. ceiling: raw kafka-python consumption of the same topic, ``json.loads`` of each value;
4. projection catch-up (``leadflow project --until-idle``) and ``leadflow rebuild``;
5. ``funnel`` and ``lead`` query latency on the filled database;
6. embedded SQLite ingest (``leadflow ingest``);
7. peak RSS of every child process (``os.wait4``'s rusage of that very process).

Nothing is asserted: figures, ratios and the issue's targets (pass/fail) are printed as a
table and written to ``bench/results/latest.json``. The exit code is 1 only when a step
could not run at all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import traceback
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # so that `tests.integration.services` is importable

import psycopg  # noqa: E402
from common import (  # noqa: E402  # noqa: E402
    MIB,
    RESULTS,
    dig,
    drop_database,
    err,
    ratio,
    say,
)
from costs import CostSteps  # noqa: E402
from kafka import KafkaConsumer  # noqa: E402
from pipeline import PipelineSteps  # noqa: E402
from reads import ReadSteps  # noqa: E402
from report import TARGETS, render  # noqa: E402
from tests.integration.kafka_helpers import Pipeline  # noqa: E402
from tests.integration.services import Services, provide_services  # noqa: E402

from leadflow.contract import InboundRecord  # noqa: E402

# --------------------------------------------------------------------------- the run


class Bench(PipelineSteps, ReadSteps, CostSteps):
    def __init__(self, args: argparse.Namespace, services: Services, work: Path) -> None:
        self.args = args
        self.services = services
        self.work = work
        self.tag = f"bench{uuid.uuid4().hex[:8]}"
        self.databases: list[str] = []
        self.topics: list[str] = []
        self.results: dict[str, Any] = {"errors": {}}
        self.stream = work / "stream.jsonl"
        self.sample: list[InboundRecord] = []
        self.sample_now = datetime.now(UTC)
        self.e2e_url = ""
        self.pipeline: Pipeline | None = None
        self.offsets: KafkaConsumer | None = None

    # ---------------------------------------------------------------- orchestration

    def step(self, name: str, action: Callable[[], None]) -> None:
        only = self.args.only
        # generate and publish feed every other step; --only skips the rest.
        if only and name not in only and name not in ("generate", "publish"):
            return
        say(f"[bold]{name}[/]")
        try:
            action()
        except Exception as exc:  # record it, keep measuring what still can be measured
            self.results["errors"][name] = f"{type(exc).__name__}: {exc}"
            err.print(f"[red]{name} failed:[/] {type(exc).__name__}: {exc}", highlight=False)
            if self.args.verbose:
                traceback.print_exc()

    def run(self) -> dict[str, Any]:
        started = datetime.now(UTC)
        self.results.update(
            started_at=started.isoformat(),
            command=" ".join(sys.argv),
            services={"origin": self.services.origin,
                      "kafka_bootstrap": self.services.kafka_bootstrap},
            machine=machine(),
        )
        self.step("generate", self.generate)
        self.step("publish", self.publish)
        if "publish" not in self.results["errors"]:
            self.step("ceiling", self.ceiling)
            self.step("consume", self.consume)
            if "consume" not in self.results["errors"]:
                self.step("consume_parallel", self.consume_parallel)
                self.step("floor", self.floor)
                self.step("stored_events", self.stored_events)
                self.step("verify", self.verify)
                self.step("project", self.project)
                self.step("rebuild", self.rebuild)
                self.step("rescore", self.rescore)
                self.step("dedupe", self.dedupe)
                self.step("queries", self.queries)
        self.step("naive", self.naive)
        self.step("apply_batch", self.apply_batch)
        self.step("sqlite_ingest", self.sqlite_ingest)
        self.step("chain_cost", self.chain_cost)
        self.step("privacy_cost", self.privacy_cost)
        self.step("startup", self.startup)
        self.results["versions"] = self.versions()
        self.summarise()
        finished = datetime.now(UTC)
        self.results["finished_at"] = finished.isoformat()
        self.results["total_seconds"] = round((finished - started).total_seconds(), 1)
        return self.results

    def cleanup(self) -> None:
        if self.offsets is not None:
            self.offsets.close()
        if self.args.keep:
            say(f"kept: databases {', '.join(self.databases) or '-'}, topics prefix "
                f"{self.tag}, work dir {self.work}")
            return
        for name in self.databases:
            with contextlib.suppress(psycopg.Error):
                drop_database(self.services.postgres_url, name)
        if self.topics:
            with contextlib.suppress(Exception):
                from kafka import KafkaAdminClient

                admin = KafkaAdminClient(bootstrap_servers=self.services.kafka_bootstrap)
                try:
                    admin.delete_topics(self.topics)
                finally:
                    admin.close()


    # ---------------------------------------------------------------- summary

    def versions(self) -> dict[str, Any]:
        # Which interpreter build ran it (Makefile: scripts/pick-python): the distribution's
        # (PGO and LTO) and a default pyenv build differ by ~10 % of CPU a record.
        found: dict[str, Any] = {"python": platform.python_version(),
                                 "python_executable": os.path.realpath(sys.executable),
                                 "python_build": " ".join(platform.python_build())}
        for name in ("leadflow", "eventsourcing", "kafka-python", "psycopg", "pydantic"):
            try:
                found[name] = package_version(name)
            except PackageNotFoundError:
                found[name] = None
        with contextlib.suppress(psycopg.Error), \
                psycopg.connect(self.services.postgres_url) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            found["postgres_server"] = row[0] if row else None
        found["kafka_broker"] = kafka_broker_version(self.services)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                                  capture_output=True, text=True, check=False, timeout=10)
            dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                                    "--untracked-files=no"], capture_output=True, text=True,
                                   check=False, timeout=10)
            found["git_commit"] = head.stdout.strip() or None
            found["git_dirty"] = bool(dirty.stdout.strip())
        return found

    def summarise(self) -> None:
        r = self.results
        e2e = dig(r, "e2e.records_per_s")
        steady = dig(r, "e2e.steady_records_per_s")
        naive = dig(r, "naive.records_per_s")
        ceiling = dig(r, "ceiling.records_per_s")
        r["peak_rss_mib"] = {
            "consumer": dig(r, "e2e.peak_rss_mib"),
            "consumers_parallel": dig(r, "e2e_parallel.peak_rss_mib"),
            "projector": dig(r, "projection.catch_up.peak_rss_mib"),
            "rebuild": dig(r, "projection.rebuild.peak_rss_mib"),
            "sqlite_ingest": dig(r, "sqlite_ingest.peak_rss_mib"),
            "publish": dig(r, "publish.peak_rss_mib"),
            "how": "ru_maxrss from os.wait4 on each child process",
        }
        r["ratios"] = {
            "e2e_vs_naive": ratio(e2e, naive),
            "e2e_vs_ceiling": ratio(e2e, ceiling),
            "e2e_steady_vs_naive": ratio(steady, naive),
            "e2e_steady_vs_ceiling": ratio(steady, ceiling),
            "apply_batch_vs_naive": ratio(dig(r, "apply_batch.records_per_s"), naive),
            "parallel_scaling": ratio(dig(r, "e2e_parallel.records_per_s"), e2e),
            "parallel_steady_scaling": ratio(dig(r, "e2e_parallel.steady_records_per_s"),
                                             steady),
            "e2e_vs_floor": ratio(e2e, dig(r, "floor.one.records_per_s")),
            "parallel_vs_floor": ratio(dig(r, "e2e_parallel.records_per_s"),
                                       dig(r, "floor.two.records_per_s")),
            # What the e2e_vs_naive target asks of the engine: a consumer whose decisions
            # cost nearly nothing gets this far against the same naive sample.
            "floor_vs_naive": ratio(dig(r, "floor.one.records_per_s"), naive),
            "aggregates_floor_vs_naive": ratio(dig(r, "floor_aggregates.one.records_per_s"),
                                               naive),
            "e2e_vs_aggregates_floor": ratio(e2e, dig(r, "floor_aggregates.one.records_per_s")),
            "parallel_vs_aggregates_floor": ratio(
                dig(r, "e2e_parallel.records_per_s"),
                dig(r, "floor_aggregates.two.records_per_s")),
            "note": "e2e = wall clock of the consumer process (start-up included); steady = "
                    "first partition assignment to last committed batch; parallel_scaling = "
                    "two consumers in one group (first spawn to last exit) vs one; *_vs_floor = "
                    "the engine vs bench/floor.py's lean consumer on the same store; "
                    "floor_vs_naive = that lean consumer vs the naive baseline; "
                    "*aggregates_floor* = the same with the engine's Lead aggregates and codec "
                    "(bench/floor.py --aggregates)",
        }
        targets = []
        for key, label, path, op, threshold, unit in TARGETS:
            value = dig(r, path)
            passed = None if value is None else (
                value >= threshold if op == ">=" else value <= threshold)
            targets.append({"key": key, "label": label, "figure": path, "op": op,
                            "target": threshold, "unit": unit, "value": value,
                            "pass": passed})
        r["targets"] = targets


def kafka_broker_version(services: Services) -> str | None:
    if services.origin == "scripts/services":
        state = Path(os.environ.get("LEADFLOW_SERVICES_DIR", "/tmp/leadflow-services"))
        with contextlib.suppress(OSError):
            return (state / "kafka" / "version").read_text().strip() or None
    return None


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cores": os.cpu_count(), "platform": platform.platform()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_mib"] = round(int(line.split()[1]) / MIB)
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a ~30,000-record stream (--leads 3000 --days 90)")
    parser.add_argument("--leads", type=int, default=None,
                        help="leads in the stream (default 100000, ~1M records; 3000 with "
                             "--quick)")
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--naive-records", type=int, default=5000,
                        help="sample for the naive baseline and in-process apply_batch")
    parser.add_argument("--naive-seconds", type=float, default=20.0,
                        help="stop the naive baseline after this long")
    parser.add_argument("--batch-size", type=int, default=1000,
                        help="records per apply_batch call in process")
    parser.add_argument("--sqlite-lines", type=int, default=100_000,
                        help="SQLite ingest uses at most this many lines of the stream")
    parser.add_argument("--funnel-calls", type=int, default=30)
    parser.add_argument("--lead-calls", type=int, default=200)
    parser.add_argument("--startup-runs", type=int, default=9,
                        help="process runs of `leadflow --help` and `lead show` (start-up)")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the in-process apply_batch and print the top functions")
    parser.add_argument("--only", type=lambda text: [s for s in text.split(",") if s],
                        default=[], metavar="STEP,…",
                        help="run only these steps (plus generate and publish), e.g. "
                             "consume,consume_parallel while working on the consumer; the "
                             "result file then lacks the other figures")
    parser.add_argument("--keep", action="store_true",
                        help="keep the databases, topics and work dir (logs, stream)")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")
    args = parser.parse_args(argv)
    if args.leads is None:
        args.leads = 3000 if args.quick else 100_000
    return args


def services_already_running() -> bool:
    if os.environ.get("LEADFLOW_TEST_KAFKA_BOOTSTRAP") and \
            os.environ.get("LEADFLOW_TEST_POSTGRES_URL"):
        return False
    try:
        status = subprocess.run([str(ROOT / "scripts" / "services"), "status"],
                                capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return status.returncode == 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Every store signs its chain links with an audit key from outside the database
    # (PostgreSQL refuses to start without one); the bench's stores are throwaway, so is the
    # key, unless one is configured. Every child process inherits it.
    os.environ.setdefault("LEADFLOW_AUDIT_KEY", secrets.token_hex(32))
    os.environ.setdefault("LEADFLOW_MASTER_KEY", secrets.token_hex(32))
    if services_already_running():
        # Reused, so left running: someone else (a test session) may be using them.
        os.environ["LEADFLOW_KEEP_SERVICES"] = "1"
    work = Path(tempfile.mkdtemp(prefix="leadflow-bench-"))
    say(f"stream: --leads {args.leads} --days {args.days} --seed {args.seed}; work dir {work}")
    say("starting services (as the integration tests do)")
    with provide_services() as services:
        say(f"services from {services.origin}: kafka {services.kafka_bootstrap}")
        bench = Bench(args, services, work)
        try:
            results = bench.run()
        finally:
            bench.cleanup()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    render(results, args.output)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
