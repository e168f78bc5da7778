"""A backtest's scoring loop: a rule set's primary model (or one named model) compiled once,
and each lead's touchpoints scored with the same arithmetic, in the same order, as
``leadflow.domain.scoring``, so every score and threshold moment is bit-for-bit the one the
domain's functions give (tests/unit/test_backtest_fast.py compares both).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from leadflow.domain.rules import EngagementRule, FitRule, Model, Rules
from leadflow.engine.backtest_read import Touch


def _decay(value: float, as_of: datetime, when: datetime, half_life_s: float) -> float:
    # scoring.decayed for an as_of that is set
    if value == 0.0:
        return value
    seconds = (when - as_of).total_seconds()
    if seconds <= 0:
        return value
    return value * float(2.0 ** (-seconds / half_life_s))


class _Test:
    """A compiled engagement condition (``rules.Condition``): lower-case text tests."""

    __slots__ = ("among", "contains", "equals", "field", "prefix", "property")

    def __init__(self, field: str, equals: str | None, contains: str | None,
                 prefix: str | None, among: frozenset[str] | None) -> None:
        self.field, self.equals, self.contains = field, equals, contains
        self.prefix, self.among = prefix, among
        # ``properties.<key>``: the record's custom property (``Condition.matches``).
        self.property = field[11:] if field.startswith("properties.") else None

    def matches(self, context: Mapping[str, Any]) -> bool:
        if self.property is None:
            value = context.get(self.field)
        else:
            properties = context.get("properties")
            value = properties.get(self.property) if isinstance(properties, Mapping) else None
            if isinstance(value, bool):
                value = "true" if value else "false"
        if value is None:
            return False
        text = str(value).lower()
        if self.equals is not None:
            return text == self.equals
        if self.contains is not None:
            return self.contains in text
        if self.prefix is not None:
            return text.startswith(self.prefix)
        return self.among is not None and text in self.among


class _Rule:
    """A compiled engagement rule: what ``scoring.score_touchpoint`` reads of it."""

    __slots__ = ("cap", "expires", "id", "points", "rule", "tests")

    def __init__(self, rule: EngagementRule) -> None:
        self.id = rule.id
        self.tests = tuple(
            _Test(c.field, _lower(c.equals), _lower(c.contains), _lower(c.prefix),
                  frozenset(v.lower() for v in c.in_ or ()) if c.in_ is not None else None)
            for c in rule.when)
        self.points = rule.points  # None: banded (``rule.band_total``)
        self.rule = rule
        self.cap = rule.cap
        self.expires = (timedelta(days=rule.expires_after_days)
                        if rule.expires_after_days else None)


def _lower(text: str | None) -> str | None:
    return None if text is None else text.lower()


class Compiled:
    """One rule set's primary model, or one named model, compiled for the backtest's
    scoring loop."""

    def __init__(self, rules: Rules | Model) -> None:
        self.rules = rules
        if isinstance(rules, Model):
            self.threshold = rules.threshold
            self.engagement, self.fit_rules = rules.engagement, rules.fit
        else:
            self.threshold = rules.scoring.mql_threshold
            self.engagement, self.fit_rules = rules.scoring.engagement, rules.scoring.fit
        self.half_life = rules.half_life_seconds
        self.by_type = {kind: tuple(_Rule(r) for r in engagement)
                        for kind, engagement in rules.engagement_by_type.items()}
        # Per profile field, its fit rules in file order (with their place in the file) and
        # what they give each value seen so far: a field's first matching rule wins.
        fields: dict[str, list[tuple[int, FitRule]]] = {}
        for index, rule in enumerate(self.fit_rules):
            fields.setdefault(rule.field, []).append((index, rule))
        self.fit_fields: list[tuple[str, tuple[tuple[int, FitRule], ...],
                                    dict[Any, tuple[int, float] | None]]] = [
            (name, tuple(ranked), {}) for name, ranked in fields.items()]

    def same_scores(self, other: Compiled) -> bool:
        """Whether ``other`` scores every lead the same at every moment (only the thresholds
        may differ): one pass over a lead's touchpoints then serves both."""
        return (self.engagement == other.engagement and self.fit_rules == other.fit_rules
                and self.half_life == other.half_life
                and self.threshold == self.threshold and other.threshold == other.threshold)

    def fit(self, profile: Mapping[str, Any]) -> float:
        """``sum(p for _, p in scoring.fit_awards(rules, profile))``: each field's winning
        rule remembered by the field's value (and its type), the points added in file order."""
        won: list[tuple[int, float]] = []
        for name, ranked, memo in self.fit_fields:
            value = profile.get(name)
            try:
                # A float by its repr: -0.0 == 0.0, but a text rule reads "-0.0".
                key: Any = (float, repr(value)) if type(value) is float else (type(value), value)
                known = memo.get(key, _UNSEEN)
            except TypeError:  # a value that cannot be a key
                key, known = None, _UNSEEN
            if known is _UNSEEN:
                hit = next(((index, float(rule.points)) for index, rule in ranked
                            if rule.matches(profile)), None)
                if key is not None:
                    memo[key] = hit
            else:
                hit = cast(tuple[int, float] | None, known)
            if hit is not None:
                won.append(hit)
        won.sort()
        total: float = 0
        for _, points in won:
            total += points
        return total

    def mql_at(self, profile: Mapping[str, Any], touches: Sequence[Touch],
               thresholds: Sequence[float] | None = None) -> list[datetime | None]:
        """When the lead's score first reaches each of ``thresholds`` (the rule set's own by
        default): the loop of ``scoring.score_touchpoint``, ``add_decaying``, ``decayed`` and
        ``expiring_total`` over its touchpoints, operation for operation."""
        return self._scores(profile, touches, thresholds, False)[0]

    def crossing(self, profile: Mapping[str, Any], touches: Sequence[Touch]
                 ) -> tuple[datetime | None, float | None]:
        """When the lead's score first reaches the threshold, and its score after its last
        touchpoint (None without touchpoints)."""
        found, score = self._scores(profile, touches, None, True)
        return found[0], score

    def _scores(self, profile: Mapping[str, Any], touches: Sequence[Touch],
                thresholds: Sequence[float] | None, to_the_end: bool
                ) -> tuple[list[datetime | None], float | None]:
        """``mql_at``; with ``to_the_end``, the loop goes on past the last threshold reached,
        and the score after the last touchpoint comes with it."""
        if thresholds is None:
            thresholds = (self.threshold,)
        found: list[datetime | None] = [None] * len(thresholds)
        if not touches:
            return found, None
        # Lowest first: a score that reaches one threshold reaches every lower one.
        pending = sorted(range(len(thresholds)), key=thresholds.__getitem__)
        lowest = thresholds[pending[0]]
        fit = self.fit(profile)
        half_life, by_type = self.half_life, self.by_type
        value = 0.0
        as_of: datetime | None = None
        expiring: list[tuple[float, datetime, datetime]] = []
        counts: dict[str, int] = {}
        totals: dict[str, float] = {}
        for at, _, kind, context in touches:
            for rule in by_type.get(kind, ()):
                if rule.tests and not all(t.matches(context) for t in rule.tests):
                    continue
                rule_id = rule.id
                count = counts.get(rule_id, 0) + 1
                given = totals.get(rule_id, 0.0)
                points = rule.points
                if points is None:
                    points = rule.rule.band_total(count) - given
                cap = rule.cap
                if cap is not None and given + points > cap:
                    points = max(0.0, cap - given)
                points = float(points)
                counts[rule_id] = count
                totals[rule_id] = given + points
                if rule.expires is None:
                    if as_of is None:
                        value, as_of = points, at
                    else:
                        horizon = at if at > as_of else as_of  # max(as_of, at)
                        value = _decay(value, as_of, horizon, half_life) + points * float(
                            2.0 ** (-(horizon - at).total_seconds() / half_life))
                        as_of = horizon
                else:
                    expiring.append((points, at, at + rule.expires))
            if as_of is None:
                when = at
                score = fit + value
            else:
                when = as_of if as_of > at else at  # max(occurred_at, as_of)
                score = fit + _decay(value, as_of, when, half_life)
            if expiring:
                alive: float = 0
                for points, since, until in expiring:
                    if since <= when < until:
                        alive += points
                score = score + alive
            if score >= lowest:
                while pending and score >= thresholds[pending[0]]:
                    found[pending.pop(0)] = when
                if not pending:
                    if not to_the_end:
                        break
                    lowest = math.inf
                else:
                    lowest = thresholds[pending[0]]
        return found, score


_UNSEEN = object()
