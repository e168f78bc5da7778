"""Scoring arithmetic: pure functions of rules, records and event time.

Engagement that decays is kept as ``(value, as_of)``. A touchpoint worth ``p`` at time ``t``
gives ``value' = value * 2^(-(t' - as_of)/H) + p * 2^(-(t' - t)/H)`` with ``t' = max(t,
as_of)``. Because every award simply decays from its own event time, the result does not
depend on the order records arrive in: a late touchpoint adds exactly its decayed share.
Awards from rules that *expire* instead of decaying count fully until ``t + window``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from leadflow.domain.rules import FitRule, Model, Rules


@dataclass(frozen=True, slots=True)
class Award:
    """Points one rule gave for one record."""

    rule: str
    points: float
    at: datetime
    event_id: str
    expires_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "points": self.points,
            "at": self.at,
            "event_id": self.event_id,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Award:
        return cls(
            rule=data["rule"],
            points=data["points"],
            at=data["at"],
            event_id=data["event_id"],
            expires_at=data.get("expires_at"),
        )

    def value_at(self, when: datetime, half_life_seconds: float) -> float:
        """This award's contribution at ``when`` (0 before it happened or after expiry)."""
        if when < self.at:
            return 0.0
        if self.expires_at is not None:
            return self.points if when < self.expires_at else 0.0
        return self.points * decay_factor((when - self.at).total_seconds(), half_life_seconds)


def decay_factor(seconds: float, half_life_seconds: float) -> float:
    return float(2.0 ** (-seconds / half_life_seconds))


def decayed(value: float, as_of: datetime | None, when: datetime, half_life_s: float) -> float:
    """The decaying engagement ``value`` known at ``as_of``, seen at ``when`` >= as_of."""
    if as_of is None or value == 0.0:
        return value
    seconds = (when - as_of).total_seconds()
    if seconds <= 0:
        return value
    return value * decay_factor(seconds, half_life_s)


def add_decaying(
    value: float, as_of: datetime | None, points: float, at: datetime, half_life_s: float
) -> tuple[float, datetime]:
    """Fold one decaying award into ``(value, as_of)``; order-independent."""
    if as_of is None:
        return points, at
    horizon = max(as_of, at)
    return (
        decayed(value, as_of, horizon, half_life_s)
        + points * decay_factor((horizon - at).total_seconds(), half_life_s),
        horizon,
    )


def merge_decaying(
    a: tuple[float, datetime | None], b: tuple[float, datetime | None], half_life_s: float
) -> tuple[float, datetime | None]:
    """Combine two ``(value, as_of)`` states, e.g. when two leads merge."""
    (va, ta), (vb, tb) = a, b
    if tb is None:
        return va, ta
    return add_decaying(va, ta, vb, tb, half_life_s)


def expiring_total(awards: Iterable[Award], when: datetime) -> float:
    return sum(a.points for a in awards if a.at <= when and a.expires_at and when < a.expires_at)


def score_touchpoint(
    rules: Rules | Model,
    record_type: str,
    context: Mapping[str, Any],
    at: datetime,
    event_id: str,
    counts: Mapping[str, int],
    totals: Mapping[str, float],
) -> list[Award]:
    """Awards every matching engagement rule gives this touchpoint.

    ``counts``/``totals`` are per-rule matches and raw points so far, for bands and caps.
    ``rules`` is the rule set (its primary model, ``[scoring]``) or one named model.
    """
    awards: list[Award] = []
    for rule in rules.engagement_by_type.get(record_type, ()):
        if not rule.matches(record_type, context):
            continue
        count = counts.get(rule.id, 0) + 1
        given = totals.get(rule.id, 0.0)
        if rule.bands is not None:
            points = rule.band_total(count) - given
        else:
            assert rule.points is not None  # guaranteed by the rule's validator
            points = rule.points
        if rule.cap is not None and given + points > rule.cap:
            points = max(0.0, rule.cap - given)
        expires_at = (
            at + timedelta(days=rule.expires_after_days) if rule.expires_after_days else None
        )
        # A zero award is still recorded so the count advances and the audit shows the match.
        awards.append(Award(rule.id, float(points), at, event_id, expires_at))
    return awards


def fit_awards(rules: Rules, profile: Mapping[str, Any]) -> list[tuple[str, float]]:
    """Fit points (no decay). Within a field the first matching rule wins, so a CEO does not
    also collect the manager points."""
    return fit_awards_of(rules.scoring.fit, profile)


