"""The consumer collects garbage between its polls' batches, never inside one (runtime.py),
on a real topic and database."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from typing import Any

import pytest

from leadflow import runtime
from leadflow.config import Settings
from leadflow.consumers import clients
from leadflow.consumers.settings import KafkaSettings
from leadflow.consumers.touchpoints import TouchpointConsumer
from leadflow.engine.app import LeadflowApp
from tests.conftest import T0, Records, days
from tests.integration.kafka_helpers import Pipeline
from tests.integration.services import Services

pytestmark = pytest.mark.integration


@pytest.fixture
def pipe(services: Services, pg_url: str, topic_prefix: str) -> Iterator[Pipeline]:
    pipeline = Pipeline(services, pg_url, topic_prefix)
    pipeline.create_topics(partitions=2)
    yield pipeline
    pipeline.close()


def test_the_consumer_collects_between_batches_not_inside_them(
        pipe: Pipeline, rec: Records, monkeypatch: pytest.MonkeyPatch) -> None:
    records = [rec("email_opened", f"p{n % 50}@co{n % 9}.io", at=T0 + days(n / 100))
               for n in range(400)]
    pipe.produce_raw(json.dumps(r.model_dump(mode="json", exclude_none=True)).encode()
                     for r in records)
    app = LeadflowApp(env=Settings(database_url=pipe.pg_url).eventsourcing_env({}))
    inside = [False]
    seen = {"inside": 0, "outside": 0}
    apply_batch = app.apply_batch

    def watched(*args: Any, **kwargs: Any) -> Any:
        inside[0] = True
        try:
            return apply_batch(*args, **kwargs)
        finally:
            inside[0] = False

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen["inside" if inside[0] else "outside"] += 1

    monkeypatch.setattr(app, "apply_batch", watched)
    monkeypatch.setattr(runtime, "_managed", True)  # as after tune_gc, without the freeze
    settings = KafkaSettings.from_env({**pipe.env(), "LEADFLOW_KAFKA_MAX_POLL_RECORDS": "100"})
    kafka = clients.touchpoint_consumer(settings)
    producer = clients.dead_letter_producer(settings)
    thresholds = gc.get_threshold()
    gc.set_threshold(200, 10, 10)  # small enough that a batch would trigger collections
    gc.callbacks.append(callback)
    try:
        stats = TouchpointConsumer(app, settings, kafka, producer).run(until_idle=True)
    finally:
        gc.callbacks.remove(callback)
        gc.set_threshold(*thresholds)
        kafka.close(autocommit=False)
        producer.close()
        app.close()
    assert stats.applied == 400 and stats.batches >= 4
    assert seen["inside"] == 0 and seen["outside"] > 0
    assert gc.isenabled()
