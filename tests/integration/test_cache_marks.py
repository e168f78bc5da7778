"""A writer of a shared PostgreSQL store trusts its caches only while the store proves that no
one else committed since (engine/unit.py ``CacheMarks``): the writer mark its commits leave
and the events table's notification ids. Real PostgreSQL, two real writers, and a real topic."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import pytest
from psycopg.sql import SQL, Identifier

from leadflow.config import Settings
from leadflow.consumers import clients
from leadflow.consumers.settings import KafkaSettings
from leadflow.consumers.touchpoints import ConsumeStats, TouchpointConsumer
from leadflow.contract import InboundRecord
from leadflow.engine.app import LeadflowApp
from leadflow.engine.results import BatchResult
from leadflow.metrics import ConsumerMetrics
from tests.conftest import T0, Records, days
from tests.integration.conftest import two_writers
from tests.integration.kafka_helpers import Pipeline

pytestmark = pytest.mark.integration


class Probes:
    """Counts a writer's moved-on probes (the re-reads a trusted cache skips) and its reads
    of the writer mark."""

    def __init__(self, app: LeadflowApp) -> None:
        self.calls = 0
        self.marks = 0
        recorder: Any = app.recorder
        probe: Callable[[Sequence[tuple[uuid.UUID, int]]], list[uuid.UUID]] = \
            recorder.select_moved_on
        mark: Callable[[], tuple[str | None, int | None]] = recorder.writer_mark

        def counted(versions: Sequence[tuple[uuid.UUID, int]]) -> list[uuid.UUID]:
            self.calls += 1
            return probe(versions)

        def counted_mark() -> tuple[str | None, int | None]:
            self.marks += 1
            return mark()

        recorder.select_moved_on = counted
        recorder.writer_mark = counted_mark

    def taken(self) -> int:
        calls, self.calls = self.calls, 0
        return calls

    def marks_read(self) -> int:
        marks, self.marks = self.marks, 0
        return marks


def test_a_writer_alone_trusts_its_cache_and_rereads_after_another_commits(
        pg_url: str, rec: Records) -> None:
    with two_writers(pg_url) as (app, rival):
        alone_then_rival(app, rival, rec)


def alone_then_rival(app: LeadflowApp, rival: LeadflowApp, rec: Records) -> None:
    probes = Probes(app)
    app.apply_batch([rec("form_submitted", "anna@acme.io", at=T0)])
    for day in (1, 2, 3):  # alone: every batch uses the cached lead as it is
        assert app.apply_batch([rec("email_opened", "anna@acme.io", at=T0 + days(day))]
                               ).applied == 1
    assert probes.taken() == 0
    # Another writer appends to the cached lead: the next batch probes, reads it again and
    # commits without a conflict.
    assert rival.apply_batch([rec("email_clicked", "anna@acme.io", at=T0 + days(4))]
                             ).applied == 1
    assert app.apply_batch([rec("email_opened", "anna@acme.io", at=T0 + days(5))]
                           ).applied == 1
    assert probes.taken() == 1
    assert app.lead("email:anna@acme.io").touchpoints == 6
    # Its cache may still hold what it did not re-read then: it goes on probing, without
    # reading the mark any more (nothing it says could make the cache trusted again).
    probes.marks_read()
    assert app.apply_batch([rec("email_opened", "anna@acme.io", at=T0 + days(6))]
                           ).applied == 1
    assert (probes.taken(), probes.marks_read()) == (1, 0)
    # Until the cache is emptied: then the store's marks are the process's own again.
    app.forget_cached_aggregates()
    app.apply_batch([rec("email_opened", "anna@acme.io", at=T0 + days(7))])
    app.apply_batch([rec("email_opened", "anna@acme.io", at=T0 + days(8))])
    assert (probes.taken(), probes.marks_read()) == (0, 2)
    assert app.lead("email:anna@acme.io").touchpoints == 9
    assert not app.verify(app.resolve("email:anna@acme.io")).problems


def test_a_commit_without_a_mark_and_rows_of_a_writer_that_leaves_none_are_seen(
        pg_url: str, rec: Records) -> None:
    with two_writers(pg_url) as (app, rival):
        unmarked_commits(app, rival, pg_url, rec)


def unmarked_commits(app: LeadflowApp, rival: LeadflowApp, pg_url: str, rec: Records) -> None:
    probes = Probes(app)
    app.apply_batch([rec("form_submitted", "anna@acme.io", at=T0)])
    app.apply_batch([rec("email_opened", "anna@acme.io", at=T0 + days(1))])
    assert probes.taken() == 0
    # A command commits (no unit mark of a batch: the row gets a value nobody expects).
    rival.recorder.insert_events([], timers={uuid.uuid4(): None})
    app.apply_batch([rec("email_opened", "anna@acme.io", at=T0 + days(2))])
    assert probes.taken() == 1

    app.forget_cached_aggregates()
    app.apply_batch([rec("email_opened", "anna@acme.io", at=T0 + days(3))])
    app.apply_batch([rec("email_opened", "anna@acme.io", at=T0 + days(4))])
    assert probes.taken() == 0
    # A writer of an earlier version appends a row and leaves the mark alone: the events
    # table's notification ids still give it away.
    table = Identifier("public", app.recorder.events_table_name)  # type: ignore[attr-defined]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(SQL("INSERT INTO {} (originator_id, originator_version, topic, state) "
                         "VALUES (%s, 1, 'other:Event', '\\x7b7d')").format(table),
                     (uuid.uuid4(),))
    app.apply_batch([rec("email_opened", "anna@acme.io", at=T0 + days(5))])
    assert probes.taken() == 1
    assert app.lead("email:anna@acme.io").touchpoints == 6


class RivalBetweenBatches(LeadflowApp):
    """A consumer's app after whose second batch another writer appends to Anna's lead."""

    name = "leadflow"  # the same store (eventsourcing names the tables after the app)
    rival: LeadflowApp | None = None
    batches = 0

    def apply_batch(self, records: Sequence[InboundRecord], tracking: Any = None,
                    before_commit: Callable[[BatchResult], None] | None = None,
                    owns: Callable[[str], bool] | None = None) -> BatchResult:
        result = super().apply_batch(records, tracking, before_commit, owns)
        self.batches += 1
        if self.batches == 2 and self.rival is not None:
            self.rival.apply_batch([Records()("email_clicked", "anna@acme.io",
                                              at=T0 + days(30), event_id="rival-1")])
        return result


def consume(app: LeadflowApp, pipe: Pipeline) -> ConsumeStats:
    """Run a consumer of the topic's group, five records a poll, until it is idle."""
    settings = KafkaSettings.from_env(pipe.env(LEADFLOW_KAFKA_MAX_POLL_RECORDS="5"))
    kafka = clients.touchpoint_consumer(settings)
    producer = clients.dead_letter_producer(settings)
    try:
        return TouchpointConsumer(app, settings, kafka, producer, sleep=lambda _: None,
                                  metrics=ConsumerMetrics()).run(until_idle=True)
    finally:
        kafka.close(autocommit=False)
        producer.close()