def fit_awards_of(fit_rules: Sequence[FitRule],
                  profile: Mapping[str, Any]) -> list[tuple[str, float]]:
    """Fit points of ``fit_rules`` (the primary model's or a named model's)."""
    out: list[tuple[str, float]] = []
    seen_fields: set[str] = set()
    for rule in fit_rules:
        if rule.field in seen_fields:
            continue
        if rule.matches(profile):
            out.append((rule.id, float(rule.points)))
            seen_fields.add(rule.field)
    return out


def first_time_below(
    threshold: float,
    constant: float,
    value: float,
    as_of: datetime | None,
    expiring: Iterable[Award],
    start: datetime,
    half_life_s: float,
) -> datetime | None:
    """First moment ``t >= start`` at which ``constant + engagement(t) < threshold``.

    Between expiry moments the score only decays, so the crossing is found segment by
    segment: ``as_of + H*log2(value / remaining)`` where ``remaining`` is the threshold
    minus the constant part. Returns None when the score never falls below.
    """
    moments = sorted({a.expires_at for a in expiring if a.expires_at and a.expires_at > start})
    expiring = list(expiring)
    seg_start = start
    for seg_end in [*moments, None]:
        alive = expiring_total(expiring, seg_start)
        remaining = threshold - constant - alive
        current = decayed(value, as_of, seg_start, half_life_s)
        if current < remaining:
            return seg_start
        if remaining > 0 and current > 0:
            # Solve current * 2^(-dt/H) = remaining for dt.
            dt = half_life_s * math.log2(current / remaining)
            crossing = seg_start + timedelta(seconds=dt)
            if seg_end is None or crossing < seg_end:
                return crossing
        if seg_end is None:
            return None
        seg_start = seg_end
    return None


@dataclass(frozen=True, slots=True)
class ModelReplay:
    """A named model's points for a lead's whole recorded history (a backfill): its awards
    and fit, its decaying engagement ``(value, as_of)``, and each threshold crossing
    ``(direction, at, score)`` in order."""

    awards: list[Award]
    fit_awards: list[tuple[str, float]]
    value: float
    as_of: datetime | None
    crossings: list[tuple[str, datetime, float]]

    @property
    def fit(self) -> float:
        return sum(p for _, p in self.fit_awards)


def replay_model(model: Model, profile: Mapping[str, Any],
                 touchpoints: Sequence[tuple[str, str, datetime, Mapping[str, Any]]],
                 start: datetime, until: datetime) -> ModelReplay:
    """``model``'s points for ``touchpoints`` (event id, type, time, context; in time order),
    with its fit for ``profile`` counted from ``start`` (the lead's creation: the profile as
    it is now stands for the lead's whole history), and its threshold crossings up to
    ``until``: up or down at a record (as ``Lead.check_models`` finds them live), down by
    decay or expiry at its exact time (as the clock finds it, ``first_time_below``)."""
    fit_awards = fit_awards_of(model.fit, profile)
    fit = sum(p for _, p in fit_awards)
    half_life, threshold = model.half_life_seconds, model.threshold
    value, as_of = 0.0, None
    awards: list[Award] = []
    expiring: list[Award] = []
    counts: dict[str, int] = {}
    totals: dict[str, float] = {}
    crossings: list[tuple[str, datetime, float]] = []
    last = start

    def decays_below(before: datetime) -> None:
        """A crossing down by decay or expiry from ``last`` to ``before``, if any."""
        if crossings and crossings[-1][0] == "up":
            below = first_time_below(threshold, fit, value, as_of, expiring,
                                     max(last, as_of or last), half_life)
            if below is not None and below <= before:
                score = fit + decayed(value, as_of, below, half_life) + expiring_total(
                    expiring, below)
                crossings.append(("down", below, score))

    if fit >= threshold:
        crossings.append(("up", start, fit))
    for event_id, kind, at, context in touchpoints:
        decays_below(at)
        for award in score_touchpoint(model, kind, context, at, event_id, counts, totals):
            counts[award.rule] = counts.get(award.rule, 0) + 1
            totals[award.rule] = totals.get(award.rule, 0.0) + award.points
            awards.append(award)
            if award.expires_at is None:
                value, as_of = add_decaying(value, as_of, award.points, award.at, half_life)
            else:
                expiring.append(award)
        last = max(last, at)
        score = fit + decayed(value, as_of, last, half_life) + expiring_total(expiring, last)
        above = bool(crossings) and crossings[-1][0] == "up"
        if not above and score >= threshold:
            crossings.append(("up", last, score))
        elif above and score < threshold:
            crossings.append(("down", last, score))
    decays_below(until)
    return ModelReplay(awards, fit_awards, value, as_of, crossings)
