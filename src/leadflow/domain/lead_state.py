"""What a lead's state says, read without changing it: its score and engagement at a time,
its stage and owner on a date, the next time-driven transition it is heading for; and the
list of record ids it has taken (``SeenIds``).

``LeadQueries`` is a base of ``Lead`` (domain/lead.py), as ``NamedModels`` is: the lead's
commands and events stay there, the pure readings of their results are here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from leadflow.domain import scoring
from leadflow.domain.rules import Rules
from leadflow.domain.scoring import Award
from leadflow.domain.vocabulary import DORMANCY_STAGES, SLA_STAGES

#: ``LeadQueries._expiring``'s cache, in the instance dict: derived, so not part of
#: ``Lead.state()``.
EXPIRING = "_expiring_cache"
#: Where ``next_due`` keeps its last answer (a derived cache, as ``EXPIRING``).
NEXT_DUE = "_next_due_cache"


class SeenIds(list[str]):
    """The ids of the records a lead has taken (its touchpoints and dispositions, a merged
    lead's, an absorbed interest's), each once, in the order taken.

    A list, not a set: a set of 5 to 18 strings is a 32-entry table (728 bytes), of 19 to 76
    a 128-entry one (2,264), against 8 bytes an id here, for every cached lead. A lead takes
    tens of records, so the linear ``in`` (in C) stays cheap. Beyond ``INDEXED`` ids a set
    is kept beside the list, so a lead that takes thousands of records (a bot's page views)
    does not make each new one scan all it took before.
    """

    __slots__ = ("_index",)
    INDEXED = 64

    def __init__(self, event_ids: Iterable[str] = ()) -> None:
        super().__init__()
        self._index: set[str] | None = None
        self.update(event_ids)

    def __contains__(self, event_id: object) -> bool:
        index = self._index
        return list.__contains__(self, event_id) if index is None else event_id in index

    def add(self, event_id: str) -> None:
        if event_id not in self:
            self.append(event_id)
            index = self._index
            if index is not None:
                index.add(event_id)
            elif len(self) > self.INDEXED:
                self._index = set(self)

    def update(self, event_ids: Iterable[str]) -> None:
        for event_id in event_ids:
            self.add(event_id)


class LeadQueries:
    """The lead's pure queries on its state (see the module's doc)."""

    __slots__ = ()

    if TYPE_CHECKING:  # the lead's own attributes and methods these use (domain/lead.py)
        __dict__: dict[str, Any]
        fit: float
        eng_value: float
        eng_as_of: datetime | None
        awards: list[Award]
        created_at: datetime
        transitions: list[dict[str, Any]]
        owner_history: list[dict[str, Any]]
        merged_into: Any
        stage: str
        stage_at: datetime
        owner: str | None
        contacted_at: datetime | None
        assigned_at: datetime | None
        dormant: bool
        last_touch_at: datetime | None
        version: int

        def _model_decays(self, rules: Rules, states: dict[str, dict[str, Any]]
                          ) -> list[tuple[datetime, str]]: ...

    def score_at(self, when: datetime, half_life_s: float) -> float:
        return self.fit + self.engagement_at(when, half_life_s)

    def engagement_at(self, when: datetime, half_life_s: float) -> float:
        if self.eng_as_of is not None and when >= self.eng_as_of:
            # The incremental state is exact from its as-of moment on.
            return scoring.decayed(self.eng_value, self.eng_as_of, when, half_life_s) + (
                scoring.expiring_total(self._expiring(), when)
            )
        return sum(a.value_at(when, half_life_s) for a in self.awards)

    def _expiring(self) -> tuple[Award, ...]:
        """The awards that expire instead of decaying.

        Asked for several times a record (score, next due time, the touchpoint's event), and
        a lead's awards only grow (or are replaced: a restore, a replay), so the answer is
        kept with the awards list and length it was made from, and only new awards are
        scanned: a lead with hundreds of touchpoints no longer walks them all each time.
        A tuple (most leads have none: the shared empty tuple), so no caller can change it."""
        awards = self.awards
        own = self.__dict__
        cached = own.get(EXPIRING)
        if cached is not None and cached[0] is awards:
            seen: int = cached[1]
            found: tuple[Award, ...] = cached[2]
            if seen == len(awards):
                return found
            if seen < len(awards):
                found += tuple(a for a in awards[seen:] if a.expires_at is not None)
                own[EXPIRING] = (awards, len(awards), found)
                return found
        every = tuple(a for a in awards if a.expires_at is not None)
        own[EXPIRING] = (awards, len(awards), every)
        return every

    @property
    def horizon(self) -> datetime:
        """The latest event time this lead's scoring state knows about."""
        return self.eng_as_of or self.created_at

    def stage_on(self, when: datetime) -> str | None:
        stage = None
        for t in self.transitions:
            if t["at"] <= when:
                stage = t["to"]
        return stage

    def owner_on(self, when: datetime) -> str | None:
        owner = None
        for h in self.owner_history:
            if h["at"] <= when:
                owner = h["owner"]
        return owner

    def next_due(self, rules: Rules) -> tuple[datetime, str] | None:
        """The earliest time-driven transition this lead is heading for, if any.

        A function of the lead's state and the rules: asked when a record arrives (to catch
        up) and again when it is settled, so the answer is kept with the version it was made
        at and the rules' version (content hash): a lead's next record, at the version its
        last settle left, reuses it. Every change of state is an event, which moves the
        version."""
        own = self.__dict__
        cached = own.get(NEXT_DUE)
        version = self.version
        if cached is not None and cached[0] == version and cached[1] == rules.version:
            due: tuple[datetime, str] | None = cached[2]
            return due
        due = self._next_due(rules)
        own[NEXT_DUE] = (version, rules.version, due)
        return due

    def _next_due(self, rules: Rules) -> tuple[datetime, str] | None:
        candidates: list[tuple[datetime, str]] = []
        if self.merged_into is not None:
            return None
        if self.stage == "mql":
            start = max(self.stage_at, self.horizon)
            below = scoring.first_time_below(
                rules.scoring.recycle_threshold, self.fit, self.eng_value, self.eng_as_of,
                self._expiring(), start, rules.half_life_seconds,
            )
            if below is not None:
                candidates.append((below, "decay"))
        if self.owner and self.contacted_at is None and self.stage in SLA_STAGES and \
                self.assigned_at is not None:
            candidates.append((
                self.assigned_at + timedelta(hours=rules.routing.first_contact_sla_hours), "sla"
            ))
        if not self.dormant and self.stage in DORMANCY_STAGES:
            last = self.last_touch_at or self.created_at
            candidates.append((last + timedelta(days=rules.lifecycle.dormant_after_days),
                               "dormant"))
        states = self.__dict__.get("_models")
        if states:
            candidates += self._model_decays(rules, states)
        return min(candidates) if candidates else None

    def _with_awards(self, awards: Sequence[Award], at: datetime,
                     rules: Rules) -> tuple[float, datetime]:
        value, as_of = self.eng_value, self.eng_as_of
        for award in awards:
            if award.expires_at is None:
                value, as_of = scoring.add_decaying(value, as_of, award.points, award.at,
                                                    rules.half_life_seconds)
        if as_of is None or at > as_of:
            value = scoring.decayed(value, as_of, at, rules.half_life_seconds)
            as_of = at
        return value, as_of
