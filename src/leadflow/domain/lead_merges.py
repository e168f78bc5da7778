"""A lead taking over what is known of the same person elsewhere: another lead (a merge,
and its undoing) or an anonymous visitor's earlier touchpoints (interest absorbed).

``LeadMerges`` is a base of ``Lead`` (domain/lead.py), as ``NamedModels`` and
``LeadQueries`` are. Its events are explicit classes: the library redefines each on ``Lead``
as ``Lead.<Name>`` (a subclass of ``Lead.Event`` and of the class here), so their stored
topics are ``leadflow.domain:Lead.<Name>`` as before this module existed (``stable_topics``;
a test pins them). ``MergedInto``, ``Absorbed``, ``Unmerged`` and ``StateRestored`` were
``@event`` methods: the same fields, in the same order, so stored events read as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from leadflow.domain import events, scoring
from leadflow.domain.errors import LeadMergedError
from leadflow.domain.lead_state import SeenIds
from leadflow.domain.rules import Rules
from leadflow.domain.scoring import Award

# Fields an unmerge does not reset: plumbing that the engine re-synchronises itself.
_NOT_RESTORED = frozenset({"load_rep", "wake_at", "chain_head"})


class LeadMerges:
    """A lead's merges, unmerges and absorbed interest (see the module's doc)."""

    __slots__ = ()

    if TYPE_CHECKING:  # the lead's own attributes and methods these use (domain/lead.py)
        __dict__: dict[str, Any]
        merged_into: UUID | None
        seen: SeenIds
        eng_value: float
        eng_as_of: datetime | None
        profile: dict[str, Any]
        identity_keys: list[str]
        awards: list[Award]
        rule_counts: dict[str, int]
        rule_totals: dict[str, float]
        touchpoints: int
        last_touch_at: datetime | None
        fit_awards: list[tuple[str, float]]

        @property
        def id(self) -> UUID: ...

        # Lead's take its own event classes (``type[Lead.Event]``), as these are on it.
        def _emit(self, event_class: Any, **fields: Any) -> None: ...
        def state(self) -> dict[str, Any]: ...
        def _with_awards(self, awards: Sequence[Award], at: datetime,
                         rules: Rules) -> tuple[float, datetime]: ...
        def _score_models(self, rules: Rules, touchpoints: Any, at: datetime,
                          event_id: str | None) -> None: ...
        def _absorb_models(self, other: Any, profile: dict[str, Any], at: datetime,
                           event_id: str, rules: Rules) -> None: ...

    # ----- merging another lead in

    def merge_into(self, survivor_id: UUID, occurred_at: datetime, event_id: str) -> None:
        if self.merged_into is not None:
            raise LeadMergedError(f"lead {self.id} is already merged into {self.merged_into}")
        self._emit(self.MergedInto, survivor_id=survivor_id, occurred_at=occurred_at,
                   event_id=event_id)

    class MergedInto(events.Event):
        survivor_id: UUID
        occurred_at: datetime
        event_id: str

        def apply(self, aggregate: Any) -> None:
            aggregate.merged_into = self.survivor_id
            aggregate.wake_at = None
            super().apply(aggregate)

    def absorb(self, other: Any, occurred_at: datetime, event_id: str, rules: Rules) -> None:
        """Take over another lead's identities, points, history ids and profile gaps."""
        value, as_of = scoring.merge_decaying(
            (self.eng_value, self.eng_as_of), (other.eng_value, other.eng_as_of),
            rules.half_life_seconds,
        )
        profile = {**other.profile, **self.profile}
        fit = scoring.fit_awards(rules, profile)
        last_touch = max((t for t in (self.last_touch_at, other.last_touch_at) if t),
                         default=None)
        self._emit(
            self.Absorbed,
            lead_id=other.id, identity_keys=list(other.identity_keys),
            awards=[a.to_dict() for a in other.awards], engagement_value=value,
            engagement_as_of=as_of, profile=profile, fit=sum(p for _, p in fit),
            fit_awards=[list(a) for a in fit], seen=sorted(other.seen),
            touchpoints=other.touchpoints, last_touch_at=last_touch,
            occurred_at=occurred_at, event_id=event_id, rules_version=rules.version,
        )
        if rules.models:
            self._absorb_models(other, profile, occurred_at, event_id, rules)

    class Absorbed(events.Event):
        lead_id: UUID
        identity_keys: list[str]
        awards: list[dict[str, Any]]
        engagement_value: float
        engagement_as_of: datetime | None
        profile: dict[str, Any]
        fit: float
        fit_awards: list[list[Any]]
        seen: list[str]
        touchpoints: int
        last_touch_at: datetime | None
        occurred_at: datetime
        event_id: str
        rules_version: str

        def apply(self, aggregate: Any) -> None:
            lead = aggregate
            lead.merged_from.append(self.lead_id)
            for key in self.identity_keys:  # empty once the person is forgotten
                if key not in lead.identity_keys:
                    lead.identity_keys.append(key)
            for data in self.awards:
                award = Award.from_dict(data)
                lead.awards.append(award)
                lead.rule_counts[award.rule] = lead.rule_counts.get(award.rule, 0) + 1
                lead.rule_totals[award.rule] = (lead.rule_totals.get(award.rule, 0.0)
                                                + award.points)
            lead.eng_value = self.engagement_value
            lead.eng_as_of = self.engagement_as_of
            lead.profile = self.profile
            lead.fit = self.fit
            lead.fit_awards = [(str(r), float(p)) for r, p in self.fit_awards]
            lead.seen.update(self.seen)
            lead.touchpoints += self.touchpoints
            lead.last_touch_at = self.last_touch_at
            if self.last_touch_at is not None:
                lead.dormant = False
            super().apply(aggregate)

    # ----- undoing a merge

    def unmerge(self, survivor_id: UUID, occurred_at: datetime, actor: str) -> None:
        if self.merged_into != survivor_id:
            raise LeadMergedError(f"lead {self.id} is not merged into {survivor_id}")
        self._emit(self.Unmerged, survivor_id=survivor_id, occurred_at=occurred_at,
                   actor=actor)

    class Unmerged(events.Event):
        survivor_id: UUID
        occurred_at: datetime
        actor: str

        def apply(self, aggregate: Any) -> None:
            aggregate.merged_into = None
            super().apply(aggregate)

    def restore(self, recomputed: Any, released_lead: UUID, occurred_at: datetime,
                actor: str) -> None:
        """Take the state recomputed from this lead's own events (undoing a merge)."""
        state = {k: v for k, v in recomputed.state().items()
                 if not k.startswith("_") and k not in _NOT_RESTORED}
        state["awards"] = [a.to_dict() for a in recomputed.awards]
        state["seen"] = sorted(recomputed.seen)
        state["fit_awards"] = [list(a) for a in recomputed.fit_awards]
        if "_models" in self.__dict__ or "_models" in recomputed.__dict__:
            state["_models"] = recomputed.model_states  # the named models' state too
        self._emit(self.StateRestored, state=state, released_lead=released_lead,
                   occurred_at=occurred_at, actor=actor)

    class StateRestored(events.Event):
        state: dict[str, Any]
        released_lead: UUID
        occurred_at: datetime
        actor: str

        def apply(self, aggregate: Any) -> None:
            state = self.state
            for key, value in state.items():
                setattr(aggregate, key, value)
            aggregate.awards = [Award.from_dict(a) for a in state["awards"]]
            aggregate.seen = SeenIds(state["seen"])
            aggregate.fit_awards = [(str(r), float(p)) for r, p in state["fit_awards"]]
            super().apply(aggregate)

    # ----- an anonymous visitor's touchpoints

    def absorb_interest(self, anonymous_id: str | None, touchpoints: list[dict[str, Any]],
                        occurred_at: datetime, rules: Rules,
                        interest_id: UUID | None = None) -> None:
        """Score an anonymous visitor's earlier touchpoints now that we know who it was."""
        awards: list[Award] = []
        counts, totals = dict(self.rule_counts), dict(self.rule_totals)
        unseen = [(tp["event_id"], tp["type"], tp["occurred_at"], tp["context"])
                  for tp in touchpoints if tp["event_id"] not in self.seen]
        for tp in touchpoints:
            if tp["event_id"] in self.seen:
                continue
            for award in scoring.score_touchpoint(rules, tp["type"], tp["context"],
                                                  tp["occurred_at"], tp["event_id"],
                                                  counts, totals):
                counts[award.rule] = counts.get(award.rule, 0) + 1
                totals[award.rule] = totals.get(award.rule, 0.0) + award.points
                awards.append(award)
        value, as_of = self._with_awards(awards, occurred_at, rules)
        last = max((tp["occurred_at"] for tp in touchpoints), default=None)
        self._emit(
            self.InterestAbsorbed,
            anonymous_id=anonymous_id, event_ids=[tp["event_id"] for tp in touchpoints],
            awards=[a.to_dict() for a in awards], engagement_value=value,
            engagement_as_of=as_of, last_touch_at=last, occurred_at=occurred_at,
            rules_version=rules.version, interest_id=interest_id,
        )
        if rules.models and unseen:
            self._score_models(rules, unseen, occurred_at, None)

    class InterestAbsorbed(events.Event):
        anonymous_id: str | None
        event_ids: list[str]
        awards: list[dict[str, Any]]
        engagement_value: float
        engagement_as_of: datetime
        last_touch_at: datetime | None
        occurred_at: datetime
        rules_version: str
        # Added later: an event stored before lacks it and reads None (the class attribute),
        # as the @event method's default gave.
        interest_id: UUID | None = None

        def apply(self, aggregate: Any) -> None:
            lead = aggregate
            event_ids = self.event_ids
            lead.seen.update(event_ids)
            interest_id = self.interest_id
            if interest_id is not None:
                lead.interests = [*getattr(lead, "interests", []), interest_id]
            lead._apply_awards(self.awards, self.engagement_value, self.engagement_as_of)
            lead.touchpoints += len(event_ids)
            last_touch_at = self.last_touch_at
            if last_touch_at and (lead.last_touch_at is None
                                  or last_touch_at > lead.last_touch_at):
                lead.last_touch_at = last_touch_at
            super().apply(aggregate)
