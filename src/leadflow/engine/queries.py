"""The engine's queries: leads by key or id, their views at an event time, bulk replays.

Queries return frozen DTOs (engine/views.py), never live aggregates; bulk readers (duplicate
suggestions, rescore) get replayed leads that are not cached.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

# Aggregates other than the lead are read from the package where used (``domain.Account``):
# importing one defines its event classes, which `lead show` should not pay for
# (leadflow.domain).
from leadflow import domain
from leadflow.domain import Lead, UnknownLeadError
from leadflow.domain.ids import rule_book_id
from leadflow.domain.rules import Rules
from leadflow.domain.scoring import Award
from leadflow.engine.core import AppCore
from leadflow.engine.unit import INFRASTRUCTURE_ERRORS, unloadable
from leadflow.engine.views import (
    LeadView,
    ModelScore,
    RuleContribution,
)
from leadflow.logs import get_logger
from leadflow.store.bookkeeping import routing_state
from leadflow.store.fold import OPENED, envelope_topics

if TYPE_CHECKING:
    # Annotations only: the chain module loads when something is written or verified
    # (store/codec.py).
    from leadflow.store.chain import LeadVerification

log = get_logger(__name__)  # structlog imported on the first log call


class Queries(AppCore):
    """Read-side use cases of ``LeadflowApp``."""

    def resolve(self, key_or_id: str | UUID) -> UUID:
        """The live lead for an identity key (``email:…``) or lead id, following merges."""
        if isinstance(key_or_id, UUID):
            lead_id = key_or_id
        else:
            try:
                lead_id = UUID(key_or_id)
            except ValueError:
                index = self.directory.lookup([key_or_id]).get(key_or_id)
                if index is None:
                    raise UnknownLeadError(f"no lead known by {key_or_id!r}") from None
                if index.is_interest:
                    raise UnknownLeadError(
                        f"{key_or_id!r} is anonymous interest, not yet linked to a person"
                    ) from None
                lead_id = index.target_id
        for _ in range(32):
            lead: Lead = self._get_lead(lead_id)
            if lead.merged_into is None:
                return lead.id
            lead_id = lead.merged_into
        raise UnknownLeadError(f"merge chain too long from {key_or_id!r}")

    def _load(self, aggregate_id: UUID, kind: str) -> Any:
        """``repository.get``, with a damaged store named (AggregateUnloadableError)."""
        with unloadable(aggregate_id, kind):
            return self.repository.get(aggregate_id)

    def _get_lead(self, lead_id: UUID) -> Lead:
        try:
            lead: Any = self._load(lead_id, "lead")
        except AggregateNotFoundError:
            raise UnknownLeadError(f"no lead with id {lead_id}") from None
        if not isinstance(lead, Lead):
            raise UnknownLeadError(f"{lead_id} is not a lead")
        return lead

    def lead(self, key_or_id: str | UUID, at: datetime | None = None) -> LeadView:
        """Stage, owner and score breakdown of a lead at event time ``at``."""
        lead = self._get_lead(self.resolve(key_or_id))
        when = at or lead.horizon
        half_life = self.rules.half_life_seconds
        breakdown = _breakdown(lead.fit_awards, lead.awards, when, half_life)
        engagement = lead.engagement_at(when, half_life)
        models = _model_scores(lead, self.rules, when) if self.rules.models else {}
        return LeadView(
            lead_id=lead.id, primary_key=lead.primary_key,
            identities=tuple(lead.identity_keys), at=when, stage=lead.stage_on(when),
            stage_now=lead.stage, owner=lead.owner_on(when) if at else lead.owner,
            team=lead.team, in_pool=lead.in_pool, fit=lead.fit, engagement=engagement,
            score=lead.fit + engagement, breakdown=tuple(breakdown),
            created_at=lead.created_at, source=lead.source, campaign=lead.campaign,
            account_id=lead.account_id, dormant=lead.dormant, touchpoints=lead.touchpoints,
            last_touch_at=lead.last_touch_at, merged_from=tuple(lead.merged_from),
            transitions=tuple(dict(t) for t in lead.transitions), profile=dict(lead.profile),
            forgotten=getattr(lead, "forgotten", False), models=models,
        )

    def lead_ids(self, batch: int = 1000) -> Iterator[UUID]:
        """Every lead ever created (merged ones included), from the notification log."""
        created = get_topic(Lead.Created)
        for notification in self.notifications([created, created.rsplit(".", 1)[0] + OPENED],
                                               batch):
            yield UUID(str(notification.originator_id))

    def notifications(self, topics: Sequence[str], batch: int = 1000) -> Iterator[Any]:
        """Every stored row with one of ``topics``, in recorded order, read in pages."""
        start = 1
        while True:
            page = self.recorder.select_notifications(start, batch, topics=list(topics))
            if not page:
                return
            yield from page
            start = page[-1].id + 1

    def replay_leads(self, lead_ids: list[UUID]) -> list[Lead]:
        """Many leads replayed from their stored events in one query (personal values
        opened), for bulk readers such as duplicate suggestions; not cached. Leads whose
        events cannot be loaded are left out (``verify`` names them)."""
        out: list[Lead] = []
        stored = self.codec.select_many(lead_ids)
        for aggregate_id, lead, exc in self._replayed(stored, list(stored)):
            if exc is not None:
                log.warning("lead cannot be loaded; left out", lead_id=str(aggregate_id),
                            error=f"{type(exc).__name__}: {exc}")
            elif isinstance(lead, Lead):
                out.append(lead)
        return out

    def _replayed(self, stored: dict[UUID, list[StoredEvent]], ids: Sequence[UUID]
                  ) -> Iterator[tuple[UUID, Any, Exception | None]]:
        """Each of ``ids`` with stored rows, replayed: (id, aggregate, None), or (id, None,
        why) when its rows cannot be decoded or replayed (a store edited outside leadflow).
        Failures of the database or the machine are raised."""
        expand = self.codec.expander.expand
        for aggregate_id in ids:
            rows = stored.get(aggregate_id)
            if not rows:
                continue
            aggregate: Any = None
            try:
                for row in rows:
                    for event in expand(row):
                        aggregate = event.mutate(aggregate)
            except INFRASTRUCTURE_ERRORS:
                raise
            except Exception as exc:
                yield aggregate_id, None, exc
                continue
            yield aggregate_id, aggregate, None

    def duplicate_decisions(self, batch: int = 1000) -> list[dict[str, Any]]:
        """What people decided about pairs of leads (``dedupe reject``, ``merge``), one
        entry per pair: its leads, and the standing rejection and last confirmation (who,
        when, why), from the ``DuplicatePair`` events."""
        prefix = get_topic(domain.DuplicatePair)
        topics = [*envelope_topics(prefix), *(get_topic(getattr(domain.DuplicatePair, name))
                                              for name in ("Created", "Rejected", "Confirmed"))]
        pairs: dict[UUID, Any] = {}
        for notification in self.notifications(topics, batch):
            for item in self.codec.expander.expand(notification):
                pairs[item.originator_id] = item.mutate(pairs.get(item.originator_id))
        return [{"lead_a": p.lead_a, "lead_b": p.lead_b, "rejected": p.rejected,
                 "confirmed": p.confirmed} for p in pairs.values()]

    def rejected_pairs(self) -> list[tuple[UUID, UUID]]:
        """Pairs of leads people said are two people (``dedupe reject``), still standing."""
        return [(d["lead_a"], d["lead_b"]) for d in self.duplicate_decisions()
                if d["rejected"] is not None]

    def rep_load(self) -> dict[str, int]:
        """Leads each rep is working, from the store's routing counters (a rep who had leads
        and has none now is listed with 0)."""
        return routing_state(self.indexes.select_counters())[0]

    def clock_position(self) -> datetime | None:
        try:
            clock: Any = self.repository.get(domain.Clock.create_id())
        except AggregateNotFoundError:
            return None
        assert isinstance(clock, domain.Clock)
        return clock.position

    def published_rules(self) -> dict[str, Any] | None:
        try:
            # By id: the RuleBook class is imported only if there is one to replay.
            book: Any = self.repository.get(rule_book_id())
        except AggregateNotFoundError:
            return None
        return dict(book.current) if book.current else None

    def verify(self, aggregate_id: UUID) -> LeadVerification:
        """Recompute an aggregate's keyed chain from its stored rows (no cache, no domain)."""
        return self.codec.verify(aggregate_id)


