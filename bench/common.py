"""The bench's shared parts: processes, databases, logs and the state every step reads
(bench/run.py runs the steps).

The step modules (pipeline, reads, costs, report) are imported by run.py, which puts the
repository root on ``sys.path`` first: they import ``tests.integration`` helpers."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import psycopg
from kafka import KafkaConsumer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from tests.integration.kafka_helpers import Pipeline
from tests.integration.services import Services

from leadflow.config import Settings
from leadflow.contract import InboundRecord
from leadflow.engine.app import LeadflowApp

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PARTITIONS = 6
MIB = 1024.0  # ru_maxrss is in KiB on Linux

err = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 120)


# --------------------------------------------------------------------------- helpers


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def rate(count: float, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def dig(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=False)


def say(message: str) -> None:
    err.print(f"[cyan]bench[/] {message}", highlight=False)


@dataclass
class Child:
    returncode: int
    seconds: float
    peak_rss_mib: float
    stdout: str
    stderr_path: Path
    spawned_at: float  # epoch seconds, comparable with the child's log timestamps
    exited_at: float
    cpu_seconds: float = 0.0  # user + system of the process (its threads), from wait4


    def check(self, what: str, ok: tuple[int, ...] = (0, 3)) -> None:
        if self.returncode not in ok:  # 3: the command ran, some input lines rejected
            tail = self.stderr_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{what} exited {self.returncode}; stderr tail:\n{tail}")


def run_child(args: Sequence[str], env: dict[str, str], log: Path,
              tick: Callable[[], None] | None = None) -> Child:
    """Run a process, timed from spawn to exit; peak RSS from ``wait4`` on that very pid."""
    out_path = log.with_suffix(".stdout")
    reaped: dict[str, Any] = {}
    with log.open("wb") as stderr, out_path.open("wb") as stdout:
        spawned_at, started = time.time(), time.perf_counter()
        proc = subprocess.Popen(list(args), stdout=stdout, stderr=stderr, env=env, cwd=ROOT)

        def reap() -> None:
            _, status, usage = os.wait4(proc.pid, 0)
            reaped.update(at=time.perf_counter(), epoch=time.time(), status=status,
                          usage=usage)

        waiter = threading.Thread(target=reap, daemon=True)
        waiter.start()
        try:
            while waiter.is_alive():
                if tick is not None:
                    tick()
                waiter.join(0.25)
        except BaseException:
            proc.kill()
            waiter.join(10)
            raise
    proc.returncode = os.waitstatus_to_exitcode(reaped["status"])
    if tick is not None:
        tick()
    return Child(returncode=proc.returncode, seconds=reaped["at"] - started,
                 peak_rss_mib=round(reaped["usage"].ru_maxrss / MIB, 1),
                 stdout=out_path.read_text(errors="replace"), stderr_path=log,
                 spawned_at=spawned_at, exited_at=reaped["epoch"],
                 cpu_seconds=round(reaped["usage"].ru_utime + reaped["usage"].ru_stime, 2))


def run_children(jobs: Sequence[tuple[Sequence[str], dict[str, str], Path]],
                 tick: Callable[[], None] | None = None) -> list[Child]:
    """Run processes at the same time, each as ``run_child`` runs one (timed from its own
    spawn to its own exit, peak RSS from ``wait4`` on its pid); ``tick`` from this thread."""
    done: list[Child | BaseException | None] = [None] * len(jobs)

    def work(index: int, args: Sequence[str], env: dict[str, str], log: Path) -> None:
        try:
            done[index] = run_child(args, env, log)
        except BaseException as exc:  # handed to the caller below
            done[index] = exc

    threads = [threading.Thread(target=work, args=(i, *job), daemon=True)
               for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            if tick is not None:
                tick()
            thread.join(0.25)
    if tick is not None:
        tick()
    children = []
    for outcome in done:
        if not isinstance(outcome, Child):
            raise outcome or RuntimeError("a child process was not run")
        children.append(outcome)
    return children


def database_url(admin_url: str, name: str) -> str:
    return urlunparse(urlparse(admin_url)._replace(path=f"/{name}"))


def create_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return database_url(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def leadflow_app(url: str, cache: bool = True) -> LeadflowApp:
    """An app configured as the CLI configures it (aggregate cache on unless ``cache``)."""
    settings = Settings(database_url=url) if cache else Settings(database_url=url,
                                                                   aggregate_cache_size=0)
    return LeadflowApp(env=settings.eventsourcing_env({}))


def json_log(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8", errors="replace") as stream:
        for line in stream:
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    yield json.loads(line)


def log_time(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(entry["timestamp"]).timestamp()


@dataclass
class ConsumerLog:
    """What one ``leadflow consume`` debug log says about its run (epoch-second times)."""

    assigned: list[float]  # each non-empty "partitions assigned"
    revoked: int  # "partitions revoked" (a rebalance took partitions away)
    commits: list[tuple[float, int]]  # each "batch committed": time, offsets in the batch
    caught_up: dict[str, Any]  # the "caught up; exiting" entry: the process's totals
    warnings: dict[str, int]  # warning and error events by name


def read_consumer_log(path: Path) -> ConsumerLog:
    parsed = ConsumerLog(assigned=[], revoked=0, commits=[], caught_up={}, warnings={})
    for entry in json_log(path):
        if "timestamp" not in entry:
            continue
        at = log_time(entry)
        name = entry.get("event")
        if name == "partitions assigned" and entry.get("partitions"):
            parsed.assigned.append(at)
        elif name == "partitions revoked" and entry.get("partitions"):
            parsed.revoked += 1
        elif name == "batch committed":
            parsed.commits.append(
                (at, int(entry["last_offset"]) - int(entry["first_offset"]) + 1))
        elif name == "caught up; exiting":
            parsed.caught_up = entry
        if entry.get("level") in ("warning", "error"):
            parsed.warnings[str(name)] = parsed.warnings.get(str(name), 0) + 1
    return parsed


def steady_figures(records: int, assigned: Sequence[float],
                   commits: Sequence[tuple[float, int]], spawned_at: float,
                   exited_at: float) -> dict[str, Any]:
    """Steady state from consumer logs: first partition assignment to last committed batch
    (of every process given: ``assigned`` and ``commits`` time-ordered), and where the rest
    of the wall time went."""
    if not (commits and assigned):
        return {}
    first_assigned, last_commit = assigned[0], commits[-1][0]
    steady = last_commit - first_assigned
    figures: dict[str, Any] = {
        "steady_seconds": round(steady, 3),
        "steady_records_per_s": rate(records, steady),
        # Where the wall time goes: interpreter, imports, app and group join ...
        "startup_seconds": round(first_assigned - spawned_at, 3),
        # ... then the work, then noticing it is idle and closing.
        "idle_and_exit_seconds": round(exited_at - last_commit, 3),
        "mean_records_per_batch": round(sum(n for _, n in commits) / len(commits), 1),
    }
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(commits)]
    if gaps:
        figures["batch_interval_ms"] = {"p50": round(percentile(gaps, 50) * 1000, 1),
                                        "p95": round(percentile(gaps, 95) * 1000, 1)}
    return figures


def count_rows(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def settle_postgres(admin_url: str, urls: Sequence[str], timeout_s: float = 180.0
                    ) -> dict[str, Any]:
    """Let the server finish the maintenance earlier steps left it, before a timed step:
    ``VACUUM (ANALYZE)`` of ``urls`` (databases an earlier step filled) and a ``CHECKPOINT``
    (their dirty pages written now, not by the checkpointer during the step), then wait until
    no autovacuum worker runs (at most ``timeout_s``). Measured outside the bench, the whole
    stream, two consumers right after one consumer filled another database: 112.7 s as is,
    107.2 s after the VACUUM and CHECKPOINT (1.2 s), 101-104 s when that database was gone."""
    started = time.perf_counter()
    for url in urls:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE)")
            conn.execute("CHECKPOINT")
    waited_for_workers = False
    with psycopg.connect(admin_url, autocommit=True) as conn:
        while time.perf_counter() - started < timeout_s:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity "
                               "WHERE backend_type = 'autovacuum worker'").fetchone()
            if not row or not row[0]:
                break
            waited_for_workers = True
            time.sleep(0.5)
    return {"settle_seconds": round(time.perf_counter() - started, 1),
            "settle_waited_for_autovacuum": waited_for_workers}


def postgres_cpu_seconds() -> float | None:
    """CPU time (user + system) of the PostgreSQL processes on this machine, from ``/proc``,
    counting the backends that exited (the postmaster's reaped children): the server's
    share of a step, when the bench's PostgreSQL runs here (``scripts/services``). None when
    no such process is visible (a server elsewhere, not Linux)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, found = 0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process exited meanwhile
            continue
        close = text.rfind(")")
        if text[text.find("(") + 1:close] != "postgres":
            continue
        # After the command: state, ppid, …; utime, stime, cutime, cstime are fields 14-17.
        fields = text[close + 2:].split()
        total += sum(int(f) for f in fields[11:15])
        found = True
    return round(total / tick, 2) if found else None


def machine_cpu() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot, from ``/proc/stat``; None elsewhere."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def cpu_figures(before: tuple[int, int] | None, children: Sequence[Child],
                records: int) -> dict[str, Any]:
    """What the machine's CPUs did over a step: the share of them busy (anything, not only
    leadflow), and the consumers' own CPU a record. Two consumers' throughput is bounded by
    the whole machine's CPU a record; one consumer's by its own CPU plus its waits."""
    after = machine_cpu()
    out: dict[str, Any] = {}
    if before is not None and after is not None and after[1] > before[1]:
        out["machine_busy_percent"] = round(
            100 * (after[0] - before[0]) / (after[1] - before[1]), 1)
    if records:
        out["consumer_cpu_us_per_record"] = round(
            sum(c.cpu_seconds for c in children) / records * 1e6, 1)
    return out


def server_cpu(before: float | None, records: int) -> dict[str, Any]:
    """The server's CPU over a step of ``records`` records (see postgres_cpu_seconds)."""
    after = postgres_cpu_seconds()
    if before is None or after is None or not records:
        return {}
    seconds = after - before
    return {"postgres_cpu_seconds": round(seconds, 2),
            "postgres_cpu_us_per_record": round(seconds / records * 1e6, 1)}



class BenchState:
    """What the steps share: set by ``Bench.__init__`` (run.py); each group of steps is a
    mixin of it (pipeline.py, reads.py, costs.py)."""

    args: argparse.Namespace
    services: Services
    work: Path
    tag: str
    databases: list[str]
    topics: list[str]
    results: dict[str, Any]
    stream: Path
    sample: list[InboundRecord]
    sample_now: datetime
    e2e_url: str
    pipeline: Pipeline | None
    offsets: KafkaConsumer | None

    def fresh_database(self, purpose: str) -> str:
        name = f"{self.tag}_{purpose}"
        url = create_database(self.services.postgres_url, name)
        self.databases.append(name)
        return url