def test_a_consumer_trusts_its_cache_until_another_writer_commits(
        pipe: Pipeline, rec: Records) -> None:
    # Through a real topic: one person's twenty records are four batches on one cached
    # lead. Alone, the consumer never re-reads it; after another writer appends to the lead
    # (between its second and third batch), every later batch probes, and none conflicts.
    pipe.create_topics(partitions=1)
    pipe.produce_raw(json.dumps(r.model_dump(mode="json", exclude_none=True)).encode()
                     for r in [rec("form_submitted", "anna@acme.io", at=T0)]
                     + [rec("email_opened", "anna@acme.io", at=T0 + days(d))
                        for d in range(1, 20)])
    env = Settings(database_url=pipe.pg_url).eventsourcing_env({})
    app, rival = RivalBetweenBatches(env=dict(env)), LeadflowApp(env=dict(env))
    try:
        probes = Probes(app)
        app.rival = rival
        stats = consume(app, pipe)
        assert (stats.applied, stats.batches, stats.retries, stats.dead_lettered) == (20, 4, 0, 0)
        assert probes.taken() == 2  # the third and fourth batches; none before the rival
        assert app.lead("email:anna@acme.io").touchpoints == 21
        assert not app.verify(app.resolve("email:anna@acme.io")).problems

        # Alone again (the rival is gone, and a rebalance emptied the caches): no re-reads.
        app.rival = None
        pipe.produce_raw(json.dumps(rec("email_opened", "anna@acme.io", at=T0 + days(d))
                                    .model_dump(mode="json", exclude_none=True)).encode()
                         for d in range(31, 41))
        stats = consume(app, pipe)
        assert (stats.applied, stats.retries) == (10, 0)
        assert probes.taken() == 0
        assert app.lead("email:anna@acme.io").touchpoints == 31
    finally:
        app.close()
        rival.close()
