"""Helpers for tests that run the real `leadflow` processes against Kafka and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from leadflow.config import Settings
from leadflow.contract import InboundRecord, RecordRejected, parse_record
from leadflow.engine.app import LeadflowApp
from tests.conftest import clean_env
from tests.integration.services import Services

LEADFLOW = [sys.executable, "-m", "leadflow.cli"]


@dataclass
class Pipeline:
    """Names and environment for one test's topics and database."""

    services: Services
    pg_url: str
    prefix: str
    _reader: LeadflowApp | None = field(default=None, init=False, repr=False)
    # Every app ``app()`` made, closed at teardown: a test that drops one would leave its
    # connection pool to the garbage collector, which may run in one of that pool's own
    # threads ("cannot join current thread", an exception ignored in ``__del__``).
    _apps: list[LeadflowApp] = field(default_factory=list, init=False, repr=False)

    @property
    def topic(self) -> str:
        return f"{self.prefix}.touchpoints"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.touchpoints.dlq"

    @property
    def lifecycle(self) -> str:
        return f"{self.prefix}.lifecycle"

    def env(self, **extra: str) -> dict[str, str]:
        env = clean_env()
        env.update({
            "LEADFLOW_DATABASE_URL": self.pg_url,
            "LEADFLOW_KAFKA_BOOTSTRAP": self.services.kafka_bootstrap,
            "LEADFLOW_KAFKA_TOPIC": self.topic,
            "LEADFLOW_KAFKA_DLQ_TOPIC": self.dlq,
            "LEADFLOW_KAFKA_LIFECYCLE_TOPIC": self.lifecycle,
            "LEADFLOW_KAFKA_GROUP": f"{self.prefix}-group",
            "LEADFLOW_LOG_FORMAT": "json",
            "LEADFLOW_KAFKA_RETRY_BACKOFF_SECONDS": "0.2",
            # Archived streams are dated in the past; a test of the skew check sets its own.
            "LEADFLOW_MAX_FUTURE_SKEW_SECONDS": "300",
        })
        env.update(extra)
        return env

    def run(self, *args: str, timeout: float = 600,
            **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*LEADFLOW, *args], capture_output=True, text=True,
                              env=self.env(**extra), timeout=timeout, check=False)

    def start(self, *args: str, log: Path, **extra: str) -> subprocess.Popen[bytes]:
        handle = log.open("ab")
        return subprocess.Popen([*LEADFLOW, *args], stdout=handle, stderr=subprocess.STDOUT,
                                env=self.env(**extra))

    def create_topics(self, partitions: int) -> None:
        admin = KafkaAdminClient(bootstrap_servers=self.services.kafka_bootstrap)
        try:
            admin.create_topics([NewTopic(t, partitions, 1)
                                 for t in (self.topic, self.dlq, self.lifecycle)])
        finally:
            admin.close()

    def app(self) -> LeadflowApp:
        settings = Settings(database_url=self.pg_url, aggregate_cache_size=0)
        app = LeadflowApp(env=settings.eventsourcing_env({}))
        self._apps.append(app)
        return app

    def produce_raw(self, values: Iterable[bytes], key: bytes | None = None) -> None:
        producer = KafkaProducer(bootstrap_servers=self.services.kafka_bootstrap, acks="all")
        for value in values:
            producer.send(self.topic, key=key, value=value)
        producer.flush()
        producer.close()

    def read_all(self, topic: str, timeout_s: float = 30) -> list[Any]:
        consumer = KafkaConsumer(bootstrap_servers=self.services.kafka_bootstrap,
                                 enable_auto_commit=False)
        try:
            partitions = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in partitions]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps)
            out: list[Any] = []
            deadline = time.monotonic() + timeout_s
            while any(consumer.position(tp) < ends[tp] for tp in tps):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read {topic} to its end")
                for batch in consumer.poll(timeout_ms=500).values():
                    out.extend(batch)
            return out
        finally:
            consumer.close()

    def tracked_total(self, partitions: int) -> int:
        """Records covered by tracking positions (sum over partitions of offset + 1)."""
        # One reader for all the polls: opening an app ten times a second is start-up work
        # (DDL included) competing with the consumer being watched.
        if self._reader is None:
            self._reader = self.app()
        total = 0
        for p in range(partitions):
            pos = self._reader.process_recorder.max_tracking_id(f"{self.topic}:{p}")
            total += 0 if pos is None else pos + 1
        return total

    def close(self) -> None:
        self._reader = None  # one of self._apps
        while self._apps:
            self._apps.pop().close()


def valid_records(lines: Iterable[str]) -> list[InboundRecord]:
    """The records the consumer accepts (with its clock-skew check against the wall clock)."""
    now = datetime.now(UTC)
    out = []
    for line in lines:
        try:
            out.append(parse_record(line, now=now))
        except RecordRejected:
            continue
    return out


def reference_app(records: list[InboundRecord]) -> LeadflowApp:
    app = LeadflowApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    for i in range(0, len(records), 500):
        app.apply_batch(records[i:i + 500])
    return app


def lead_states(app: LeadflowApp, at: datetime) -> dict[str, dict[str, Any]]:
    return {str(i): app.lead(i, at=at).to_json() for i in app.lead_ids()}


def applied_event_ids(app: LeadflowApp) -> list[str]:
    """Every inbound event id recorded on a lead or an interest (duplicates included), from
    the stored rows, envelopes (one row per record) opened."""
    ids: list[str] = []
    start = 1
    topics, kinds = _record_topics()
    expand = app.codec.expander.expand
    while True:
        page = app.recorder.select_notifications(start, 1000, topics=topics)
        if not page:
            return ids
        for n in page:
            ids += [e.event_id for e in expand(n) if isinstance(e, kinds)]
        start = page[-1].id + 1


def _record_topics() -> tuple[list[str], tuple[type, ...]]:
    from eventsourcing.utils import get_topic

    from leadflow.domain import Interest, Lead
    from leadflow.store.fold import envelope_topics

    kinds = (Lead.TouchpointScored, Lead.DispositionRecorded,
             Interest.TouchpointNoted)  # type: ignore[attr-defined]
    topics = [get_topic(k) for k in kinds]
    envelopes = {t for topic in topics for t in envelope_topics(topic.rsplit(".", 1)[0])}
    return topics + sorted(envelopes), kinds


def wait_until(predicate: Any, timeout_s: float, what: str, interval: float = 0.5,
               watch: Sequence[tuple[subprocess.Popen[bytes], Path]] = ()) -> None:
    """Poll ``predicate``; fail as soon as a watched process (with its log) exits.

    Either failure quotes the end of the logs, so a CI run says why, not only that it waited.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        for process, log in watch:
            if process.poll() is not None:
                raise AssertionError(f"a process exited with {process.returncode} while "
                                     f"waiting for {what}; {log.name} ends:\n{log_tail(log)}")
        time.sleep(interval)
    tails = "".join(f"; {log.name} ends:\n{log_tail(log)}" for _, log in watch)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}{tails}")


def log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
