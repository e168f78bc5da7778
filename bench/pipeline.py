"""The bench's stream and end-to-end steps: generate, publish, the Kafka ceiling, one and two
consumers."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import (
    PARTITIONS,
    BenchState,
    count_rows,
    cpu_figures,
    database_url,
    leadflow_app,
    machine_cpu,
    postgres_cpu_seconds,
    progress,
    rate,
    read_consumer_log,
    run_child,
    run_children,
    server_cpu,
    settle_postgres,
    steady_figures,
)
from cost_child import parse_lines, read_lines
from kafka import KafkaConsumer, TopicPartition
from tests.integration.kafka_helpers import LEADFLOW, Pipeline

from leadflow.generator import generate

FLOOR = Path(__file__).resolve().with_name("floor.py")


class PipelineSteps(BenchState):
    """Steps 0 and 1 (see run.py's docstring)."""

    # ---------------------------------------------------------------- 0. the stream

    def generate(self) -> None:
        a = self.args
        hint = round(a.leads * 10)
        count = 0
        begin = time.perf_counter()
        with progress() as bar, self.stream.open("w", encoding="utf-8") as sink:
            task = bar.add_task("generate", total=hint)
            for line in generate(leads=a.leads, days=a.days, seed=a.seed):
                sink.write(line + "\n")
                count += 1
                if count % 10_000 == 0:
                    bar.update(task, completed=count, total=max(hint, count))
            bar.update(task, completed=count, total=count)
        self.results["stream"] = {
            "records": count, "leads": a.leads, "days": a.days, "seed": a.seed,
            "bytes": self.stream.stat().st_size,
            "generate_seconds": round(time.perf_counter() - begin, 2),
        }
        # The sample for the in-process baselines: the first records, validated once.
        self.sample_now = now = datetime.now(UTC)
        self.sample = parse_lines(read_lines(self.stream, a.naive_records), now)

    # ---------------------------------------------------------------- 1. end to end

    def publish(self) -> None:
        self.e2e_url = self.fresh_database("e2e")
        self.pipeline = pipe = Pipeline(self.services, self.e2e_url, self.tag)
        pipe.create_topics(PARTITIONS)
        self.topics += [pipe.topic, pipe.dlq, pipe.lifecycle]
        init = run_child([*LEADFLOW, "db", "init"], pipe.env(), self.work / "db-init.log")
        init.check("leadflow db init")
        records = self.results["stream"]["records"]
        with progress() as bar:
            task = bar.add_task("publish", total=records)
            sent = [0]

            def tick() -> None:
                bar.update(task, completed=self._topic_size(pipe.topic, sent))

            child = run_child([*LEADFLOW, "publish", str(self.stream)], pipe.env(),
                              self.work / "publish.log", tick=tick)
            bar.update(task, total=sent[0])  # invalid lines are not published
        child.check("leadflow publish")
        # "N lines: S published to TOPIC, R rejected"
        found = re.search(r"(\d+) lines: (\d+) published to \S+, (\d+) rejected",
                          child.stdout)
        if found is None:
            raise RuntimeError(f"unexpected publish output: {child.stdout!r}")
        lines, sent_n, rejected = (int(g) for g in found.groups())
        self.results["publish"] = {
            "lines": lines, "sent": sent_n, "rejected_invalid": rejected,
            "seconds": round(child.seconds, 3), "lines_per_s": rate(lines, child.seconds),
            "sent_per_s": rate(sent_n, child.seconds), "peak_rss_mib": child.peak_rss_mib,
            "how": "leadflow publish subprocess: validate each line, key by identity, "
                   "produce with acks=all; timed from process start to exit",
        }

    def _topic_size(self, topic: str, cache: list[int]) -> int:
        # Cheap enough at 4 Hz: one end-offsets request.
        with contextlib.suppress(Exception):
            if self.offsets is None:
                self.offsets = KafkaConsumer(bootstrap_servers=self.services.kafka_bootstrap,
                                             enable_auto_commit=False)
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            cache[0] = sum(self.offsets.end_offsets(tps).values())
        return cache[0]

    def ceiling(self) -> None:
        assert self.pipeline is not None
        topic = self.pipeline.topic
        consumer = KafkaConsumer(bootstrap_servers=self.services.kafka_bootstrap,
                                 enable_auto_commit=False, max_poll_records=2000,
                                 fetch_max_wait_ms=200, client_id="leadflow-bench-ceiling")
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps)
            total = sum(ends.values())
            count = 0
            decoded = 0
            with progress() as bar:
                task = bar.add_task("ceiling (raw kafka-python)", total=total)
                begin = time.perf_counter()
                deadline = begin + 600
                while count < total:
                    if time.perf_counter() > deadline:
                        raise TimeoutError(f"read {count} of {total} records in 600 s")
                    for batch in consumer.poll(timeout_ms=500, max_records=2000).values():
                        for record in batch:
                            json.loads(record.value)
                            decoded += 1
                        count += len(batch)
                    bar.update(task, completed=count)
                seconds = time.perf_counter() - begin
        finally:
            consumer.close()
        self.results["ceiling"] = {
            "records": count, "seconds": round(seconds, 3),
            "records_per_s": rate(count, seconds), "decoder": "json.loads (as parse_record)",
            "how": "in-process kafka-python consumer, assign + seek_to_beginning on all "
                   f"{PARTITIONS} partitions, max_poll_records=2000, fetch_max_wait_ms=200; "
                   "timed from the first poll to the last record",
        }

    @contextlib.contextmanager
    def _consume_progress(self, url: str, label: str) -> Iterator[Callable[[], None]]:
        """A progress bar of the records the tracking positions in ``url`` cover."""
        pipe = self.pipeline
        assert pipe is not None
        watcher = leadflow_app(url, cache=False)
        done = [0]

        def tick() -> None:
            with contextlib.suppress(Exception):
                done[0] = sum(
                    (pos + 1) for p in range(PARTITIONS)
                    if (pos := watcher.process_recorder.max_tracking_id(f"{pipe.topic}:{p}"))
                    is not None)
            bar.update(task, completed=done[0])

        try:
            with progress() as bar:
                task = bar.add_task(label, total=self.results["publish"]["sent"])
                yield tick
        finally:
            watcher.close()

    def consume(self) -> None:
        pipe = self.pipeline
        assert pipe is not None
        log = self.work / "consume.log"
        settled = settle_postgres(self.services.postgres_url, [])  # as for two consumers
        server, machine = postgres_cpu_seconds(), machine_cpu()
        with self._consume_progress(self.e2e_url, "consume --until-idle") as tick:
            child = run_child([*LEADFLOW, "consume", "--until-idle"],
                              pipe.env(LEADFLOW_LOG_LEVEL="DEBUG"), log, tick=tick)
        child.check("leadflow consume --until-idle")
        parsed = read_consumer_log(log)
        caught_up = parsed.caught_up
        records = int(caught_up.get("records", self.results["publish"]["sent"]))
        figures: dict[str, Any] = {
            "records": records, "applied": caught_up.get("applied"),
            "duplicates": caught_up.get("duplicates"),
            "dead_lettered": caught_up.get("dead_lettered"),
            "retries": caught_up.get("retries"), "batches": caught_up.get("batches"),
            "partitions": PARTITIONS, "wall_seconds": round(child.seconds, 3),
            "records_per_s": rate(records, child.seconds),
            "peak_rss_mib": child.peak_rss_mib, "warnings": parsed.warnings,
            "how": "leadflow consume --until-idle subprocess on a fresh database, stream "
                   "published beforehand; wall = process start to exit; steady = first "
                   "'partitions assigned' to last 'batch committed' (debug log)",
        }
        figures.update(steady_figures(records, parsed.assigned, parsed.commits,
                                      child.spawned_at, child.exited_at))
        if parsed.assigned:
            figures["rebalances"] = len(parsed.assigned)
        figures.update(server_cpu(server, records))
        figures.update(cpu_figures(machine, [child], records))
        figures.update(settled)
        self.results["e2e"] = figures

    def consume_parallel(self) -> None:
        """Two ``consume --until-idle`` processes in one new group, same topic, fresh store.

        ``--until-idle`` exits once a poll returns nothing and every partition the process
        holds is at its end offset; a process without partitions keeps polling. So a member
        may catch up on its share and leave, and the other then takes the rest after the
        rebalance: wall is the first spawn to the last exit, steady the first assignment of
        either to the last committed batch of either.
        """
        pipe = self.pipeline
        assert pipe is not None
        url = self.fresh_database("parallel")
        # A group of its own: no committed offsets, and the tracking positions of a fresh
        # database say "from the beginning" for every partition.
        env = pipe.env(LEADFLOW_DATABASE_URL=url, LEADFLOW_LOG_LEVEL="DEBUG",
                       LEADFLOW_KAFKA_GROUP=f"{self.tag}-parallel-group")
        # Tables first, as `publish` does for the single consumer (not timed).
        run_child([*LEADFLOW, "db", "init"], env, self.work / "db-init-parallel.log").check(
            "leadflow db init (parallel)")
        consumers = 2
        logs = [self.work / f"consume-parallel-{n}.log" for n in range(1, consumers + 1)]
        # Not timed: the one-consumer step's store is vacuumed, and autovacuum let finish,
        # so this step's server CPU and wall are its own.
        settled = settle_postgres(self.services.postgres_url, [self.e2e_url])
        server, machine = postgres_cpu_seconds(), machine_cpu()
        with self._consume_progress(url, f"consume --until-idle x{consumers}") as tick:
            children = run_children(
                [([*LEADFLOW, "consume", "--until-idle"], env, log) for log in logs], tick)
        for n, child in enumerate(children, 1):
            child.check(f"leadflow consume --until-idle (parallel, child {n})", ok=(0,))
        parsed = [read_consumer_log(log) for log in logs]
        sent = self.results["publish"]["sent"]
        records = (sum(int(p.caught_up["records"]) for p in parsed)
                   if all("records" in p.caught_up for p in parsed) else sent)
        server_figures = server_cpu(server, records)  # before this step's own queries
        server_figures.update(cpu_figures(machine, children, records))

        def total(key: str) -> int | None:
            values = [p.caught_up.get(key) for p in parsed]
            return None if None in values else sum(int(v) for v in values if v is not None)

        spawned = min(c.spawned_at for c in children)
        exited = max(c.exited_at for c in children)
        wall = exited - spawned
        warnings: dict[str, int] = {}
        for p in parsed:
            for name, n in p.warnings.items():
                warnings[name] = warnings.get(name, 0) + n
        stored = count_rows(url, "leadflow_record_ids")
        stored_single = count_rows(self.e2e_url, "leadflow_record_ids")
        figures: dict[str, Any] = {
            "consumers": consumers, "records": records, "applied": total("applied"),
            "duplicates": total("duplicates"), "dead_lettered": total("dead_lettered"),
            "retries": total("retries"), "batches": total("batches"),
            "skipped_batches": total("skipped_batches"),
            "partitions": PARTITIONS, "wall_seconds": round(wall, 3),
            "records_per_s": rate(records, wall),
            "peak_rss_mib": [c.peak_rss_mib for c in children],
            "stored_record_ids": stored, "stored_record_ids_single": stored_single,
            "rebalances": sum(len(p.assigned) for p in parsed), "warnings": warnings,
            "children": [{
                "records": p.caught_up.get("records"), "applied": p.caught_up.get("applied"),
                "retries": p.caught_up.get("retries"), "batches": p.caught_up.get("batches"),
                "assignments": len(p.assigned), "revocations": p.revoked,
                "started_s": round(c.spawned_at - spawned, 3),
                "first_assigned_s": round(p.assigned[0] - spawned, 3) if p.assigned else None,
                "exited_s": round(c.exited_at - spawned, 3),
            } for p, c in zip(parsed, children, strict=True)],
            "how": f"{consumers} leadflow consume --until-idle subprocesses started together "
                   "in one new consumer group on the same topic, into a fresh database, once "
                   "the one-consumer store is vacuumed and autovacuum idle (not timed); "
                   "wall = first spawn to last exit; steady = first 'partitions assigned' of "
                   "either to the last 'batch committed' of either (debug logs); records = "
                   "sum of both processes' totals",
        }
        figures.update(steady_figures(
            records, sorted(at for p in parsed for at in p.assigned),
            sorted(commit for p in parsed for commit in p.commits), spawned, exited))
        figures.update(server_figures)
        figures.update(settled)
        self.results["e2e_parallel"] = figures
        if stored != stored_single:
            raise RuntimeError(
                f"applied records differ: {stored} in the two-consumer store, {stored_single} "
                "in the single-consumer store (leadflow_record_ids)")

    # ---------------------------------------------------------------- 1b. the floor

    def floor(self) -> None:
        """``bench/floor.py`` (see its doc): a lean consumer on the real store, contract and
        security, one process and then two in one group, each into a fresh database with a
        group of its own, the server settled first: how fast a consumer can be here if the
        engine's decision layer were nearly free. Then the same with the engine's ``Lead``
        aggregates and codec (``--aggregates``): what an engine on the library's aggregates
        pays before it decides anything. Not targets; the gaps to ``e2e`` are."""
        # Every store so far is vacuumed (the two consumers' was written last), once.
        previous = [database_url(self.services.postgres_url, name) for name in self.databases]
        for key, flags, what in (
                ("floor", [], "a nearly free decision layer"),
                ("floor_aggregates", ["--aggregates"],
                 "the engine's Lead aggregates and codec, scoring and nothing else decided")):
            out: dict[str, Any] = {}
            for processes in (1, 2):
                label = "one" if processes == 1 else "two"
                out[label], previous = self._floor_run(key, flags, processes, previous)
            command = " ".join(["bench/floor.py", *flags])
            out["how"] = (f"{command} subprocesses (first spawn to last exit), one and then "
                          "two in one new group on the same topic, each "
                          "into a fresh database; the engine's store, contract, identity, "
                          f"dedupe, sealing and chain; {what} (see bench/floor.py)")
            self.results[key] = out

    def _floor_run(self, key: str, flags: list[str], processes: int, previous: list[str]
                   ) -> tuple[dict[str, Any], list[str]]:
        """One run of ``bench/floor.py FLAGS`` in ``processes`` processes into a fresh
        database, the stores in ``previous`` settled first: its figures, and its store."""
        pipe = self.pipeline
        assert pipe is not None
        label = "one" if processes == 1 else "two"
        url = self.fresh_database(f"{key}_{label}")
        env = pipe.env(LEADFLOW_DATABASE_URL=url, LEADFLOW_LOG_LEVEL="WARNING",
                       LEADFLOW_KAFKA_GROUP=f"{self.tag}-{key}-{label}")
        env.pop("LEADFLOW_KAFKA_INSTANCE_ID", None)  # two members: no shared static id
        run_child([*LEADFLOW, "db", "init"], env, self.work / f"db-init-{key}-{label}.log"
                  ).check(f"leadflow db init ({key}, {label})")
        settled = settle_postgres(self.services.postgres_url, previous)
        server, machine = postgres_cpu_seconds(), machine_cpu()
        logs = [self.work / f"{key}-{label}-{n}.log" for n in range(1, processes + 1)]
        with self._consume_progress(url, f"{key} x{processes}") as tick:
            children = run_children([([sys.executable, str(FLOOR), *flags], env, log)
                                     for log in logs], tick)
        for n, child in enumerate(children, 1):
            child.check(f"{' '.join(['bench/floor.py', *flags])} ({label}, child {n})", ok=(0,))
        reports = [json.loads(child.stdout.strip().splitlines()[-1]) for child in children]
        records = sum(int(r["records"]) for r in reports)
        wall = (max(c.exited_at for c in children) - min(c.spawned_at for c in children))
        figures: dict[str, Any] = {
            "processes": processes, "records": records,
            "rows": sum(int(r["rows"]) for r in reports),
            "conflicts": sum(int(r["conflicts"]) for r in reports),
            "loads": sum(int(r["loads"]) for r in reports),
            "wall_seconds": round(wall, 3), "records_per_s": rate(records, wall),
            "children": reports,
        }
        figures.update(server_cpu(server, records))
        figures.update(cpu_figures(machine, children, records))
        figures.update(settled)
        return figures, [url]
