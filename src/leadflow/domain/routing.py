"""Routing: which rep owns a lead. Pure: the router's state comes in, a decision goes out."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from leadflow.domain.rules import Routing, Team

POOL = "pool"


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """``owner`` None means the lead goes to the shared pool for a rep to claim."""

    owner: str | None
    team: str | None
    rule: str
    strategy: str
    cursor: int | None = None  # the team's next round-robin position after this pick


def eligible(routing: Routing, rep_id: str, load: Mapping[str, int],
             availability: Mapping[str, bool], exclude: Collection[str]) -> bool:
    rep = routing.rep(rep_id)
    if rep is None or rep_id in exclude:
        return False
    if not availability.get(rep_id, rep.available):
        return False
    return rep.capacity is None or load.get(rep_id, 0) < rep.capacity


def _pick_in_team(
    routing: Routing,
    team: Team,
    load: Mapping[str, int],
    cursors: Mapping[str, int],
    availability: Mapping[str, bool],
    exclude: Collection[str],
) -> tuple[str | None, int | None]:
    members = team.members
    if team.strategy == "round_robin":
        start = cursors.get(team.id, 0) % len(members)
        for step in range(len(members)):
            index = (start + step) % len(members)
            if eligible(routing, members[index], load, availability, exclude):
                return members[index], (index + 1) % len(members)
        return None, None
    if team.strategy == "least_loaded":
        candidates = [m for m in members if eligible(routing, m, load, availability, exclude)]
        if not candidates:
            return None, None
        # Ties go to the earlier member so the choice is deterministic.
        return min(candidates, key=lambda m: (load.get(m, 0), members.index(m))), None
    return None, None  # "pool": the team's reps claim leads themselves


def choose_owner(
    routing: Routing,
    profile: Mapping[str, Any],
    score: float,
    *,
    load: Mapping[str, int],
    cursors: Mapping[str, int],
    availability: Mapping[str, bool],
    exclude: Collection[str] = (),
) -> RoutingDecision:
    """Ordered rules, first match wins; within the team its strategy picks the rep.

    A team with no eligible rep (all unavailable, at capacity or excluded) sends the lead to
    the fallback, and the decision's rule says so.
    """
    for rule in routing.rules:
        if not rule.when.matches(profile, score):
            continue
        team = routing.team(rule.team)
        if team.strategy == POOL:
            return RoutingDecision(None, team.id, rule.id, POOL)
        owner, cursor = _pick_in_team(routing, team, load, cursors, availability, exclude)
        if owner is not None:
            return RoutingDecision(owner, team.id, rule.id, team.strategy, cursor)
        return _fallback(routing, f"{rule.id}:no-rep-available", load, cursors, availability,
                         exclude)
    return _fallback(routing, "fallback", load, cursors, availability, exclude)


def _fallback(
    routing: Routing,
    rule_id: str,
    load: Mapping[str, int],
    cursors: Mapping[str, int],
    availability: Mapping[str, bool],
    exclude: Collection[str],
) -> RoutingDecision:
    if routing.fallback == POOL:
        return RoutingDecision(None, None, rule_id, POOL)
    team = routing.team(routing.fallback)
    owner, cursor = _pick_in_team(routing, team, load, cursors, availability, exclude)
    if owner is None:
        return RoutingDecision(None, team.id, rule_id, POOL)
    return RoutingDecision(owner, team.id, rule_id, team.strategy, cursor)
