"""The Lead aggregate: a person with a lifecycle stage, a score and an owner."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.domain import Aggregate, datetime_now_with_tzinfo, event

from leadflow.domain import events, scoring
from leadflow.domain.errors import LeadForgottenError
from leadflow.domain.ids import lead_id_for
from leadflow.domain.lead_merges import LeadMerges
from leadflow.domain.lead_models import NamedModels
from leadflow.domain.lead_state import EXPIRING, NEXT_DUE, LeadQueries, SeenIds
from leadflow.domain.privacy import PERSONAL_PROFILE_FIELDS, public_url
from leadflow.domain.rules import Rules
from leadflow.domain.scoring import Award
from leadflow.domain.topics import stable_topics
from leadflow.domain.vocabulary import STAGES

_UNSET: Any = object()
_NOT_STATE = frozenset({"_models", EXPIRING, NEXT_DUE})  # derived caches, not ``state()``


class Lead(Aggregate, NamedModels, LeadMerges, LeadQueries):
    """A person who showed interest, with at least one way to reach them."""

    # The lead's own attributes live in slots, in ``__init__``'s order; the library's (``_id``,
    # ``_version``…) and the rare ``_models`` stay in the instance dict. With 45 attributes
    # the dict was a 128-entry table (1,584 bytes a lead; Python shares keys between
    # instances only up to 30), the cache's largest single cost: ~100,000 leads are live at
    # the end of the default stream. ``state`` reads both, in the order ``vars`` gave (so
    # the slots are listed in ``__init__``'s order, not sorted).
    __slots__ = (  # noqa: RUF023
        "primary_key", "identity_keys", "created_at", "source", "campaign", "landing_page",
        "account_id", "stage", "stage_at", "stage_reason", "transitions", "first_reached",
        "profile", "fit", "fit_awards", "eng_value", "eng_as_of", "awards", "rule_counts",
        "rule_totals", "seen", "touchpoints", "last_touch_at", "owner", "team", "assigned_at",
        "in_pool", "load_rep", "contacted_at", "sla_breached_by", "owner_history",
        "deal_owner", "links", "dormant", "wake_at", "merged_into", "merged_from", "interests",
        "chain_head", "forgotten",
    )

    def state(self) -> dict[str, Any]:
        """Every attribute set on the lead, by name, as ``vars`` read them before the slots:
        the library's, the lead's own in ``__init__``'s order, then ``_models`` if any."""
        own = self.__dict__
        state = {k: v for k, v in own.items() if k not in _NOT_STATE}
        for name in Lead.__slots__:
            value = getattr(self, name, _UNSET)
            if value is not _UNSET:
                state[name] = value
        if "_models" in own:
            state["_models"] = own["_models"]
        return state

    def __eq__(self, other: object) -> bool:
        # The library's compares ``__dict__`` alone, which no longer holds the lead's state.
        return type(self) is type(other) and self.state() == other.state()

    __hash__ = None  # type: ignore[assignment]  # as the library's Aggregate: unhashable

    def __repr__(self) -> str:
        attrs = [f"{k.lstrip('_')}={v!r}" for k, v in self.state().items()
                 if k != "_pending_events"]
        return f"{type(self).__name__}({', '.join(attrs)})"

    class Event(events.Event):
        """Base of the lead's events: replaying one remembers its tamper-evidence link."""

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            # The link is added at commit (store.codec.EventCodec.stored), so a freshly
            # triggered event has none yet: only a replayed (stored) event moves the head.
            chain = self.__dict__.get("chain")
            if chain is not None:
                aggregate.chain_head = chain

    @staticmethod
    def create_id(origin: str | None = None) -> UUID:
        # From the creating record's event id, never from the email (see ids.py); a lead
        # made by hand (tests, tools) gets a random id.
        return lead_id_for(origin) if origin else uuid4()

    def _emit(self, event_class: type[Lead.Event], **fields: Any) -> None:
        """``trigger_event`` without its generic costs, for the lead's explicit event classes.

        The same event results: the next version, the library's timestamp, ``apply`` before
        the version moves, appended to the pending events. Skipped: the dataclass constructor
        (one frozen-attribute write per field) and the checks that cannot fail here (the
        event is built for this aggregate at its next version; topics are registered at
        import by ``stable_topics``).
        """
        version = self.version + 1
        fields["originator_id"] = self.id
        fields["originator_version"] = version
        fields["timestamp"] = now = datetime_now_with_tzinfo()
        new_event = object.__new__(event_class)
        object.__setattr__(new_event, "__dict__", fields)
        new_event.apply(self)
        self.version = version
        self.modified_on = now
        self._pending_events.append(new_event)

    @event("Created")
    def __init__(
        self,
        primary_key: str | None,
        created_at: datetime,
        source: str | None,
        campaign: str | None,
        landing_page: str | None,
        account_id: UUID | None,
        origin: str | None = None,
    ) -> None:
        # None once the person is forgotten (the value was encrypted with a deleted key).
        self.primary_key = primary_key
        self.identity_keys: list[str] = [primary_key] if primary_key is not None else []
        self.created_at = created_at
        self.source = source
        self.campaign = campaign
        self.landing_page = landing_page
        self.account_id = account_id
        self.stage = "new"
        self.stage_at = created_at
        self.stage_reason: str | None = None
        self.transitions: list[dict[str, Any]] = [
            {"at": created_at, "from": None, "to": "new", "actor": "system", "reason": None}
        ]
        self.first_reached: dict[str, datetime] = {"new": created_at}
        self.profile: dict[str, Any] = {}
        self.fit = 0.0
        self.fit_awards: list[tuple[str, float]] = []
        self.eng_value = 0.0
        self.eng_as_of: datetime | None = None
        self.awards: list[Award] = []
        self.rule_counts: dict[str, int] = {}
        self.rule_totals: dict[str, float] = {}
        self.seen = SeenIds()
        self.touchpoints = 0
        self.last_touch_at: datetime | None = None
        self.owner: str | None = None
        self.team: str | None = None
        self.assigned_at: datetime | None = None
        self.in_pool = False
        self.load_rep: str | None = None
        self.contacted_at: datetime | None = None
        self.sla_breached_by: list[str] = []
        self.owner_history: list[dict[str, Any]] = []
        self.deal_owner: str | None = None
        self.links: dict[str, Any] = {}
        self.dormant = False
        self.wake_at: datetime | None = None
        self.merged_into: UUID | None = None
        self.merged_from: list[UUID] = []
        # Anonymous interests absorbed (their data keys are shredded with the lead's).
        self.interests: list[UUID] = []
        # Newest tamper-evidence link (set at commit and on replay, see audit.py).
        self.chain_head: str | None = None
        self.forgotten = False

    # ----- commands (decide, then record) -----

    def add_identity(self, key: str, occurred_at: datetime) -> None:
        if key not in self.identity_keys:
            self._emit(self.IdentityAdded, key=key, occurred_at=occurred_at)

    # The frequent events are explicit classes rather than @event methods: the decorator's
    # per-call argument handling cost as much as the event itself (measured: ~2x).
    class IdentityAdded(Event):
        key: str
        occurred_at: datetime

        def apply(self, aggregate: Any) -> None:
            if self.key is not None:  # None: forgotten
                aggregate.identity_keys.append(self.key)
            super().apply(aggregate)

    def update_profile(self, changes: Mapping[str, Any], occurred_at: datetime, event_id: str,
                       rules: Rules) -> None:
        new = {k: v for k, v in changes.items() if self.profile.get(k) != v}
        if not new:
            return
        profile = {**self.profile, **new}
        fit = scoring.fit_awards(rules, profile)
        self._emit(
            self.ProfileUpdated, changes=new, fit=sum(p for _, p in fit),
            fit_awards=[list(a) for a in fit], occurred_at=occurred_at, event_id=event_id,
            rules_version=rules.version,
        )
        if rules.models:
            self._models_scored(self._refit_models(rules, occurred_at, event_id, profile),
                                occurred_at, event_id, rules)

    class ProfileUpdated(Event):
        changes: dict[str, Any]
        fit: float
        fit_awards: list[list[Any]]
        occurred_at: datetime
        event_id: str
        rules_version: str

        def apply(self, aggregate: Any) -> None:
            aggregate.profile.update(self.changes)
            aggregate.fit = self.fit
            aggregate.fit_awards = [(str(r), float(p)) for r, p in self.fit_awards]
            super().apply(aggregate)

    def set_account(self, account_id: UUID, occurred_at: datetime) -> None:
        if self.account_id is None:
            self._emit(self.AccountSet, account_id=account_id, occurred_at=occurred_at)

    class AccountSet(Event):
        account_id: UUID
        occurred_at: datetime

        def apply(self, aggregate: Any) -> None:
            aggregate.account_id = self.account_id
            super().apply(aggregate)

    def record_touchpoint(self, event_id: str, record_type: str, occurred_at: datetime,
                          context: dict[str, Any], rules: Rules,
                          actor: str | None = None) -> list[Award]:
        awards = scoring.score_touchpoint(rules, record_type, context, occurred_at, event_id,
                                          self.rule_counts, self.rule_totals)
        value, as_of = self._with_awards(awards, occurred_at, rules)
        score = self.fit + value + scoring.expiring_total(
            [*self._expiring(), *(a for a in awards if a.expires_at)], as_of)
        fields: dict[str, Any] = {}
        if actor is not None:  # the record's actor, as received (most records have none)
            fields["actor"] = actor
        self._emit(
            self.TouchpointScored,
            event_id=event_id, record_type=record_type, occurred_at=occurred_at,
            context=context, awards=[a.to_dict() for a in awards], engagement_value=value,
            engagement_as_of=as_of, score=score, rules_version=rules.version, **fields,
        )
        if rules.models:
            self._score_models(rules, [(event_id, record_type, occurred_at, context)],
                               occurred_at, event_id)
        return awards


    class TouchpointScored(Event):
        # An explicit event class rather than an @event method, as for the other frequent
        # events: the decorator's per-call argument handling cost more than the event itself.
        event_id: str
        record_type: str
        occurred_at: datetime
        context: dict[str, Any]
        awards: list[dict[str, Any]]
        engagement_value: float
        engagement_as_of: datetime
        score: float
        rules_version: str
        # ``actor`` (who did it, as the record said) is stored only when the record had one:
        # read it with ``__dict__.get("actor")``.

        def apply(self, aggregate: Any) -> None:
            lead: Lead = aggregate
            lead.seen.add(self.event_id)
            lead._apply_awards(self.awards, self.engagement_value, self.engagement_as_of)
            lead.touchpoints += 1
            if lead.last_touch_at is None or self.occurred_at > lead.last_touch_at:
                lead.last_touch_at = self.occurred_at
                lead.dormant = False
            super().apply(aggregate)

    def _apply_awards(self, awards: list[dict[str, Any]], value: float, as_of: datetime) -> None:
        for data in awards:
            award = Award.from_dict(data)
            self.awards.append(award)
            self.rule_counts[award.rule] = self.rule_counts.get(award.rule, 0) + 1
            self.rule_totals[award.rule] = self.rule_totals.get(award.rule, 0.0) + award.points
        self.eng_value = value
        self.eng_as_of = as_of

    def boost(self, rule_id: str, points: float, occurred_at: datetime, cause: str,
              rules: Rules) -> None:
        """Points that come from outside the lead's own touchpoints (an account surge)."""
        award = Award(rule_id, points, occurred_at, cause)
        value, as_of = self._with_awards([award], occurred_at, rules)
        self._emit(self.Boosted, awards=[award.to_dict()], engagement_value=value,
                           engagement_as_of=as_of, occurred_at=occurred_at, cause=cause,
                           rules_version=rules.version)

    class Boosted(Event):
        awards: list[dict[str, Any]]
        engagement_value: float
        engagement_as_of: datetime
        occurred_at: datetime
        cause: str
        rules_version: str

        def apply(self, aggregate: Any) -> None:
            aggregate._apply_awards(self.awards, self.engagement_value, self.engagement_as_of)
            super().apply(aggregate)

    def note_account_surge(self, account_id: UUID, lead_ids: list[UUID], window_days: float,
                           occurred_at: datetime) -> None:
        """This lead's record set off its account's surge (several of its people engaged in
        a short window): recorded here, in the record's row, not as an account event."""
        self._emit(self.AccountSurged, account_id=account_id, lead_ids=lead_ids,
                   window_days=window_days, occurred_at=occurred_at)

    class AccountSurged(Event):
        account_id: UUID
        lead_ids: list[UUID]
        window_days: float
        occurred_at: datetime

    def record_disposition(self, event_id: str, record_type: str, occurred_at: datetime,
                           actor: str | None, reason: str | None,
                           deal: dict[str, Any] | None, owner: str | None) -> None:
        self._emit(self.DispositionRecorded, event_id=event_id,
                           record_type=record_type, occurred_at=occurred_at, actor=actor,
                           reason=reason, deal=deal, owner=owner)

    class DispositionRecorded(Event):
        event_id: str
        record_type: str
        occurred_at: datetime
        actor: str | None
        reason: str | None
        deal: dict[str, Any] | None
        owner: str | None

        def apply(self, aggregate: Any) -> None:
            aggregate.seen.add(self.event_id)
            super().apply(aggregate)

    def change_stage(self, to_stage: str, occurred_at: datetime, actor: str,
                     reason: str | None, event_id: str | None = None,
                     links: dict[str, Any] | None = None) -> bool:
        if to_stage not in STAGES:
            raise ValueError(f"unknown stage {to_stage!r}")
        if to_stage == self.stage and not links:
            return False
        self._emit(self.StageChanged, from_stage=self.stage, to_stage=to_stage,
                           occurred_at=occurred_at, actor=actor, reason=reason,
                           event_id=event_id, links=links or {})
        return True

    class StageChanged(Event):
        from_stage: str
        to_stage: str
        occurred_at: datetime
        actor: str
        reason: str | None
        event_id: str | None
        links: dict[str, Any]

        def apply(self, aggregate: Any) -> None:
            lead: Lead = aggregate
            to_stage, at = self.to_stage, self.occurred_at
            lead.stage = to_stage
            lead.stage_at = at
            lead.stage_reason = self.reason
            lead.transitions.append({"at": at, "from": self.from_stage, "to": to_stage,
                                     "actor": self.actor, "reason": self.reason})
            lead.first_reached.setdefault(to_stage, at)
            lead.links.update(self.links)
            if to_stage in ("recycled", "disqualified"):
                # Back to marketing (or junk): the rep no longer owns it.
                lead.owner = None
                lead.team = None
                lead.in_pool = False
                lead.assigned_at = None
                lead.contacted_at = None
                lead.owner_history.append({"at": at, "owner": None})
            super().apply(aggregate)

    def assign_owner(self, owner: str | None, team: str | None, rule: str, strategy: str,
                     occurred_at: datetime, actor: str, reason: str | None) -> None:
        self._emit(self.OwnerAssigned, owner=owner, team=team, rule=rule,
                           strategy=strategy, previous_owner=self.owner,
                           occurred_at=occurred_at, actor=actor, reason=reason)

    class OwnerAssigned(Event):
        owner: str | None
        team: str | None
        rule: str
        strategy: str
        previous_owner: str | None
        occurred_at: datetime
        actor: str
        reason: str | None

        def apply(self, aggregate: Any) -> None:
            lead: Lead = aggregate
            lead.owner = self.owner
            lead.team = self.team
            lead.in_pool = self.owner is None
            lead.assigned_at = self.occurred_at
            lead.contacted_at = None
            lead.owner_history.append({"at": self.occurred_at, "owner": self.owner})
            super().apply(aggregate)

    def note_sla_breach(self, rep: str, occurred_at: datetime) -> None:
        self._emit(self.FirstContactSlaBreached, rep=rep, occurred_at=occurred_at)

    class FirstContactSlaBreached(Event):
        rep: str
        occurred_at: datetime

        def apply(self, aggregate: Any) -> None:
            aggregate.sla_breached_by.append(self.rep)
            super().apply(aggregate)

    def make_first_contact(self, by: str | None, occurred_at: datetime) -> bool:
        if self.contacted_at is not None or self.owner is None:
            return False
        self._emit(self.FirstContactMade, by=by or self.owner, occurred_at=occurred_at)
        return True

    class FirstContactMade(Event):
        by: str
        occurred_at: datetime

        def apply(self, aggregate: Any) -> None:
            aggregate.contacted_at = self.occurred_at
            super().apply(aggregate)

    def recount_load(self, rep: str | None, occurred_at: datetime) -> None:
        self._emit(self.LoadRecounted, rep=rep, occurred_at=occurred_at)

    class LoadRecounted(Event):
        rep: str | None
        occurred_at: datetime

        def apply(self, aggregate: Any) -> None:
            aggregate.load_rep = self.rep
            super().apply(aggregate)

    def set_deal_owner(self, owner: str, occurred_at: datetime) -> None:
        self._emit(self.DealOwnerSet, owner=owner, occurred_at=occurred_at)

    class DealOwnerSet(Event):
        owner: str
        occurred_at: datetime

        def apply(self, aggregate: Any) -> None:
            aggregate.deal_owner = self.owner
            super().apply(aggregate)

    def go_dormant(self, occurred_at: datetime, silent_days: float) -> None:
        self._went_dormant(occurred_at=occurred_at, silent_days=silent_days)

    @event("WentDormant")
    def _went_dormant(self, occurred_at: datetime, silent_days: float) -> None:
        self.dormant = True

    def schedule_wake(self, at: datetime | None) -> None:
        if at != self.wake_at:
            self._emit(self.WakeScheduled, at=at)

    class WakeScheduled(Event):
        at: datetime | None

        def apply(self, aggregate: Any) -> None:
            aggregate.wake_at = self.at
            super().apply(aggregate)

    # ----- privacy

    def forget(self, occurred_at: datetime, actor: str, reason: str,
               data_keys: list[UUID]) -> None:
        """The person asked to be erased: their data keys (``data_keys``: this lead's, the
        merged leads' and absorbed interests') are deleted in the same transaction, so
        their personal values can never be read again. The lead stays in every count."""
        if self.forgotten:
            raise LeadForgottenError(f"lead {self.id} is already forgotten")
        self._forgotten(occurred_at=occurred_at, actor=actor, reason=reason,
                        data_keys=data_keys)

    @event("Forgotten")
    def _forgotten(self, occurred_at: datetime, actor: str, reason: str,
                   data_keys: list[UUID]) -> None:
        self.forgotten = True
        self.primary_key = None
        self.identity_keys = []
        self.profile = {k: v for k, v in self.profile.items()
                        if k not in PERSONAL_PROFILE_FIELDS}
        if self.landing_page:
            self.landing_page = public_url(self.landing_page)
        # Reasons were sealed too (domain/privacy.py): as a replay would read them.
        self.stage_reason = None
        self.transitions = [{**t, "reason": None} for t in self.transitions]


# The topics stores were written with (domain/topics.py), set before any is asked for.
stable_topics(Lead)
