"""Named scoring models on the production path: their threshold crossings reach the real
lifecycle topic as ``lead.score_threshold_crossed``, each once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from leadflow.config import Settings
from leadflow.contract.lifecycle import LifecycleEvent
from leadflow.domain.rules import default_rules_text
from leadflow.engine.app import LeadflowApp
from tests.conftest import T0, Records, days
from tests.integration.kafka_helpers import Pipeline
from tests.unit.test_scoring_models import MODELS, models_rules, stream


def test_the_relay_publishes_model_threshold_crossings(pipe: Pipeline, tmp_path: Path) -> None:
    pipe.create_topics(partitions=1)
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(default_rules_text() + MODELS)
    settings = Settings(database_url=pipe.pg_url, aggregate_cache_size=0)
    app = LeadflowApp(env=settings.eventsourcing_env({}), rules=models_rules())
    try:
        app.apply_batch(stream(Records()))
        app.advance_clock(T0 + days(40))
        lead_id = app.lead("email:anna@acme.io").lead_id
    finally:
        app.close()
    done = pipe.run("relay", "--until-idle", LEADFLOW_RULES=str(rules_file))
    assert done.returncode == 0, done.stderr[-3000:]
    events = [LifecycleEvent.model_validate_json(m.value) for m in pipe.read_all(pipe.lifecycle)]
    assert max(Counter(e.event_id for e in events).values()) == 1
    crossed = [e for e in events if e.type == "lead.score_threshold_crossed"]
    assert [(e.model, e.direction, e.threshold) for e in crossed] == [
        ("product-b", "up", 20.0), ("emea", "up", 30.0),
        ("product-b", "down", 20.0), ("emea", "down", 30.0)]
    assert all(e.lead_id == lead_id for e in crossed)
    assert crossed[1].occurred_at == T0 + days(3) and crossed[3].occurred_at == T0 + days(10)
