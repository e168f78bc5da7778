"""Fixtures for tests against real Kafka and PostgreSQL (see services.py for where from)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import psycopg
import pytest

from leadflow.config import Settings
from leadflow.engine.app import LeadflowApp
from leadflow.engine.results import BatchResult
from tests.integration.kafka_helpers import Pipeline
from tests.integration.services import Services, ServicesUnavailableError, provide_services


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    try:
        with provide_services() as provided:
            yield provided
    except ServicesUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def pg_url(services: Services) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    name = f"lf_{uuid.uuid4().hex[:12]}"
    admin = services.postgres_url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parsed = urlparse(admin)
    yield urlunparse(parsed._replace(path=f"/{name}"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an embedded SQLite store, then of a fresh PostgreSQL database: a test
    taking it runs on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lf.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def pipe(services: Services, pg_url: str, topic_prefix: str) -> Iterator[Pipeline]:
    """A pipeline (CLI processes on its own topics) over a fresh database, initialised; test
    modules that need other topics or settings define their own."""
    pipeline = Pipeline(services, pg_url, topic_prefix)
    result = pipeline.run("db", "init")
    assert result.returncode == 0, result.stderr
    yield pipeline
    pipeline.close()


@contextmanager
def two_writers(url: str) -> Iterator[tuple[LeadflowApp, LeadflowApp]]:
    """Two applications on one store, as two consumers of a group."""
    env = Settings(database_url=url).eventsourcing_env({})
    a, b = LeadflowApp(env=dict(env)), LeadflowApp(env=dict(env))
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def meanwhile(action: Callable[[], Any]) -> Callable[[BatchResult], None]:
    """A ``before_commit`` hook: ``action`` (another writer's commit) runs after the batch
    decided and before it commits."""
    def hook(_: BatchResult) -> None:
        action()
    return hook
