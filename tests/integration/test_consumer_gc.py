"""The consumer collects garbage between its polls' batches, never inside one (runtime.py),
on a real topic and database."""

from __future__ import annotations

import gc
import json

import pytest

from leadflow import runtime
from leadflow.config import Settings
from leadflow.consumers import clients
from leadflow.consumers.settings import KafkaSettings
from leadflow.consumers.touchpoints import TouchpointConsumer
from leadflow.engine.app import LeadflowApp
from tests.conftest import T0, Records, collections_watched, days
from tests.integration.kafka_helpers import Pipeline

pytestmark = pytest.mark.integration


def test_the_consumer_collects_between_batches_not_inside_them(
        pipe: Pipeline, rec: Records, monkeypatch: pytest.MonkeyPatch) -> None:
    pipe.create_topics(partitions=2)
    records = [rec("email_opened", f"p{n % 50}@co{n % 9}.io", at=T0 + days(n / 100))
               for n in range(400)]
    pipe.produce_raw(json.dumps(r.model_dump(mode="json", exclude_none=True)).encode()
                     for r in records)
    app = LeadflowApp(env=Settings(database_url=pipe.pg_url).eventsourcing_env({}))
    monkeypatch.setattr(runtime, "_managed", True)  # as after tune_gc, without the freeze
    settings = KafkaSettings.from_env({**pipe.env(), "LEADFLOW_KAFKA_MAX_POLL_RECORDS": "100"})
    kafka = clients.touchpoint_consumer(settings)
    producer = clients.dead_letter_producer(settings)
    try:
        with collections_watched(app, young=200) as seen:
            stats = TouchpointConsumer(app, settings, kafka, producer).run(until_idle=True)
    finally:
        kafka.close(autocommit=False)
        producer.close()
        app.close()
    assert stats.applied == 400 and stats.batches >= 4
    assert seen["inside"] == 0 and seen["outside"] > 0
    assert gc.isenabled()
