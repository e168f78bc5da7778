"""The HTTP intake when what is behind it fails: a 503 the client retries, never a 500, and
/readyz says why; a broker that cannot be reached stops `serve` at start in one line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest

from leadflow.config import Settings
from leadflow.domain.rules import default_rules
from leadflow.engine.app import LeadflowApp
from leadflow.intake.http import IntakeConfig, create_app
from leadflow.intake.sinks import EngineSink
from tests.conftest import clean_env
from tests.intake_server import LEADFLOW, ASGIClient, free_port
from tests.integration.services import Services

pytestmark = pytest.mark.integration


def record(event_id: str) -> dict[str, object]:
    return {"event_id": event_id, "type": "email_opened", "occurred_at": "2026-03-02T09:00:00Z",
            "lead": {"email": "f@acme.io"}}


def test_a_store_that_goes_away_gets_503_with_retry_after_and_readyz_says_why(
        services: Services, pg_url: str) -> None:
    settings = Settings(database_url=pg_url, aggregate_cache_size=0)
    app = LeadflowApp(env=settings.eventsourcing_env({}))
    sink = EngineSink(app, ready_timeout=60)
    client = ASGIClient(create_app(IntakeConfig(sink=sink, mapping=default_rules().segment,
                                                tokens=None, ready_timeout=60)))
    assert client.post("/v1/records", json=record("f1")).json()["accepted"] == 1
    name = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(services.postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    failed = client.post("/v1/records", json=record("f2"))
    assert failed.status_code == 503
    assert failed.json()["error"]["code"] == "unavailable"
    assert failed.headers["retry-after"] == "5"
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable" and "store" in ready.json()["reason"]
    assert client.get("/healthz").status_code == 200  # the process itself is alive


def test_serve_stops_at_start_in_one_line_when_kafka_cannot_be_reached(tmp_path: Path) -> None:
    env = clean_env()
    env.update({"LEADFLOW_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
                "LEADFLOW_INTAKE_TOKENS": "t", "LEADFLOW_LOG_FORMAT": "json",
                "LEADFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'unused.db'}"})
    result = subprocess.run([*LEADFLOW, "serve", "--port", str(free_port())], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert "Kafka is not reachable" in result.stderr
    assert "Traceback" not in result.stderr
