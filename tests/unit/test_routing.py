"""Routing: ordered rules, first match wins, then the team's strategy."""

from __future__ import annotations

from leadflow.domain.routing import choose_owner
from leadflow.domain.rules import default_rules, parse_rules


def route(profile: dict[str, object], **state: object):  # type: ignore[no-untyped-def]
    kwargs = {"load": {}, "cursors": {}, "availability": {}, **state}
    return choose_owner(default_rules().routing, profile, 60, **kwargs)  # type: ignore[arg-type]


def test_a_20_employee_lead_goes_to_rep_b() -> None:
    decision = route({"employees": 20, "country": "US"})
    assert (decision.owner, decision.team, decision.rule) == ("rep-b", "mid", "size-mid")


def test_company_size_bands_follow_the_seed_example() -> None:
    assert route({"employees": 5}).owner == "rep-a"
    assert route({"employees": 10}).owner == "rep-a"
    assert route({"employees": 11}).owner == "rep-b"
    assert route({"employees": 50}).owner == "rep-b"
    assert route({"employees": 51}).owner == "rep-c"


def test_territory_comes_before_company_size() -> None:
    decision = route({"employees": 20, "country": "DE"})
    assert decision.team == "emea" and decision.rule == "territory-emea"


def test_industry_specialist_gets_leads_of_unknown_size() -> None:
    assert route({"industry": "Healthcare"}).owner == "rep-d"


def test_unmatched_leads_go_to_the_pool() -> None:
    decision = route({"country": "US"})
    assert decision.owner is None and decision.strategy == "pool"


def test_round_robin_takes_turns_and_skips_unavailable_reps() -> None:
    first = route({"country": "DE"})
    second = route({"country": "DE"}, cursors={"emea": first.cursor})
    assert (first.owner, second.owner) == ("rep-e", "rep-f")
    skipped = route({"country": "DE"}, cursors={"emea": 1}, availability={"rep-f": False})
    assert skipped.owner == "rep-e"


def test_a_team_with_no_available_rep_falls_back_to_the_pool_and_says_why() -> None:
    decision = route({"employees": 20}, availability={"rep-b": False})
    assert decision.owner is None
    assert decision.rule == "size-mid:no-rep-available"


def test_least_loaded_picks_the_rep_with_fewest_open_leads_and_respects_capacity() -> None:
    rules = parse_rules("""
[routing]
[[routing.reps]]
id = "x"
capacity = 2
[[routing.reps]]
id = "y"
[[routing.teams]]
id = "t"
members = ["x", "y"]
strategy = "least_loaded"
[[routing.rules]]
id = "all"
team = "t"
""")
    def pick(load: dict[str, int]) -> str | None:
        return choose_owner(rules.routing, {}, 0, load=load, cursors={}, availability={}).owner
    assert pick({"x": 0, "y": 1}) == "x"
    assert pick({"x": 1, "y": 1}) == "x"  # tie: earlier member
    assert pick({"x": 1, "y": 0}) == "y"
    assert pick({"x": 2, "y": 5}) == "y"  # x is at capacity
