"""The process-level garbage-collection policy of the long-running commands (runtime.py):
collections happen between batches, never inside one, and only where it was asked for."""

from __future__ import annotations

import gc
import io
import json
import weakref
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
    gc.unfreeze()  # what batches froze goes back to the test process's collector
    if not was_enabled:
        gc.disable()


def test_a_paused_batch_runs_without_the_collector_and_gets_it_back(managed: None) -> None:
    with runtime.collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), runtime.collector_paused():
        raise RuntimeError("a batch that failed")
    assert gc.isenabled()  # also after a failure


class _Node:
    other: Any = None


def _cycle() -> list[_Node]:
    """Two objects referring to each other: once dropped, only the cyclic collector frees
    them."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return [a, b]


def test_cycles_left_by_a_paused_batch_are_collected_as_it_ends(managed: None) -> None:
    with runtime.collector_paused():
        pair = _cycle()
        gone = weakref.ref(pair[0])
        del pair
        assert gone() is not None  # no collection inside the batch
    # Freed only by the collector (a cycle): the young collection at the batch's end.
    assert gone() is None


def test_what_a_batch_leaves_alive_is_frozen_out_of_later_collections(
        managed: None, monkeypatch: pytest.MonkeyPatch) -> None:
    kept: list[list[int]] = []
    frozen = gc.get_freeze_count()  # (a command run in this process may have frozen some)
    with runtime.collector_paused():
        kept.extend([n] for n in range(1000))  # a batch's cached aggregates, say
    assert gc.get_freeze_count() >= frozen + 1000
    assert all(gc.is_tracked(item) for item in kept)
    # ... and every FULL_COLLECTION_EVERY batches, all is thawed and collected: a cycle
    # among frozen objects does not outlive its use for ever.
    monkeypatch.setattr(runtime, "FULL_COLLECTION_EVERY", 3)
    monkeypatch.setattr(runtime, "_batches", 0)
    full: list[int] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            full.append(info["collected"])

    with runtime.collector_paused():
        pair = _cycle()
    gone = weakref.ref(pair[0])
    del pair  # garbage only now, both frozen: no young collection can free them
    gc.callbacks.append(watch)
    try:
        with runtime.collector_paused():
            pass
        assert gone() is not None and not full
        with runtime.collector_paused():
            pass
    finally:
        gc.callbacks.remove(watch)
    assert len(full) == 1 and gone() is None


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
