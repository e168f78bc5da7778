"""The two-tier aggregate cache: evictions are pickled, restored on demand, bounded in bytes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from leadflow.contract import parse_record
from leadflow.domain import IdentityIndex
from leadflow.engine.app import LeadflowApp
from leadflow.store.cache import SpillingLRUCache

T0 = datetime(2026, 1, 5, 9, tzinfo=UTC)


def index(n: int) -> IdentityIndex:
    made = IdentityIndex(key=f"email:p{n}@acme.io", target_id=IdentityIndex.create_id(f"t{n}"),
                         is_interest=False, occurred_at=T0)
    made.collect_events()  # as after a commit: nothing pending
    return made


def test_evicted_aggregates_are_spilled_and_come_back_equal() -> None:
    cache = SpillingLRUCache(maxsize=2, spill_bytes=1 << 20)
    made = [index(n) for n in range(5)]
    for item in made:
        cache.put(item.id, item)
    assert cache.stats()["live"] == 2 and cache.stats()["spilled"] == 3
    assert all(item.id in cache for item in made) and len(cache) == 5
    first = cache.get(made[0].id)
    assert first is not made[0]  # a restored copy, not the evicted object
    assert vars(first) == vars(made[0]) and first.version == made[0].version
    # Restoring makes it live again (and spills the least recently used one instead).
    assert made[0].id in cache.cache and made[0].id not in cache.spilled
    assert cache.stats()["restores"] == 1 and len(cache) == 5


def test_a_put_supersedes_the_spilled_copy() -> None:
    cache = SpillingLRUCache(maxsize=1, spill_bytes=1 << 20)
    a, b = index(1), index(2)
    cache.put(a.id, a)
    cache.put(b.id, b)  # a spilled
    a.repoint(IdentityIndex.create_id("other"), False, T0, "merged")
    a.collect_events()
    cache.put(a.id, a)  # the newer live value wins; b is spilled now
    assert a.id not in cache.spilled
    cache.put(b.id, b)
    assert cache.get(a.id).target_id == IdentityIndex.create_id("other")


def test_the_spill_tier_drops_its_oldest_entries_beyond_its_byte_budget() -> None:
    one = len(__import__("pickle").dumps(index(0)))
    cache = SpillingLRUCache(maxsize=1, spill_bytes=3 * (one + 200))
    made = [index(n) for n in range(10)]
    for item in made:
        cache.put(item.id, item)
    stats = cache.stats()
    assert stats["spilled"] == 3 and stats["drops"] == 6
    assert stats["spilled_bytes"] <= cache.spill_bytes
    # The oldest spills were dropped: they are simply not cached any more.
    assert made[0].id not in cache and made[8].id in cache
    with pytest.raises(KeyError):
        cache.get(made[0].id)


def test_aggregates_with_unsaved_changes_are_never_spilled() -> None:
    cache = SpillingLRUCache(maxsize=1, spill_bytes=1 << 20)
    dirty = IdentityIndex(key="email:d@acme.io", target_id=IdentityIndex.create_id("t"),
                          is_interest=False, occurred_at=T0)
    cache.put(dirty.id, dirty)
    clean = index(1)
    cache.put(clean.id, clean)
    assert dirty.id not in cache  # the batch that changed it puts it back when it commits


def test_clear_all_forgets_both_tiers() -> None:
    cache = SpillingLRUCache(maxsize=1, spill_bytes=1 << 20)
    for n in range(3):
        item = index(n)
        cache.put(item.id, item)
    cache.clear_all()
    assert len(cache) == 0 and cache.spilled_size == 0
    again = index(7)
    cache.put(again.id, again)
    assert cache.get(again.id) is again


def test_an_empty_cache_is_still_used_by_the_library_repository(tmp_path: Path) -> None:
    """eventsourcing's Repository skips a falsy cache; an empty one must not look falsy."""
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "a.db"),
           "AGGREGATE_CACHE_MAXSIZE": "10", "AGGREGATE_CACHE_FASTFORWARD": "n",
           "DEEPCOPY_FROM_AGGREGATE_CACHE": "n", "LEADFLOW_AGGREGATE_SPILL_MIB": "1"}
    writer = LeadflowApp(env=env)
    writer.ingest(parse_record(json.dumps({
        "schema_version": 1, "event_id": "e-1", "type": "email_opened",
        "occurred_at": T0.isoformat(), "lead": {"email": "a@acme.io"}})))
    reader = LeadflowApp(env=env)
    cache = reader.repository.cache
    assert isinstance(cache, SpillingLRUCache) and len(cache) == 0
    lead_id = reader.resolve("email:a@acme.io")
    reader.lead(lead_id)
    assert lead_id in cache  # the first read filled the cache; the next is served from it


def test_a_spilled_lead_comes_back_with_all_its_state() -> None:
    # Lead keeps its own attributes in __slots__ and its record ids in a list (SeenIds):
    # a pickled copy must hold both, and equality must still compare them.
    from leadflow.domain import Lead
    from leadflow.domain.lead import SeenIds
    from leadflow.domain.rules import default_rules

    rules = default_rules()
    lead = Lead(primary_key="email:anna@acme.io", created_at=T0, source="ads",
                campaign="spring", landing_page=None, account_id=None)
    for event_id in ("e1", "e2", "e1"):  # e1 twice: taken once
        lead.record_touchpoint(event_id, "content_downloaded", T0, {}, rules)
    lead.change_stage("mql", T0, "system", "score")
    lead.collect_events()
    other = index(1)
    cache = SpillingLRUCache(maxsize=1, spill_bytes=1 << 20)
    cache.put(lead.id, lead)
    cache.put(other.id, other)  # the lead is spilled
    assert lead.id in cache.spilled
    back = cache.get(lead.id)
    assert back is not lead and back == lead and back.version == lead.version
    assert back.state() == lead.state() and list(back.state())[5:8] == [
        "primary_key", "identity_keys", "created_at"]
    assert (back.stage, back.touchpoints, back.transitions) == ("mql", 3, lead.transitions)
    assert type(back.seen) is SeenIds and back.seen == ["e1", "e2"]
    back.stage = "sql"
    assert back != lead  # a slot attribute counts in equality


def test_a_lead_with_many_record_ids_keeps_them_indexed_and_once() -> None:
    # SeenIds is a list (small leads: less memory than a set); past INDEXED ids a set is kept
    # beside it so that membership stays O(1) for a lead that takes thousands of records.
    import pickle

    from leadflow.domain.lead import SeenIds

    small = SeenIds(["a", "b", "a"])
    assert small == ["a", "b"] and "a" in small and "c" not in small
    assert small._index is None
    many = SeenIds(f"e{i}" for i in range(SeenIds.INDEXED + 10))
    many.add("e3")  # already taken: not again
    many.update(["x", "e5", "x"])
    assert many[-1] == "x" and len(many) == SeenIds.INDEXED + 11
    assert many._index == set(many)
    assert "e0" in many and "x" in many and "nope" not in many
    back = pickle.loads(pickle.dumps(many))
    assert type(back) is SeenIds and back == many and back._index == set(many)
    back.add("y")
    assert "y" in back and back[-1] == "y" and "y" not in many
