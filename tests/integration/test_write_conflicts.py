"""A write conflict between two consumers of a group, on a real topic and database: the
batch that meets it is applied in halves, and every record still applies exactly once."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError

from leadflow.config import Settings
from leadflow.consumers import clients
from leadflow.consumers.settings import KafkaSettings
from leadflow.consumers.touchpoints import TouchpointConsumer
from leadflow.contract import InboundRecord
from leadflow.engine.app import LeadflowApp
from leadflow.engine.results import BatchResult
from leadflow.metrics import ConsumerMetrics
from tests.conftest import T0, Records, days
from tests.integration.kafka_helpers import Pipeline, applied_event_ids
from tests.integration.services import Services

pytestmark = pytest.mark.integration


class RacingApp(LeadflowApp):
    """A writer whose first batch meets another writer's commit: after it decided and
    before it commits, ``rival`` applies ``rival_records`` (as a second consumer would)."""

    name = "leadflow"  # the same store (eventsourcing names the tables after the app)
    rival: LeadflowApp | None = None
    rival_records: Sequence[InboundRecord] = ()

    def apply_batch(self, records: Sequence[InboundRecord], tracking: Any = None,
                    before_commit: Callable[[BatchResult], None] | None = None,
                    owns: Callable[[str], bool] | None = None) -> BatchResult:
        rival, self.rival = self.rival, None
        if rival is None:
            return super().apply_batch(records, tracking, before_commit, owns)

        def race(result: BatchResult) -> None:
            rival.apply_batch(list(self.rival_records))
            if before_commit is not None:
                before_commit(result)

        return super().apply_batch(records, tracking, race, owns)


@pytest.fixture
def pipe(services: Services, pg_url: str, topic_prefix: str) -> Iterator[Pipeline]:
    pipeline = Pipeline(services, pg_url, topic_prefix)
    pipeline.create_topics(partitions=1)
    yield pipeline
    pipeline.close()


def test_a_batch_that_meets_a_write_conflict_is_applied_in_halves_exactly_once(
        pipe: Pipeline, rec: Records) -> None:
    # Eight people on the topic; the sixth is reached by a phone that another writer
    # registers, for another record of that person, while this batch is being decided.
    people = [rec("email_opened", f"p{i}@co{i}.io", at=T0 + days(1)) for i in range(8)]
    people[5] = rec("email_opened", None, at=T0 + days(1),
                    lead={"phone": "+14155550100", "external_id": "crm-5"})
    rival_record = rec("form_submitted", "anna@acme.io", lead={"phone": "+14155550100"})
    pipe.produce_raw(json.dumps(r.model_dump(mode="json", exclude_none=True)).encode()
                     for r in people)
    env = Settings(database_url=pipe.pg_url).eventsourcing_env({})
    app, rival = RacingApp(env=dict(env)), LeadflowApp(env=dict(env))
    app.rival, app.rival_records = rival, [rival_record]
    settings = KafkaSettings.from_env(pipe.env())
    kafka = clients.touchpoint_consumer(settings)
    producer = clients.dead_letter_producer(settings)
    metrics = ConsumerMetrics()
    try:
        stats = TouchpointConsumer(app, settings, kafka, producer, sleep=lambda _: None,
                                   metrics=metrics).run(until_idle=True)
    finally:
        kafka.close(autocommit=False)
        producer.close()
    assert stats.splits >= 1 and stats.applied == 8 and stats.dead_lettered == 0
    # The metrics say so too: each conflict is one retry of its batch (in halves here).
    value = metrics.registry.get_sample_value
    conflicts = value("leadflow_consumer_write_conflicts_total")
    assert conflicts == value("leadflow_consumer_batch_retries_total",
                              {"cause": "write_conflict"}) >= stats.splits
    assert value("leadflow_consumer_batch_retries_total", {"cause": "infrastructure"}) == 0
    assert value("leadflow_consumer_records_total", {"outcome": "applied"}) == 8
    ids = applied_event_ids(app)
    assert sorted(ids) == sorted([r.event_id for r in people] + [rival_record.event_id])
    # The phone's record landed on the rival's lead, with its CRM id: one person, one lead.
    anna = app.lead("email:anna@acme.io")
    assert app.lead("external_id:crm-5").lead_id == anna.lead_id
    assert anna.touchpoints == 2
    app.close()
    rival.close()


def test_a_write_conflict_forgets_only_what_the_failed_batch_touched(
        pg_url: str, rec: Records) -> None:
    # A writer's cache holds two leads; while its next batch is being decided, another
    # writer appends to one of them. The commit fails: that lead (and its identity rows) is
    # forgotten and read again on the retry, while the untouched lead stays cached. Wiping
    # the whole cache on every conflict made two consumers reload their working sets.
    env = Settings(database_url=pg_url).eventsourcing_env({})
    app, rival = RacingApp(env=dict(env)), LeadflowApp(env=dict(env))
    try:
        app.apply_batch([rec("form_submitted", "anna@acme.io", at=T0),
                         rec("form_submitted", "bob@beta.io", at=T0)])
        anna, bob = app.resolve("email:anna@acme.io"), app.resolve("email:bob@beta.io")
        cache = app.repository.cache
        assert cache is not None and anna in cache and bob in cache
        cached_bob = cache.get(bob)
        app.rival = rival
        app.rival_records = [rec("email_opened", "anna@acme.io", at=T0 + days(1))]
        late = [rec("email_clicked", "anna@acme.io", at=T0 + days(2))]
        with pytest.raises(IntegrityError):
            app.apply_batch(late)
        assert anna not in cache and "email:anna@acme.io" not in app.directory.cache
        assert bob in cache and cache.get(bob) is cached_bob
        assert app.apply_batch(late).applied == 1
        # The retry read the rival's touchpoint: all three on one lead, the chain intact.
        assert app.lead("email:anna@acme.io").touchpoints == 3
        assert app.lead("email:bob@beta.io").touchpoints == 1
        assert not app.verify(anna).problems
    finally:
        app.close()
        rival.close()


def test_a_batch_rereads_what_another_writer_changed_since_it_was_cached(
        pg_url: str, rec: Records) -> None:
    # Two writers of one store, as two consumers of a group: the first caches a lead and an
    # anonymous visitor's interest; the second appends to the lead and links the visitor's
    # cookie to it (absorbing the interest). The first writer's next batch must see both:
    # no write conflict for the lead, and the cookie's next visit queued for the lead, not
    # left on the interest the cookie no longer points at (a stale identity row would put it
    # there, silently: the interest gets no event when absorbed, so no conflict would
    # reveal it). The visit is not written on the lead by this writer (the lead's records
    # are another partition's): the lead takes it up (test_cookie_races.py).
    env = Settings(database_url=pg_url).eventsourcing_env({})
    app, rival = LeadflowApp(env=dict(env)), LeadflowApp(env=dict(env))
    assert app.shared_store
    cookie = {"anonymous_id": "cookie-7"}
    try:
        app.apply_batch([rec("form_submitted", "anna@acme.io", at=T0),
                         rec("page_viewed", None, at=T0, lead=cookie)])
        rival.apply_batch([
            rec("email_opened", "anna@acme.io", at=T0 + days(1)),
            rec("form_submitted", "carl@gamma.io", at=T0 + days(1), lead=cookie),
        ])
        # The visit first, alone: nothing in its batch is a stale lead, only the cookie's row.
        # This writer's partitions hold the cookie's key, not Carl's company's.
        assert app.apply_batch([rec("page_viewed", None, at=T0 + days(2), lead=cookie)],
                               owns=lambda key: key != "domain:gamma.io").applied == 1
        assert app.settle_absorptions() == 1
        # Carl's lead: his form, the absorbed visit and the visit after the link.
        carl = app.lead("email:carl@gamma.io")
        assert carl.touchpoints == 3
        assert app.lead("anonymous_id:cookie-7").lead_id == carl.lead_id
        assert not app.verify(carl.lead_id).problems
        # Anna's lead, appended to by the rival since this writer cached it: no conflict.
        assert app.apply_batch([rec("email_clicked", "anna@acme.io", at=T0 + days(2))]
                               ).applied == 1
        assert app.lead("email:anna@acme.io").touchpoints == 3
    finally:
        app.close()
        rival.close()
