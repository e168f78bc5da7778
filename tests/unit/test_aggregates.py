"""The aggregates as scenarios: given events -> a command -> the new events (and the state a
replay of all of them gives)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leadflow.domain import (
    Account,
    Clock,
    IdentityIndex,
    Interest,
    Lead,
    LeadMergedError,
    Router,
    TimerBucket,
)
from leadflow.domain.rules import default_rules, default_rules_text, parse_rules
from tests.conftest import T0, days

RULES = default_rules()


def new_lead(key: str = "email:anna@acme.io") -> Lead:
    return Lead(primary_key=key, created_at=T0, source="ads", campaign="spring",
                landing_page=None, account_id=None)


def replayed(aggregate: Any) -> Any:
    """The aggregate rebuilt from all its events, as a store would load it."""
    events = [*getattr(aggregate, "_history", []), *aggregate.collect_events()]
    aggregate._history = events
    state: Any = None
    for event in events:
        state = event.mutate(state)
    return state


def names(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


def test_a_lead_is_created_new_with_its_first_identity() -> None:
    lead = new_lead()
    (created,) = lead.collect_events()
    assert type(created).__name__ == "Created"
    assert (lead.stage, lead.identity_keys, lead.source) == ("new", ["email:anna@acme.io"], "ads")


def test_a_touchpoint_records_each_rules_points_with_the_rules_version() -> None:
    lead = new_lead()
    lead.collect_events()
    lead.record_touchpoint("e1", "content_downloaded", T0, {}, RULES)
    (scored,) = lead.collect_events()
    assert names([scored]) == ["TouchpointScored"]
    assert scored.rules_version == RULES.version
    assert [(a["rule"], a["points"]) for a in scored.awards] == [("content-download", 10.0)]
    assert lead.score_at(T0, RULES.half_life_seconds) == 10
    assert "e1" in lead.seen and lead.touchpoints == 1


def test_engagement_decays_by_half_each_half_life() -> None:
    lead = new_lead()
    lead.record_touchpoint("e1", "trial_started", T0, {}, RULES)
    assert lead.engagement_at(T0 + days(RULES.scoring.half_life_days),
                              RULES.half_life_seconds) == pytest.approx(12.5)


def test_a_profile_update_records_the_fit_rules_that_matched() -> None:
    lead = new_lead()
    lead.collect_events()
    lead.update_profile({"employees": 20}, T0, "e1", RULES)
    lead.update_profile({"employees": 20}, T0, "e2", RULES)  # nothing new: no event
    (updated,) = lead.collect_events()
    assert names([updated]) == ["ProfileUpdated"]
    assert updated.changes == {"employees": 20}
    assert updated.fit == lead.fit


def test_stage_changes_are_recorded_with_actor_and_reason_and_backward_moves_allowed() -> None:
    lead = new_lead()
    lead.change_stage("mql", T0 + days(1), "rule:mql-threshold", "score 50")
    lead.change_stage("recycled", T0 + days(2), "rep-a", "no budget")
    assert not lead.change_stage("recycled", T0 + days(3), "rep-a", "again")  # no-op
    assert [(t["from"], t["to"], t["actor"]) for t in lead.transitions] == [
        (None, "new", "system"), ("new", "mql", "rule:mql-threshold"),
        ("mql", "recycled", "rep-a")]
    with pytest.raises(ValueError, match="unknown stage"):
        lead.change_stage("won", T0, "rep-a", None)
    assert replayed(lead).transitions == lead.transitions


def test_recycling_a_lead_releases_its_owner() -> None:
    lead = new_lead()
    lead.assign_owner("rep-b", "size", "rule:size", "round_robin", T0, "system", "routed")
    assert (lead.owner, lead.in_pool) == ("rep-b", False)
    lead.change_stage("recycled", T0 + days(1), "rep-b", "not now")
    assert lead.owner is None and lead.owner_on(T0) == "rep-b"


def test_an_mql_heading_below_the_recycle_threshold_is_due_for_decay() -> None:
    lead = new_lead()
    lead.record_touchpoint("e1", "trial_started", T0, {}, RULES)
    lead.record_touchpoint("e2", "demo_requested", T0, {}, RULES)
    lead.change_stage("mql", T0, "rule:mql-threshold", "score")
    due = lead.next_due(RULES)
    assert due is not None and due[1] == "decay"
    # 45 points fall below 20 after log2(45/20) half-lives.
    assert due[0] > T0 + days(30) and due[0] < T0 + days(36)


def test_the_next_due_time_is_kept_only_while_the_lead_and_the_rules_are_unchanged() -> None:
    """``next_due`` is asked when a record arrives and when it is settled; its answer is kept
    with the lead's version and the rules' version, and must always equal a fresh one."""
    lead = new_lead()
    lead.record_touchpoint("e1", "trial_started", T0, {}, RULES)
    first = lead.next_due(RULES)
    assert first is not None and first[1] == "dormant"
    assert lead.next_due(RULES) is first  # the same version: kept
    lead.record_touchpoint("e2", "demo_requested", T0 + days(1), {}, RULES)
    assert lead.next_due(RULES) == lead._next_due(RULES) != first  # a new event: asked again
    lead.change_stage("mql", T0 + days(1), "rule:mql-threshold", "score")
    assert lead.next_due(RULES) == lead._next_due(RULES)
    assert lead.next_due(RULES)[1] == "decay"
    # Other rules (a shorter half-life) give another answer at the same version.
    faster = parse_rules(default_rules_text().replace("half_life_days = 30",
                                                      "half_life_days = 10"))
    assert faster.version != RULES.version
    assert lead.next_due(faster) == lead._next_due(faster) != lead._next_due(RULES)
    # Derived, not state: the kept answer is no part of what the lead's events rebuild.
    assert all(not k.endswith("_cache") for k in lead.state())


def test_a_merged_lead_refuses_further_merges_and_the_survivor_keeps_both_histories() -> None:
    survivor, loser = new_lead(), new_lead("phone:+442079460958")
    loser.record_touchpoint("e1", "content_downloaded", T0, {}, RULES)
    survivor.absorb(loser, T0 + days(1), "e2", RULES)
    loser.merge_into(survivor.id, T0 + days(1), "e2")
    assert "phone:+442079460958" in survivor.identity_keys
    assert "e1" in survivor.seen and loser.merged_into == survivor.id
    with pytest.raises(LeadMergedError):
        loser.merge_into(uuid4(), T0 + days(2), "e3")


def test_an_identity_index_points_at_its_lead_and_can_be_repointed() -> None:
    lead_id, other = uuid4(), uuid4()
    index = IdentityIndex(key="email:anna@acme.io", target_id=lead_id, is_interest=False,
                          occurred_at=T0)
    index.repoint(other, False, T0 + days(1), "merged")
    assert index.target_id == other and not index.is_interest
    assert names(index.collect_events()) == ["Registered", "Repointed"]


def test_interest_keeps_anonymous_touchpoints_until_it_is_linked_to_a_lead() -> None:
    interest = Interest(anonymous_id="cookie-1", occurred_at=T0)
    interest.note("e1", "page_viewed", T0, {"url": "https://acme.io/pricing"})
    lead_id = uuid4()
    interest.link(lead_id, T0 + days(1))
    assert "e1" in interest.seen and interest.linked_lead == lead_id
    assert [t["event_id"] for t in interest.touchpoints] == ["e1"]


def test_an_account_surges_when_enough_people_engage_within_the_window() -> None:
    account = Account(account_key="domain:acme.io", name="Acme", occurred_at=T0)
    people = [uuid4() for _ in range(3)]
    for i, person in enumerate(people):
        account.engage(person, T0 + timedelta(hours=i))
    window = timedelta(days=RULES.accounts.surge_window_days)
    assert sorted(account.detect_surge(T0 + timedelta(hours=3), 3, window)) == sorted(people)
    # The same people again within the window are no new surge.
    assert account.detect_surge(T0 + timedelta(hours=4), 3, window) == []


def test_the_router_counts_each_reps_leads_and_remembers_availability() -> None:
    router = Router()
    a, b = uuid4(), uuid4()
    router.take("rep-a", a, T0)
    router.take("rep-a", b, T0)
    router.release("rep-a", a, T0 + days(1))
    router.set_availability("rep-a", False, T0 + days(1))
    assert router.load == {"rep-a": 1} and router.availability == {"rep-a": False}
    assert replayed(router).load == {"rep-a": 1}


def test_a_timer_bucket_returns_the_wake_ups_due_in_a_window() -> None:
    bucket = TimerBucket(day="2026-03-02")
    early, late = uuid4(), uuid4()
    bucket.set(early, T0)
    bucket.set(late, T0 + timedelta(hours=5))
    assert bucket.due(None, T0 + timedelta(hours=1)) == [(T0, early)]
    assert bucket.due(T0, T0 + timedelta(hours=6)) == [(T0 + timedelta(hours=5), late)]


def test_the_clock_only_moves_forward_and_lists_the_days_it_must_visit() -> None:
    clock = Clock()
    clock.open_day("2026-03-02")
    clock.open_day("2026-03-02")  # once only
    clock.advance(T0)
    assert clock.days == ["2026-03-02"] and clock.position == T0
    assert names(clock.collect_events()) == ["Created", "DayOpened", "Advanced"]


_EXPIRING_RULES_TEXT = """
label = "expiring"
[scoring]
mql_threshold = 50
recycle_threshold = 20
half_life_days = 30
[[scoring.engagement]]
id = "call"
type = "call_logged"
points = 12
expires_after_days = 20
[[scoring.engagement]]
id = "page"
type = "page_viewed"
points = 2
"""


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["call_logged", "page_viewed"]),
                          st.integers(min_value=0, max_value=90)), max_size=30),
       st.integers(min_value=0, max_value=30))
def test_the_expiring_awards_kept_with_a_lead_are_the_ones_a_fresh_scan_finds(
        touches: list[tuple[str, int]], restore_at: int) -> None:
    # Lead._expiring keeps its list with the awards it was made from: after new awards, a
    # merge's, a restore's list replacing them, and a replay, it is what a scan gives.
    from leadflow.domain.rules import parse_rules

    rules = parse_rules(_EXPIRING_RULES_TEXT)
    lead, other = new_lead(), new_lead("email:bo@acme.io")
    for index, (kind, day) in enumerate(touches):
        target = other if index % 3 == 2 else lead
        target.record_touchpoint(f"e{index}", kind, T0 + days(day), {}, rules)
        assert lead._expiring() == tuple(a for a in lead.awards if a.expires_at is not None)
        if index == restore_at:
            lead.awards = list(lead.awards[: len(lead.awards) // 2])  # a list replaced
            assert lead._expiring() == tuple(a for a in lead.awards if a.expires_at)
    lead.absorb(other, T0 + days(91), "merge", rules)
    assert lead._expiring() == tuple(a for a in lead.awards if a.expires_at is not None)
    assert "_expiring_cache" not in lead.state()
    # The cache is no part of the state: the lead that made it equals its own replay.
    other._expiring()
    again = replayed(other)

    def state(aggregate: Lead) -> dict[str, Any]:
        return {k: v for k, v in aggregate.state().items()
                if k not in ("_history", "_pending_events")}

    assert "_expiring_cache" in other.__dict__
    assert state(again) == state(other)
