"""Several leadflow processes opening one PostgreSQL database at the same moment.

Every process that opens the store runs eventsourcing's idempotent DDL (and the projector its
own). Two sessions running ``CREATE OR REPLACE FUNCTION`` or creating the same type or view at
once make PostgreSQL fail one of them ("tuple concurrently updated"); in CI a restarted
consumer died at start-up that way beside a test polling its progress. Threads are enough to
reproduce it: each app has its own connections, and the race is in the server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from leadflow.config import Settings
from leadflow.engine.app import LeadflowApp
from leadflow.projections.db import ProjectionDB
from leadflow.projections.projector import Projector

pytestmark = pytest.mark.integration

THREADS = 6
ROUNDS = 6


def open_app(url: str) -> LeadflowApp:
    return LeadflowApp(env=Settings(database_url=url).eventsourcing_env({}))


def race(action: Callable[[], None]) -> list[BaseException]:
    """Run ``action`` in THREADS threads released together, ROUNDS times; return failures."""
    failures: list[BaseException] = []
    for _ in range(ROUNDS):
        start = threading.Barrier(THREADS)

        def run(start: threading.Barrier = start) -> None:
            start.wait()
            try:
                action()
            except BaseException as exc:  # collected and asserted on below
                failures.append(exc)

        threads = [threading.Thread(target=run) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads), "a start-up hung"
    return failures


def test_apps_opening_a_fresh_database_at_once_all_start(pg_url: str) -> None:
    def start() -> None:
        open_app(pg_url).close()

    failures = race(start)
    assert failures == [], [f"{type(f).__name__}: {f}" for f in failures]
    app = open_app(pg_url)
    try:
        assert app.recorder.max_notification_id() in (None, 0)  # the store works afterwards
    finally:
        app.close()


def test_projectors_setting_up_a_fresh_database_at_once_all_start(pg_url: str) -> None:
    app = open_app(pg_url)

    def start() -> None:
        db = ProjectionDB(pg_url)
        try:
            Projector(app, db).setup()
        finally:
            db.close()

    try:
        failures = race(start)
    finally:
        app.close()
    assert failures == [], [f"{type(f).__name__}: {f}" for f in failures]
