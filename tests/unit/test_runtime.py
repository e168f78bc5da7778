"""The process-level garbage-collection policy of the long-running commands (runtime.py):
collections happen between batches, never inside one, and only where it was asked for."""

from __future__ import annotations

import gc
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from leadflow import runtime
from leadflow.engine.ingest import RejectsWriter, ingest_lines
from tests.conftest import T0, Records, collections_watched, days, make_app


@pytest.fixture
def managed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As after ``tune_gc`` (without freezing the test process's heap), collector on."""
    monkeypatch.setattr(runtime, "_managed", True)
    was_enabled = gc.isenabled()
    gc.enable()
    yield
    if not was_enabled:
        gc.disable()


def test_a_paused_batch_runs_without_the_collector_and_gets_it_back(managed: None) -> None:
    with runtime.collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), runtime.collector_paused():
        raise RuntimeError("a batch that failed")
    assert gc.isenabled()  # also after a failure


def test_cycles_left_by_a_paused_batch_are_collected_after_it(managed: None) -> None:
    class Node:
        other: Any = None

    with runtime.collector_paused():
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
    # Freed only by the collector (a cycle), which runs again once the batch is over.
    assert gc.collect() >= 2


def test_the_collector_is_left_alone_where_nobody_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_managed", False)  # LEADFLOW_GC_GEN0_THRESHOLD=0
    with runtime.collector_paused():
        assert gc.isenabled()
    monkeypatch.setattr(runtime, "_managed", True)
    gc.disable()  # the caller's own choice stands
    try:
        with runtime.collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_ingest_collects_between_its_batches_not_inside_them(
        managed: None, tmp_path: Path, rec: Records) -> None:
    # The real ingest path on SQLite: no collection starts while a batch is applied, some
    # start between them.
    app = make_app("sqlite", tmp_path)
    lines = [(n, json.dumps(rec("email_opened", f"p{n % 40}@co{n % 7}.io",
                                at=T0 + days(n / 100)).model_dump(mode="json",
                                                                  exclude_none=True)).encode())
             for n in range(1, 301)]
    try:
        with collections_watched(app, young=100) as seen:
            report = ingest_lines(app, iter(lines), batch_size=50, now=None,
                                  max_future_skew=days(1),
                                  rejects=RejectsWriter(io.StringIO()))
    finally:
        app.close()
    assert report.applied == 300 and report.batches == 6
    assert seen["inside"] == 0 and seen["outside"] > 0
