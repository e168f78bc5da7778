"""Shared fixtures: an engine on each embedded store, and a record builder."""

from __future__ import annotations

import gc
import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from leadflow.contract import InboundRecord
from leadflow.domain.rules import Rules, default_rules
from leadflow.engine.app import LeadflowApp

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

# The audit key every store of the test session signs its chain links with (a production
# store must get one from outside the database: store/keys.py). Tests that start the CLI
# pass it on; tests of the key handling itself remove it.
TEST_AUDIT_KEY = "leadflow-test-audit-key-0123456789abcdef"
os.environ.setdefault("LEADFLOW_AUDIT_KEY", TEST_AUDIT_KEY)
# Likewise the master key that wraps every person's data key (store/personal.py).
TEST_MASTER_KEY = "leadflow-test-master-key-0123456789abcdef"
os.environ.setdefault("LEADFLOW_MASTER_KEY", TEST_MASTER_KEY)
SESSION_KEYS = ("LEADFLOW_AUDIT_KEY", "LEADFLOW_MASTER_KEY")


def clean_env() -> dict[str, str]:
    """The environment for a CLI the test starts: no LEADFLOW_* setting of the developer's
    leaks in, except the session's audit and master keys."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("LEADFLOW_") or k in SESSION_KEYS}


def days(n: float) -> timedelta:
    return timedelta(days=n)


class Records:
    """Builds valid inbound records with unique event ids; ``at`` defaults to T0."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def __call__(self, type_: str, email: str | None = None, *, at: datetime = T0,
                 event_id: str | None = None, lead: dict[str, Any] | None = None,
                 **fields: Any) -> InboundRecord:
        ref = dict(lead or {})
        if email is not None:
            ref["email"] = email
        data = {
            "event_id": event_id or f"evt-{next(self._ids)}",
            "type": type_,
            "occurred_at": at.isoformat(),
            "lead": ref,
            **fields,
        }
        return InboundRecord.model_validate(data)


@pytest.fixture
def rec() -> Records:
    return Records()


def make_app(store: str, tmp_path: Path, rules: Rules | None = None,
             name: str = "leadflow.db") -> LeadflowApp:
    if store == "memory":
        env = {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    else:
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite",
               "SQLITE_DBNAME": str(tmp_path / name)}
    return LeadflowApp(env=env, rules=rules or default_rules())


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def app(store: str, tmp_path: Path) -> Iterator[LeadflowApp]:
    application = make_app(store, tmp_path)
    yield application
    application.close()


@contextmanager
def collections_watched(app: LeadflowApp, young: int) -> Iterator[dict[str, int]]:
    """Count the garbage collections that start while ``app.apply_batch`` runs ("inside")
    and the others ("outside"), with a young generation of ``young`` objects, small enough
    that a batch would trigger some."""
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

    app.apply_batch = watched  # type: ignore[method-assign]
    thresholds = gc.get_threshold()
    gc.set_threshold(young, 10, 10)
    gc.callbacks.append(callback)
    try:
        yield seen
    finally:
        gc.callbacks.remove(callback)
        gc.set_threshold(*thresholds)
        app.apply_batch = apply_batch  # type: ignore[method-assign]