def _breakdown(fit_awards: Iterable[tuple[str, float]], awards: Iterable[Award],
               when: datetime, half_life: float) -> list[RuleContribution]:
    """A score's contributions at ``when``: each fit rule, then each engagement rule's points
    and decayed value (largest first), for the primary model and the named ones alike."""
    per_rule: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for award in awards:
        if award.at > when:
            continue
        entry = per_rule.setdefault(award.rule, [0.0, 0.0])
        entry[0] += award.points
        entry[1] += award.value_at(when, half_life)
        counts[award.rule] = counts.get(award.rule, 0) + 1
    breakdown = [RuleContribution(rule, "fit", points, points, 1) for rule, points in fit_awards]
    breakdown += [RuleContribution(rule, "engagement", v[0], v[1], counts[rule])
                  for rule, v in sorted(per_rule.items(), key=lambda kv: -kv[1][1])]
    return breakdown


def _model_scores(lead: Lead, rules: Rules, when: datetime) -> dict[str, ModelScore]:
    """Each named model's score of ``lead`` at event time ``when``, with its breakdown."""
    scores: dict[str, ModelScore] = {}
    for model_id, model in rules.models.items():
        state = lead.model_states.get(model_id)
        half_life = model.half_life_seconds
        breakdown = _breakdown(
            [(str(rule), float(points)) for rule, points in state["fit_awards"]]
            if state else [],
            [Award.from_dict(data) for data in state["awards"]] if state else [],
            when, half_life)
        fit = float(state["fit"]) if state else 0.0
        engagement = lead.model_engagement_at(model_id, when, half_life)
        scores[model_id] = ModelScore(fit=fit, engagement=engagement, score=fit + engagement,
                                      threshold=model.threshold, breakdown=tuple(breakdown))
    return scores
