"""The lead's named scoring models (``[models.<id>]`` in the rules): their own points, decay,
fit and threshold crossings, beside the primary model that drives the lifecycle.

``NamedModels`` is a base of ``Lead`` (domain/lead.py). Its events are explicit classes: the
library redefines each on ``Lead`` as ``Lead.<Name>`` (a subclass of ``Lead.Event`` and of
the class here), so their stored topics are ``leadflow.domain:Lead.<Name>`` as before this
module existed (``stable_topics``; a test pins them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from leadflow.domain import events, scoring
from leadflow.domain.rules import Rules
from leadflow.domain.scoring import Award


def _expiring_of(state: Mapping[str, Any]) -> list[Award]:
    """A named model's awards that expire instead of decaying."""
    return [Award.from_dict(a) for a in state["awards"] if a.get("expires_at") is not None]


class NamedModels:
    """The named models' state and decisions of a lead (see the module's doc)."""

    __slots__ = ()

    if TYPE_CHECKING:  # the lead's own attributes and methods these use (domain/lead.py)
        profile: dict[str, Any]
        seen: Any
        created_at: datetime

        # Lead's takes its own event classes (``type[Lead.Event]``), as these are on it.
        def _emit(self, event_class: Any, **fields: Any) -> None: ...

    def _model_decays(self, rules: Rules,
                      states: dict[str, dict[str, Any]]) -> list[tuple[datetime, str]]:
        """When each named model above its threshold decays below it (``model:<id>``)."""
        found: list[tuple[datetime, str]] = []
        for model_id, state in states.items():
            model = rules.models.get(model_id)
            if model is None or not state["above"]:
                continue
            start = max(state["crossed_at"], state["as_of"] or state["crossed_at"])
            below = scoring.first_time_below(
                model.threshold, state["fit"], state["value"], state["as_of"],
                _expiring_of(state), start, model.half_life_seconds)
            if below is not None:
                found.append((below, f"model:{model_id}"))
        return found

    @property
    def model_states(self) -> dict[str, dict[str, Any]]:
        """Each named model's state, by id: ``fit``, ``fit_awards``, ``value`` and ``as_of``
        (its decaying engagement), ``awards`` (award dicts), ``counts``/``totals`` per rule,
        ``above`` (its threshold) and ``crossed_at``. Empty for a lead no model scored."""
        states: dict[str, dict[str, Any]] | None = self.__dict__.get("_models")
        return states if states is not None else {}

    def _model_state(self, model_id: str) -> dict[str, Any]:
        states = self.__dict__.get("_models")
        if states is None:
            states = self.__dict__["_models"] = {}
        state = states.get(model_id)
        if state is None:
            state = states[model_id] = {
                "fit": 0.0, "fit_awards": [], "value": 0.0, "as_of": None, "awards": [],
                "counts": {}, "totals": {}, "above": False, "crossed_at": None}
        return state

    def model_engagement_at(self, model_id: str, when: datetime, half_life_s: float) -> float:
        state = self.model_states.get(model_id)
        if state is None:
            return 0.0
        as_of = state["as_of"]
        if as_of is not None and when >= as_of:
            return scoring.decayed(state["value"], as_of, when, half_life_s) + (
                scoring.expiring_total(_expiring_of(state), when))
        return sum(Award.from_dict(a).value_at(when, half_life_s) for a in state["awards"])

    def model_score_at(self, model_id: str, when: datetime, half_life_s: float) -> float:
        state = self.model_states.get(model_id)
        fit = state["fit"] if state is not None else 0.0
        return float(fit) + self.model_engagement_at(model_id, when, half_life_s)

    def _score_models(self, rules: Rules, touchpoints: Sequence[tuple[str, str, datetime,
                                                                    Mapping[str, Any]]],
                      at: datetime, event_id: str | None) -> None:
        """Score ``touchpoints`` (event id, type, time, context) with every named model;
        one ModelsScored event holds the points of the models that matched."""
        changes: dict[str, dict[str, Any]] = {}
        for model_id, model in rules.models.items():
            state = self.model_states.get(model_id)
            counts = dict(state["counts"]) if state else {}
            totals = dict(state["totals"]) if state else {}
            awards: list[Award] = []
            for tp_id, kind, t, context in touchpoints:
                for award in scoring.score_touchpoint(model, kind, context, t, tp_id,
                                                      counts, totals):
                    counts[award.rule] = counts.get(award.rule, 0) + 1
                    totals[award.rule] = totals.get(award.rule, 0.0) + award.points
                    awards.append(award)
            if not awards:
                continue
            value, as_of = (state["value"], state["as_of"]) if state else (0.0, None)
            half_life = model.half_life_seconds
            for award in awards:
                if award.expires_at is None:
                    value, as_of = scoring.add_decaying(value, as_of, award.points, award.at,
                                                        half_life)
            if as_of is None or at > as_of:
                value = scoring.decayed(value, as_of, at, half_life)
                as_of = at
            changes[model_id] = {"awards": [a.to_dict() for a in awards],
                                 "engagement_value": value, "engagement_as_of": as_of}
        self._models_scored(changes, at, event_id, rules)

    def _refit_models(self, rules: Rules, at: datetime, event_id: str | None,
                      profile: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The named models whose fit ``profile`` changes: their new fit."""
        changes: dict[str, dict[str, Any]] = {}
        for model_id, model in rules.models.items():
            fit = scoring.fit_awards_of(model.fit, profile)
            state = self.model_states.get(model_id)
            old = [tuple(a) for a in state["fit_awards"]] if state else []
            if fit != old:
                changes[model_id] = {"fit": sum(p for _, p in fit),
                                     "fit_awards": [list(a) for a in fit]}
        return changes

    def _models_scored(self, changes: dict[str, dict[str, Any]], at: datetime,
                       event_id: str | None, rules: Rules) -> None:
        if changes:
            self._emit(self.ModelsScored, models=changes, occurred_at=at, event_id=event_id,
                       rules_version=rules.version)

    class ModelsScored(events.Event):
        """What one record (touchpoint, profile change, merge) gave the named models, by
        model id: ``awards`` (rule, points, at, event id, expiry) with the model's new
        ``engagement_value``/``engagement_as_of``, and/or its new ``fit``/``fit_awards``.
        Stored in the record's row, beside the primary model's events."""

        models: dict[str, dict[str, Any]]
        occurred_at: datetime
        event_id: str | None
        rules_version: str

        def apply(self, aggregate: Any) -> None:
            lead: Any = aggregate
            for model_id, change in self.models.items():
                state = lead._model_state(model_id)
                for data in change.get("awards", ()):
                    state["awards"].append(data)
                    rule = data["rule"]
                    state["counts"][rule] = state["counts"].get(rule, 0) + 1
                    state["totals"][rule] = state["totals"].get(rule, 0.0) + data["points"]
                if "engagement_value" in change:
                    state["value"] = change["engagement_value"]
                    state["as_of"] = change["engagement_as_of"]
                if "fit" in change:
                    state["fit"] = change["fit"]
                    state["fit_awards"] = [[str(r), float(p)] for r, p in change["fit_awards"]]
            super().apply(aggregate)

    def refold_models(self, rules: Rules) -> None:
        """Recompute each named model's engagement from its own awards and its fit from the
        profile, on a lead rebuilt from part of its events (an unmerge's scratch copy,
        never a stored lead: no event is recorded)."""
        for model_id, state in self.model_states.items():
            model = rules.models.get(model_id)
            if model is None:
                continue
            # Only the lead's own records' points: a backfill recorded after the merge held
            # the merged lead's too (that lead's own backfill keeps them).
            state["awards"] = [a for a in state["awards"] if a["event_id"] in self.seen]
            state["counts"], state["totals"] = {}, {}
            for data in state["awards"]:
                rule = data["rule"]
                state["counts"][rule] = state["counts"].get(rule, 0) + 1
                state["totals"][rule] = state["totals"].get(rule, 0.0) + data["points"]
            value, as_of = 0.0, None
            for data in state["awards"]:
                if data.get("expires_at") is None:
                    value, as_of = scoring.add_decaying(value, as_of, data["points"], data["at"],
                                                        model.half_life_seconds)
            horizon = state["as_of"]
            if as_of is not None and horizon is not None and horizon > as_of:
                value = scoring.decayed(value, as_of, horizon, model.half_life_seconds)
                as_of = horizon
            state["value"], state["as_of"] = value, as_of or horizon
            fit = scoring.fit_awards_of(model.fit, self.profile)
            state["fit"] = sum(p for _, p in fit)
            state["fit_awards"] = [list(a) for a in fit]

    def check_models(self, rules: Rules, when: datetime) -> None:
        """Record each named model's threshold crossing at ``when`` (the lead's horizon):
        up when its score reached the threshold, down when points took it below (decay
        below it is found by ``next_due``, at its exact time)."""
        for model_id, model in rules.models.items():
            state = self.model_states.get(model_id)
            above = bool(state and state["above"])
            at = when
            if state is not None and state["crossed_at"] is not None:
                at = max(at, state["crossed_at"])  # never before its last crossing
            score = self.model_score_at(model_id, at, model.half_life_seconds)
            if not above and score >= model.threshold:
                self.cross_model_threshold(model_id, "up", at, rules)
            elif above and score < model.threshold:
                self.cross_model_threshold(model_id, "down", at, rules)

    def cross_model_threshold(self, model_id: str, direction: str, at: datetime,
                              rules: Rules) -> None:
        model = rules.models[model_id]
        score = self.model_score_at(model_id, at, model.half_life_seconds)
        self._emit(self.ModelThresholdCrossed, model=model_id, direction=direction,
                   score=score, threshold=model.threshold, occurred_at=at,
                   rules_version=rules.version)

    class ModelThresholdCrossed(events.Event):
        """A named model's score reached its threshold (``up``) or fell below it
        (``down``: decay, expiry or negative points) at ``occurred_at``."""

        model: str
        direction: str
        score: float
        threshold: float
        occurred_at: datetime
        rules_version: str

        def apply(self, aggregate: Any) -> None:
            state = aggregate._model_state(self.model)
            state["above"] = self.direction == "up"
            state["crossed_at"] = self.occurred_at
            super().apply(aggregate)

    def backfill_model(self, model_id: str, rules: Rules,
                       touchpoints: Sequence[tuple[str, str, datetime, Mapping[str, Any]]],
                       until: datetime, actor: str) -> bool:
        """Score this lead's whole recorded history (``touchpoints``: event id, type, time,
        context, in time order; merged leads' and absorbed interests' included) with the
        named model ``model_id`` of ``rules``, a model added or changed by a rules
        publication: one ``ModelBackfilled`` event holds its points, fit and crossings up to
        ``until``, and stands for the model's state from then on. Nothing earlier is
        rewritten. Returns False (nothing recorded) when the lead's state already is that."""
        replay = scoring.replay_model(rules.models[model_id], self.profile, touchpoints,
                                      self.created_at, until)
        awards = [a.to_dict() for a in replay.awards]
        crossings = [{"direction": d, "at": at, "score": score}
                     for d, at, score in replay.crossings]
        state = self.model_states.get(model_id)
        last = replay.crossings[-1] if replay.crossings else None
        if state is None and not awards and not replay.fit_awards and last is None:
            return False
        if state is not None and state["awards"] == awards and state["fit_awards"] == [
                list(a) for a in replay.fit_awards] and state["above"] == bool(
                last and last[0] == "up"):
            return False
        self._emit(self.ModelBackfilled, model=model_id, rules_version=rules.version,
                   awards=awards, fit=replay.fit,
                   fit_awards=[list(a) for a in replay.fit_awards],
                   engagement_value=replay.value, engagement_as_of=replay.as_of,
                   crossings=crossings, occurred_at=until, actor=actor)
        return True

    class ModelBackfilled(events.Event):
        """A named model's points for the lead's whole recorded history, computed when a
        rules publication (``rescore --apply``) added or changed the model: its ``awards``,
        ``fit``/``fit_awards``, decaying engagement and its threshold ``crossings``
        (direction, at, score) up to ``occurred_at``; ``actor`` published the rules. It
        replaces the model's state; the events before it stay as they were recorded."""

        model: str
        rules_version: str
        awards: list[dict[str, Any]]
        fit: float
        fit_awards: list[list[Any]]
        engagement_value: float
        engagement_as_of: datetime | None
        crossings: list[dict[str, Any]]
        occurred_at: datetime
        actor: str  # who published the rules

        def apply(self, aggregate: Any) -> None:
            lead: Any = aggregate
            lead.model_states.pop(self.model, None)
            state = lead._model_state(self.model)
            for data in self.awards:
                state["awards"].append(data)
                rule = data["rule"]
                state["counts"][rule] = state["counts"].get(rule, 0) + 1
                state["totals"][rule] = state["totals"].get(rule, 0.0) + data["points"]
            state["value"] = self.engagement_value
            state["as_of"] = self.engagement_as_of
            state["fit"] = self.fit
            state["fit_awards"] = [[str(r), float(p)] for r, p in self.fit_awards]
            if self.crossings:
                state["above"] = self.crossings[-1]["direction"] == "up"
                state["crossed_at"] = self.crossings[-1]["at"]
            super().apply(aggregate)

    def _absorb_models(self, other: Any, profile: Mapping[str, Any], at: datetime,
                       event_id: str, rules: Rules) -> None:
        """The merged lead's points of each named model, and each model's fit on the
        merged profile."""
        changes = self._refit_models(rules, at, event_id, profile)
        for model_id, model in rules.models.items():
            theirs = other.model_states.get(model_id)
            if not theirs or not theirs["awards"]:
                continue
            mine = self.model_states.get(model_id)
            value, as_of = scoring.merge_decaying(
                (mine["value"], mine["as_of"]) if mine else (0.0, None),
                (theirs["value"], theirs["as_of"]), model.half_life_seconds)
            changes.setdefault(model_id, {}).update(
                awards=list(theirs["awards"]), engagement_value=value, engagement_as_of=as_of)
        self._models_scored(changes, at, event_id, rules)
