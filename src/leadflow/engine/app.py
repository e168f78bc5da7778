"""The command API: one method per use case, load -> decide -> save.

``LeadflowApp`` is an ``eventsourcing.Application``. Its batch method applies many inbound
records in order and saves every touched aggregate in ONE transaction, optionally together
with a tracking record (a Kafka topic-partition offset), which is what gives the Kafka path
its exactly-once effect. Queries return frozen DTOs, never live aggregates.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar, cast
from uuid import UUID

import psycopg
import structlog
from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    LRUCache,
)
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import PersistenceError, ProcessRecorder, StoredEvent, Tracking
from eventsourcing.popo import POPOFactory
from eventsourcing.postgres import PostgresAggregateRecorder
from eventsourcing.sqlite import SQLiteAggregateRecorder
from eventsourcing.utils import get_topic
from psycopg.sql import SQL, Identifier

from leadflow.contract import InboundRecord
from leadflow.domain import (
    STAGE_RANK,
    WORKING_STAGES,
    Account,
    AggregateUnloadableError,
    Clock,
    IdentityIndex,
    Interest,
    Lead,
    LeadflowError,
    Router,
    RuleBook,
    TimerBucket,
    UnknownLeadError,
    UnknownRepError,
    day_of,
    scoring,
)
from leadflow.domain.ids import identity_index_id, identity_key
from leadflow.domain.routing import choose_owner
from leadflow.domain.rules import Rules, default_rules
from leadflow.domain.vocabulary import DISPOSITION_TYPES
from leadflow.store import chain as audit
from leadflow.store.cache import SpillingLRUCache
from leadflow.store.recorders import (
    LeadflowPOPOProcessRecorder,
    RecordId,
    RecordIdIndex,
    recorder_topic_for,
)

A = TypeVar("A", bound=Aggregate)

log = structlog.get_logger(__name__)

# Guard against a rules file that would make a lead bounce between owners forever.
_MAX_TRANSITIONS_PER_CATCH_UP = 64

#: Failures of the database or the machine, not of a record: they abort the batch and are
#: raised (the consumer retries, then stops loudly). Any other exception while applying a
#: record is that record's fault ("poison") and only costs that record.
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    PersistenceError, psycopg.Error, sqlite3.Error, OSError, MemoryError)

_KINDS = {"Lead": "lead", "IdentityIndex": "identity index", "Interest": "interest",
          "Account": "account", "Router": "router", "Clock": "clock",
          "TimerBucket": "timer bucket", "RuleBook": "rule book"}


def record_digest(record: InboundRecord) -> bytes:
    """A digest of the record's normalised content: the same fact re-sent (other spacing,
    other UTC offset, upper-case email) has the same digest; any other content does not."""
    return hashlib.sha256(record.model_dump_json().encode()).digest()[:16]


class _Poisoned(Exception):
    """Control flow inside apply_batch (a record that failed half-way); never escapes."""

    def __init__(self, result: RecordResult) -> None:
        super().__init__(result.detail)
        self.result = result


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class RecordResult:
    index: int
    event_id: str
    outcome: Outcome
    lead_id: UUID | None = None
    reason: str | None = None
    detail: str | None = None
    error_class: str | None = None


@dataclass(frozen=True, slots=True)
class BatchResult:
    results: tuple[RecordResult, ...]

    @property
    def applied(self) -> int:
        return sum(r.outcome is Outcome.APPLIED for r in self.results)

    @property
    def duplicates(self) -> int:
        return sum(r.outcome is Outcome.DUPLICATE for r in self.results)

    @property
    def rejected(self) -> tuple[RecordResult, ...]:
        return tuple(r for r in self.results if r.outcome is Outcome.REJECTED)


@dataclass(frozen=True, slots=True)
class RuleContribution:
    rule: str
    kind: str  # "fit" | "engagement"
    points: float  # original points
    value: float  # contribution at the query time (decayed / expired)
    count: int


@dataclass(frozen=True, slots=True)
class LeadView:
    lead_id: UUID
    primary_key: str
    identities: tuple[str, ...]
    at: datetime
    stage: str | None
    stage_now: str
    owner: str | None
    team: str | None
    in_pool: bool
    fit: float
    engagement: float
    score: float
    breakdown: tuple[RuleContribution, ...]
    created_at: datetime
    source: str | None
    campaign: str | None
    account_id: UUID | None
    dormant: bool
    touchpoints: int
    last_touch_at: datetime | None
    merged_from: tuple[UUID, ...]
    transitions: tuple[dict[str, Any], ...]
    profile: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "lead_id": str(self.lead_id),
            "primary_key": self.primary_key,
            "identities": list(self.identities),
            "at": self.at.isoformat(),
            "stage": self.stage,
            "stage_now": self.stage_now,
            "owner": self.owner,
            "team": self.team,
            "in_pool": self.in_pool,
            "fit": round(self.fit, 4),
            "engagement": round(self.engagement, 4),
            "score": round(self.score, 4),
            "breakdown": [
                {"rule": c.rule, "kind": c.kind, "points": c.points, "value": round(c.value, 4),
                 "count": c.count}
                for c in self.breakdown
            ],
            "created_at": self.created_at.isoformat(),
            "source": self.source,
            "campaign": self.campaign,
            "account_id": str(self.account_id) if self.account_id else None,
            "dormant": self.dormant,
            "touchpoints": self.touchpoints,
            "last_touch_at": self.last_touch_at.isoformat() if self.last_touch_at else None,
            "merged_from": [str(i) for i in self.merged_from],
            "transitions": [
                {**t, "at": t["at"].isoformat()} for t in self.transitions
            ],
            "profile": self.profile,
        }


@dataclass(frozen=True, slots=True)
class ClockResult:
    position: datetime | None
    woken: int
    events: int
    unloadable: tuple[UUID, ...] = ()  # leads skipped: their stored events cannot be loaded


class _Unit:
    """The aggregates one batch has loaded or created; saved together at the end."""

    def __init__(self, app: LeadflowApp) -> None:
        self.app = app
        self.touched: dict[UUID, Aggregate] = {}
        self.absent: set[UUID] = set()
        # Aggregates whose stored events cannot be loaded, with the reason (see _load_into).
        self.unloadable: dict[UUID, BaseException] = {}

    def get(self, cls: type[A], aggregate_id: UUID) -> A | None:
        found = self.touched.get(aggregate_id)
        if found is None:
            if aggregate_id in self.absent:
                return None
            kind = _KINDS.get(cls.__name__, cls.__name__)
            if aggregate_id in self.unloadable:
                raise AggregateUnloadableError(aggregate_id, kind, self.unloadable[aggregate_id])
            try:
                found = self.app.repository.get(aggregate_id)
            except AggregateNotFoundError:
                self.absent.add(aggregate_id)
                return None
            except INFRASTRUCTURE_ERRORS:
                raise
            except Exception as exc:  # a damaged store: named, never a crash of the batch
                self.unloadable[aggregate_id] = exc
                raise AggregateUnloadableError(aggregate_id, kind, exc) from exc
            self.touched[aggregate_id] = found
        if not isinstance(found, cls):
            raise TypeError(f"aggregate {aggregate_id} is a {type(found).__name__}, "
                            f"not a {cls.__name__}")
        return found

    def add(self, aggregate: A) -> A:
        self.touched[aggregate.id] = aggregate
        self.absent.discard(aggregate.id)
        return aggregate

    def pending(self) -> int:
        return sum(len(a.pending_events) for a in self.touched.values())


class LeadflowApp(Application[UUID]):
    """Lead lifecycle engine: scoring with decay, lifecycle, routing, identity."""

    name = "leadflow"
    # No snapshots: the library looks a snapshot up before every aggregate it loads, which
    # doubled the queries of each cache miss; the shared Router and Clock are loaded once per
    # process and then live in the aggregate cache.

    def __init__(self, env: dict[str, str] | None = None, rules: Rules | None = None) -> None:
        super().__init__(env)
        self.rules = rules or default_rules()
        self._topics: dict[type, str] = {}
        cache = self.repository.cache
        spill_mib = int(self.env.get("LEADFLOW_AGGREGATE_SPILL_MIB") or 0)
        if isinstance(cache, LRUCache) and spill_mib > 0:
            # Evicted aggregates are pickled rather than dropped (see cache.py).
            self.repository.cache = SpillingLRUCache(cache.maxsize, spill_mib << 20)

    def construct_recorder(self) -> ProcessRecorder:
        # A process recorder can commit a tracking position with the events (Kafka offsets);
        # leadflow's recorders also keep the record-id index in the same transaction.
        factory = self.factory
        if isinstance(factory, POPOFactory):
            return LeadflowPOPOProcessRecorder()
        topic = recorder_topic_for(type(factory).__module__)
        if topic is not None and not factory.env.get(factory.PROCESS_RECORDER_TOPIC):
            factory.env[factory.PROCESS_RECORDER_TOPIC] = topic
        return factory.process_recorder()

    @property
    def record_ids(self) -> RecordIdIndex:
        recorder = self.recorder
        if not isinstance(recorder, RecordIdIndex):
            raise TypeError(f"{type(recorder).__name__} keeps no record-id index: configure "
                            "one of leadflow.store.recorders's recorders (PROCESS_RECORDER_TOPIC)")
        return recorder

    @property
    def process_recorder(self) -> ProcessRecorder:
        return cast(ProcessRecorder, self.recorder)

    # ------------------------------------------------------------------ commands

    def apply_batch(
        self,
        records: Sequence[InboundRecord],
        tracking: Tracking | None = None,
        before_commit: Callable[[BatchResult], None] | None = None,
    ) -> BatchResult:
        """Apply records in order and save everything they changed in one transaction.

        Each record ends applied, a duplicate (same ``event_id``, same content), or rejected
        with a reason, and only the rejected record is lost for the batch:

        - the domain refuses it (unknown lead for a disposition, unknown rep): refusals come
          before any change, so the rest of the batch simply goes on;
        - its ``event_id`` was applied before with other content: ``event_id_conflict``;
        - applying it fails in any other way (a bug, an aggregate the store cannot load):
          ``apply_failed`` / ``lead_unloadable``. Its half-made changes are thrown away by
          re-applying the batch without it on freshly loaded aggregates.

        Only infrastructure failures (``INFRASTRUCTURE_ERRORS``) abort the batch: nothing is
        saved and the error is raised. ``before_commit`` sees the results before anything is
        saved (the Kafka consumer dead-letters the rejected records there, so a crash can
        never lose one).
        """
        failed: dict[int, RecordResult] = {}
        while True:
            unit = _Unit(self)
            applied: list[RecordId] = []
            try:
                results = self._apply_all(unit, records, failed, applied)
                stored = self._encode(unit)
            except _Poisoned as poisoned:
                # Aggregates (live in the cache) may hold part of the poisoned record.
                self.forget_cached_aggregates()
                failed[poisoned.result.index] = poisoned.result
                continue
            except INFRASTRUCTURE_ERRORS:
                self.forget_cached_aggregates()
                raise
            except Exception as exc:
                # The events of some record cannot be stored (encoded): find which one.
                self.forget_cached_aggregates()
                culprit = self._unstorable_record(records, failed)
                self.forget_cached_aggregates()
                if culprit is None:
                    raise
                log.warning("record's events cannot be stored; rejected", index=culprit.index,
                            event_id=culprit.event_id, error=f"{type(exc).__name__}: {exc}")
                failed[culprit.index] = culprit
                continue
            except BaseException:
                self.forget_cached_aggregates()
                raise
            break
        if before_commit is not None:
            try:
                before_commit(results)
            except BaseException:
                self.forget_cached_aggregates()
                raise
        self._commit(unit, tracking, applied, stored)
        return results

    def _unstorable_record(self, records: Sequence[InboundRecord],
                           failed: dict[int, RecordResult]) -> RecordResult | None:
        """Re-apply the batch record by record, encoding the new events after each, to find
        the record whose events cannot be stored (rare: only then is this cost paid)."""
        unit = _Unit(self)
        self._prefetch(unit, records)
        known = self.record_ids.select_record_ids([r.event_id for r in records])
        encoded: dict[UUID, int] = {}
        for index, record in enumerate(records):
            if index in failed:
                continue
            self._apply_one(unit, index, record, known, [])
            try:
                for aggregate in unit.touched.values():
                    pending = aggregate.pending_events
                    for event in pending[encoded.get(aggregate.id, 0):]:
                        self._encode_event(event)
                    encoded[aggregate.id] = len(pending)
            except INFRASTRUCTURE_ERRORS:
                raise
            except Exception as exc:
                return RecordResult(index, record.event_id, Outcome.REJECTED, None,
                                    "apply_failed",
                                    f"its events cannot be stored: {type(exc).__name__}: {exc}",
                                    type(exc).__name__)
        return None

    def _apply_all(self, unit: _Unit, records: Sequence[InboundRecord],
                   failed: dict[int, RecordResult], applied: list[RecordId]) -> BatchResult:
        self._prefetch(unit, records)
        known = self.record_ids.select_record_ids([r.event_id for r in records])
        results: list[RecordResult] = []
        for index, record in enumerate(records):
            result = failed.get(index)
            if result is None:
                result = self._apply_one(unit, index, record, known, applied)
            results.append(result)
        return BatchResult(tuple(results))

    def ingest(self, record: InboundRecord) -> RecordResult:
        """Apply one record (a batch of one); for tests and interactive use."""
        return self.apply_batch([record]).results[0]

    def advance_clock(
        self, to: datetime, progress: Callable[[str, int], None] | None = None
    ) -> ClockResult:
        """Record every time-driven transition due up to event time ``to``, at its exact time.

        Only the timer buckets of the days between the clock's position and ``to`` are read,
        never every lead. Work is committed day by day.
        """
        unit = _Unit(self)
        clock = self._clock(unit)
        start = clock.position
        if start is not None and to <= start:
            return ClockResult(start, 0, 0, ())
        woken = events = 0
        unloadable: list[UUID] = []
        day = day_of(start) if start is not None else None
        while True:
            upcoming = [d for d in clock.days if (day is None or d >= day) and d <= day_of(to)]
            if not upcoming:
                break
            day = upcoming[0]
            until = min(to, datetime.fromisoformat(day).replace(tzinfo=UTC)
                        + timedelta(days=1) - timedelta(microseconds=1))
            bucket = unit.get(TimerBucket, TimerBucket.create_id(day))
            entries = bucket.due(clock.position, until) if bucket else []
            for _, lead_id in entries:
                try:
                    lead = unit.get(Lead, lead_id)
                except AggregateUnloadableError as exc:
                    # A lead damaged by hand must not stop time for every other lead.
                    log.error("lead cannot be loaded; its time-driven transitions skipped",
                              lead_id=str(lead_id), error=str(exc))
                    unloadable.append(lead_id)
                    continue
                if lead is None or lead.merged_into is not None:
                    continue
                woken += 1
                if lead.wake_at is not None and lead.wake_at <= until:
                    lead.schedule_wake(None)
                self._catch_up(unit, lead, until)
                self._settle(unit, lead, until, clock_position=until)
            clock.advance(until)
            events += unit.pending()
            self._commit(unit, None)
            if progress:
                progress(day, len(entries))
            unit = _Unit(self)
            clock = self._clock(unit)
            # Next iteration starts strictly after this day.
            day = (datetime.fromisoformat(day) + timedelta(days=1)).date().isoformat()
        if clock.position is None or to > clock.position:
            clock.advance(to)
            events += unit.pending()
            self._commit(unit, None)
        return ClockResult(to, woken, events, tuple(unloadable))

    def unmerge(self, key: str, at: datetime, actor: str) -> tuple[UUID, UUID]:
        """Undo the merge that brought identity ``key``'s lead into another lead.

        The merged lead comes back with its own history; the survivor's state is recomputed
        from its own events without those the merge caused; the identities point back.
        Returns (survivor id, restored lead id).
        """
        unit = _Unit(self)
        index = unit.get(IdentityIndex, identity_index_id(key))
        if index is None or index.is_interest:
            raise UnknownLeadError(f"no lead known by {key!r}")
        survivor = self._live_lead(unit, index.target_id)
        loser = None
        for merged_id in survivor.merged_from:
            candidate = unit.get(Lead, merged_id)
            if candidate is not None and candidate.merged_into == survivor.id \
                    and key in candidate.identity_keys:
                loser = candidate
        if loser is None:
            raise NotMergedError(f"{key!r} belongs to lead {survivor.id} itself, not to a lead "
                                 "merged into it")
        own = _without_merge(list(self.events.get(survivor.id)), loser.id)
        recomputed: Any = None
        for event in own:
            # Skipped events leave version gaps, so apply directly rather than mutate().
            if recomputed is None:
                recomputed = event.mutate(None)
            else:
                event.apply(recomputed)
        # Stored events carry running totals that included the merged points: re-fold the
        # engagement from the survivor's own awards instead.
        value, as_of = 0.0, None
        for award in recomputed.awards:
            if award.expires_at is None:
                value, as_of = scoring.add_decaying(value, as_of, award.points, award.at,
                                                    self.rules.half_life_seconds)
        horizon = recomputed.eng_as_of
        if as_of is not None and horizon is not None and horizon > as_of:
            value, as_of = scoring.decayed(value, as_of, horizon,
                                           self.rules.half_life_seconds), horizon
        recomputed.eng_value, recomputed.eng_as_of = value, as_of or horizon
        fit = scoring.fit_awards(self.rules, recomputed.profile)  # likewise for fit
        recomputed.fit_awards, recomputed.fit = fit, sum(p for _, p in fit)
        survivor.restore(recomputed, loser.id, at, actor)
        loser.unmerge(survivor.id, at, actor)
        # Re-derive the automatic decisions (MQL threshold, routing) from the restored score.
        self._qualify(unit, survivor, at, None)
        for loser_key in loser.identity_keys:
            loser_index = unit.get(IdentityIndex, identity_index_id(loser_key))
            if loser_index is not None:
                loser_index.repoint(loser.id, False, at, f"unmerged from lead {survivor.id}")
        self._sync_load(unit, survivor, at)
        self._sync_load(unit, loser, at)
        self._settle(unit, survivor, at)
        self._settle(unit, loser, at)
        self._commit(unit, None)
        return survivor.id, loser.id

    def publish_rules(self, rules: Rules, text: str, at: datetime, actor: str) -> bool:
        """Record a rules version for live scoring from now on (history is not rewritten)."""
        unit = _Unit(self)
        book = unit.get(RuleBook, RuleBook.create_id()) or unit.add(RuleBook())
        before = book.current
        book.publish(rules.version, rules.label, text, at, actor)
        self._commit(unit, None)
        self.rules = rules
        return book.current is not before

    def published_rules(self) -> dict[str, Any] | None:
        try:
            book: Any = self.repository.get(RuleBook.create_id())
        except AggregateNotFoundError:
            return None
        return dict(book.current) if book.current else None

    def set_rep_availability(self, rep: str, available: bool, at: datetime) -> None:
        if self.rules.routing.rep(rep) is None:
            raise UnknownRepError(f"unknown rep {rep!r}")
        unit = _Unit(self)
        self._router(unit).set_availability(rep, available, at)
        self._commit(unit, None)

    # ------------------------------------------------------------------ queries

    def resolve(self, key_or_id: str | UUID) -> UUID:
        """The live lead for an identity key (``email:…``) or lead id, following merges."""
        if isinstance(key_or_id, UUID):
            lead_id = key_or_id
        else:
            try:
                lead_id = UUID(key_or_id)
            except ValueError:
                try:
                    index: Any = self._load(identity_index_id(key_or_id), "identity index")
                except AggregateNotFoundError:
                    raise UnknownLeadError(f"no lead known by {key_or_id!r}") from None
                assert isinstance(index, IdentityIndex)
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
        try:
            return self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            raise
        except INFRASTRUCTURE_ERRORS:
            raise
        except Exception as exc:
            raise AggregateUnloadableError(aggregate_id, kind, exc) from exc

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
        per_rule: dict[str, list[float]] = {}
        counts: dict[str, int] = {}
        for award in lead.awards:
            if award.at > when:
                continue
            entry = per_rule.setdefault(award.rule, [0.0, 0.0])
            entry[0] += award.points
            entry[1] += award.value_at(when, half_life)
            counts[award.rule] = counts.get(award.rule, 0) + 1
        breakdown = [RuleContribution(rule, "fit", points, points, 1)
                     for rule, points in lead.fit_awards]
        breakdown += [RuleContribution(rule, "engagement", v[0], v[1], counts[rule])
                      for rule, v in sorted(per_rule.items(), key=lambda kv: -kv[1][1])]
        engagement = lead.engagement_at(when, half_life)
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
        )

    def lead_ids(self, batch: int = 1000) -> Iterator[UUID]:
        """Every lead ever created (merged ones included), from the notification log."""
        topic = get_topic(Lead.Created)
        start = 1
        while True:
            page = self.recorder.select_notifications(start, batch, topics=[topic])
            if not page:
                return
            for notification in page:
                yield UUID(str(notification.originator_id))
            start = page[-1].id + 1

    def rep_load(self) -> dict[str, int]:
        try:
            router: Any = self.repository.get(Router.create_id())
        except AggregateNotFoundError:
            return {}
        assert isinstance(router, Router)
        return dict(router.load)

    def clock_position(self) -> datetime | None:
        try:
            clock: Any = self.repository.get(Clock.create_id())
        except AggregateNotFoundError:
            return None
        assert isinstance(clock, Clock)
        return clock.position

    # ------------------------------------------------------------------ internals

    def _batch_candidates(self, records: Sequence[InboundRecord]) -> set[UUID]:
        """Aggregates the batch will look up: identity indexes and likely accounts."""
        ids: set[UUID] = set()
        for rec in records:
            ref = rec.lead
            for kind in ("email", "phone", "external_id", "anonymous_id"):
                value = getattr(ref, kind)
                if value:
                    ids.add(identity_index_id(identity_key(kind, value)))
            if ref.email:
                domain = ref.email.rsplit("@", 1)[-1]
                if domain not in self.rules.free_mail:
                    ids.add(Account.create_id(f"domain:{domain}"))
            if ref.company:
                ids.add(Account.create_id("company:" + _normalise_company(ref.company)))
        return ids

    def _prefetch(self, unit: _Unit, records: Sequence[InboundRecord]) -> None:
        """Load, in two queries, the aggregates the batch is about to look up one by one.

        First the identity indexes and accounts the records name, then the leads and
        interests those indexes point at. Aggregates already cached cost no query; ids with
        no stored events are remembered as absent, so creating them costs none either.
        Whatever this misses (merge chains, surge colleagues) is still loaded on demand.
        """
        self._load_into(unit, self._batch_candidates(records))
        self._load_into(unit, {a.target_id for a in list(unit.touched.values())
                               if isinstance(a, IdentityIndex)})

    def _load_into(self, unit: _Unit, ids: set[UUID]) -> None:
        cache = self.repository.cache
        wanted: list[UUID] = []
        for aggregate_id in ids:
            if aggregate_id in unit.touched or aggregate_id in unit.absent:
                continue
            if cache is not None and (aggregate_id in cache.cache or (
                    isinstance(cache, SpillingLRUCache) and aggregate_id in cache.spilled)):
                # Through the repository, so the cache's configured semantics hold.
                unit.touched[aggregate_id] = self.repository.get(aggregate_id)
            else:
                wanted.append(aggregate_id)
        if not wanted:
            return
        stored = self._select_many(wanted)
        to_domain_event = self.mapper.to_domain_event
        for aggregate_id in wanted:
            events = stored.get(aggregate_id)
            if not events:
                unit.absent.add(aggregate_id)
                continue
            aggregate: Any = None
            try:
                for item in events:
                    aggregate = cast(Any, to_domain_event(item)).mutate(aggregate)
            except INFRASTRUCTURE_ERRORS:
                raise
            except Exception as exc:
                # A version gap or an undecodable payload (the store was edited outside
                # leadflow): only the records that need this aggregate are refused.
                unit.unloadable[aggregate_id] = exc
                continue
            unit.touched[aggregate_id] = aggregate
            if cache is not None:
                cache.put(aggregate_id, aggregate)

    def _select_many(self, ids: list[UUID]) -> dict[UUID, list[StoredEvent]]:
        """Every stored event of many aggregates, by aggregate, in version order."""
        recorder: Any = self.recorder
        out: dict[UUID, list[StoredEvent]] = {}
        if isinstance(recorder, PostgresAggregateRecorder):
            statement = SQL("SELECT originator_id, originator_version, topic, state FROM {}.{} "
                            "WHERE originator_id = ANY(%s) "
                            "ORDER BY originator_id, originator_version").format(
                Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name))
            with recorder.datastore.transaction(commit=False) as cursor:
                cursor.execute(statement, (ids,))
                for row in cursor.fetchall():
                    oid = row["originator_id"]
                    oid = oid if isinstance(oid, UUID) else UUID(str(oid))
                    out.setdefault(oid, []).append(StoredEvent(
                        oid, row["originator_version"], row["topic"], bytes(row["state"])))
        elif isinstance(recorder, SQLiteAggregateRecorder):
            with recorder.datastore.transaction(commit=False) as cursor:
                for start in range(0, len(ids), 500):
                    chunk = [i.hex for i in ids[start:start + 500]]
                    cursor.execute(
                        "SELECT originator_id, originator_version, topic, state FROM "
                        f"{recorder.events_table_name} WHERE originator_id IN "
                        f"({','.join('?' * len(chunk))}) "
                        "ORDER BY originator_id, originator_version", chunk)
                    for oid_hex, version, topic, state in cursor.fetchall():
                        oid = UUID(str(oid_hex))
                        out.setdefault(oid, []).append(StoredEvent(oid, version, topic,
                                                                   bytes(state)))
        else:  # in-memory store: asking one by one is cheap
            for aggregate_id in ids:
                found = list(recorder.select_events(aggregate_id))
                if found:
                    out[aggregate_id] = found
        return out

    def forget_cached_aggregates(self) -> None:
        """Drop every cached aggregate (after a failed batch, or when another writer moved on)."""
        cache = self.repository.cache
        if cache is None:
            return
        if isinstance(cache, SpillingLRUCache):
            cache.clear_all()
            return
        with getattr(cache, "lock", nullcontext()):
            cache.cache.clear()
            if isinstance(cache, LRUCache):
                cache.clear()
                cache.full = False

    def _stored(self, aggregate: Aggregate) -> list[StoredEvent]:
        """The aggregate's pending events as stored events, each encoded exactly once.

        Lead events get their hash-chain link (see audit.py) appended to the encoded bytes,
        so the tamper evidence costs one hash per event, not a second encoding.
        """
        pending = aggregate.collect_events()
        if not pending:
            return []
        chained = isinstance(aggregate, Lead)
        head: str | None = None
        if chained:
            lead = cast(Lead, aggregate)
            if pending[0].originator_version == Lead.INITIAL_VERSION:
                head = audit.genesis(lead.id)
            else:
                head = lead.chain_head or self._stored_chain_head(lead.id)
        out: list[StoredEvent] = []
        for event in pending:
            originator_id, version, topic, payload = self._encode_event(event)
            if head is not None:
                payload, head = audit.seal(head, originator_id, version, topic, payload)
            out.append(StoredEvent(originator_id, version, topic, self._protect(payload)))
        if chained:
            cast(Lead, aggregate).chain_head = head
        return out

    def _encode_event(self, event: Any) -> tuple[UUID, int, str, bytes]:
        cls = type(event)
        topic = self._topics.get(cls)
        if topic is None:
            topic = self._topics[cls] = get_topic(cls)
        state = dict(event.__dict__)
        originator_id = state.pop("originator_id")
        version = state.pop("originator_version")
        class_version = getattr(cls, "class_version", 1)
        if class_version > 1:
            state["class_version"] = class_version
        return originator_id, version, topic, self.mapper.transcoder.encode(state)

    def _protect(self, payload: bytes) -> bytes:
        """Compress and encrypt as the library's mapper would (when configured)."""
        if self.mapper.compressor:
            payload = self.mapper.compressor.compress(payload)
        if self.mapper.cipher:
            payload = self.mapper.cipher.encrypt(payload)
        return payload

    def _plain(self, payload: bytes) -> bytes:
        if self.mapper.cipher:
            payload = self.mapper.cipher.decrypt(payload)
        if self.mapper.compressor:
            payload = self.mapper.compressor.decompress(payload)
        return payload

    def _stored_chain_head(self, lead_id: UUID) -> str:
        stored = self.recorder.select_events(lead_id, desc=True, limit=1)
        if not stored:
            return audit.genesis(lead_id)
        return audit.unseal(self._plain(stored[0].state))[1] or audit.genesis(lead_id)

    def verify(self, lead_id: UUID) -> audit.LeadVerification:
        """Recompute a lead's hash chain from its stored events (no cache, no domain)."""
        protected = self.mapper.cipher is not None or self.mapper.compressor is not None
        return audit.verify_events(lead_id, self.recorder.select_events(lead_id),
                                   self._plain if protected else None)

    def _encode(self, unit: _Unit) -> list[StoredEvent]:
        stored: list[StoredEvent] = []
        for aggregate in unit.touched.values():
            stored += self._stored(aggregate)
        return stored

    def _commit(self, unit: _Unit, tracking: Tracking | None,
                record_ids: Sequence[RecordId] = (),
                stored: list[StoredEvent] | None = None) -> None:
        """Store every pending event of the unit, the tracking record and the applied
        records' ids in one transaction.

        This is ``Application.save`` without its per-call overheads: events are collected
        straight from the aggregates and encoded once, and the recorder gets them in one call.
        """
        if stored is None:
            stored = self._encode(unit)
        if not stored and tracking is None:
            return
        try:
            self.recorder.insert_events(stored, tracking=tracking, record_ids=record_ids)
        except BaseException:
            # Aggregates in the cache may hold the uncommitted changes: forget them all.
            self.forget_cached_aggregates()
            raise
        cache = self.repository.cache
        if cache is not None and not self.repository.fastforward:
            for aggregate_id, aggregate in unit.touched.items():
                cache.put(aggregate_id, aggregate)

    def _apply_one(self, unit: _Unit, index: int, record: InboundRecord,
                   known: dict[str, RecordId], applied: list[RecordId]) -> RecordResult:
        event_id = record.event_id
        digest = record_digest(record)
        seen = known.get(event_id)
        if seen is not None:
            if seen.digest == digest:
                return RecordResult(index, event_id, Outcome.DUPLICATE, seen.lead_id)
            where = f"lead {seen.lead_id}" if seen.lead_id else "anonymous interest"
            return RecordResult(index, event_id, Outcome.REJECTED, None, "event_id_conflict",
                                f"event_id {event_id!r} was already applied to {where} with "
                                "other content; a new fact needs a new event_id",
                                "EventIdConflict")
        try:
            lead_id, duplicate = self._apply(unit, record)
        except AggregateUnloadableError as exc:
            # May strike half-way through the record (a colleague's lead in a surge).
            raise _Poisoned(RecordResult(index, event_id, Outcome.REJECTED, None, exc.reason,
                                         str(exc), type(exc.cause).__name__)) from exc
        except LeadflowError as exc:
            return RecordResult(index, event_id, Outcome.REJECTED, None, exc.reason, str(exc),
                                type(exc).__name__)
        except INFRASTRUCTURE_ERRORS:
            raise
        except Exception as exc:
            raise _Poisoned(RecordResult(index, event_id, Outcome.REJECTED, None,
                                         "apply_failed", f"{type(exc).__name__}: {exc}",
                                         type(exc).__name__)) from exc
        if duplicate:
            # Applied before the record-id index existed: known to the lead only.
            return RecordResult(index, event_id, Outcome.DUPLICATE, lead_id)
        # Later records of the batch with this id see it as already applied.
        known[event_id] = RecordId(event_id, digest, lead_id)
        applied.append(known[event_id])
        return RecordResult(index, event_id, Outcome.APPLIED, lead_id)

    def _apply(self, unit: _Unit, rec: InboundRecord) -> tuple[UUID | None, bool]:
        rules = self.rules
        ref = rec.lead
        keys: list[str] = []
        if ref.email:
            keys.append(identity_key("email", ref.email))
        if ref.phone:
            keys.append(identity_key("phone", ref.phone))
        if ref.external_id:
            keys.append(identity_key("external_id", ref.external_id))
        person_keys = list(keys)
        anon_key = identity_key("anonymous_id", ref.anonymous_id) if ref.anonymous_id else None
        if anon_key:
            keys.append(anon_key)
        indexes = {k: unit.get(IdentityIndex, identity_index_id(k)) for k in keys}

        leads: list[Lead] = []
        for key in keys:
            index = indexes[key]
            if index is not None and not index.is_interest:
                lead = self._live_lead(unit, index.target_id)
                if all(lead.id != other.id for other in leads):
                    leads.append(lead)

        if not leads and not person_keys:
            return self._apply_anonymous(unit, rec, cast(str, anon_key), indexes)

        # Refusals come before any change, so a refused record leaves nothing behind.
        if rec.type in DISPOSITION_TYPES and not leads:
            raise UnknownLeadError(
                f"{rec.type} for unknown lead ({', '.join(keys)}): dispositions need a lead "
                "created by an earlier touchpoint"
            )
        if rec.type == "owner_assigned" and rules.routing.rep(cast(str, rec.owner)) is None:
            raise UnknownRepError(f"owner_assigned names unknown rep {rec.owner!r}")
        if any(rec.event_id in lead.seen for lead in leads):
            return leads[0].id, True
        interest: Interest | None = None
        anon_index = indexes.get(anon_key) if anon_key else None
        if anon_index is not None and anon_index.is_interest:
            interest = unit.get(Interest, anon_index.target_id)
            if interest is not None and rec.event_id in interest.seen:
                return None, True

        at = rec.occurred_at
        if not leads:
            lead = unit.add(Lead(
                primary_key=person_keys[0], created_at=at, source=rec.context.source,
                campaign=rec.context.campaign, landing_page=rec.context.landing_page,
                account_id=None,
            ))
            created = True
        else:
            leads.sort(key=lambda candidate: (candidate.created_at, str(candidate.id)))
            lead = leads[0]
            created = False
            self._catch_up(unit, lead, at)
            for other in leads[1:]:
                self._catch_up(unit, other, at)
                self._merge(unit, lead, other, at, rec.event_id)

        for key in person_keys + ([anon_key] if anon_key else []):
            index = indexes[key]
            if index is None:
                unit.add(IdentityIndex(key=key, target_id=lead.id, is_interest=False,
                                       occurred_at=at))
            elif index.is_interest:
                if interest is not None:
                    lead.absorb_interest(interest.anonymous_id, interest.touchpoints, at, rules)
                    interest.link(lead.id, at)
                index.repoint(lead.id, False, at, "anonymous interest linked to a person")
            elif index.target_id != lead.id:
                index.repoint(lead.id, False, at, "merged")
            lead.add_identity(key, at)

        profile = ref.profile()
        if profile:
            lead.update_profile(profile, at, rec.event_id, rules)
        if lead.account_id is None:
            self._attach_account(unit, lead, at)
        if created and rules.routing.assign_on == "created":
            self._route(unit, lead, at, "rule:assign-on-created", "new lead")

        if rec.is_touchpoint:
            lead.record_touchpoint(rec.event_id, rec.type, at,
                                   rec.context.model_dump(exclude_none=True), rules)
            self._qualify(unit, lead, at, rec.type)
            self._account_signal(unit, lead, at)
        else:
            self._disposition(unit, lead, rec)
        self._settle(unit, lead, at)
        return lead.id, False

    def _apply_anonymous(self, unit: _Unit, rec: InboundRecord, key: str,
                         indexes: dict[str, IdentityIndex | None]) -> tuple[None, bool]:
        if rec.type in DISPOSITION_TYPES:
            raise UnknownLeadError(
                f"{rec.type} for anonymous visitor {key}: dispositions need a known person"
            )
        index = indexes[key]
        at = rec.occurred_at
        anonymous_id = key.split(":", 1)[1]
        interest = unit.get(Interest, index.target_id) if index is not None else None
        if interest is None:
            interest = unit.add(Interest(anonymous_id=anonymous_id, occurred_at=at))
            unit.add(IdentityIndex(key=key, target_id=interest.id, is_interest=True,
                                   occurred_at=at))
        if rec.event_id in interest.seen:
            return None, True
        interest.note(rec.event_id, rec.type, at, rec.context.model_dump(exclude_none=True))
        return None, False

    def _live_lead(self, unit: _Unit, lead_id: UUID) -> Lead:
        for _ in range(32):
            lead = unit.get(Lead, lead_id)
            if lead is None:
                raise RuntimeError(f"identity index points at missing lead {lead_id}")
            if lead.merged_into is None:
                return lead
            lead_id = lead.merged_into
        raise RuntimeError(f"merge chain too long at lead {lead_id}")

    def _merge(self, unit: _Unit, survivor: Lead, loser: Lead, at: datetime,
               event_id: str) -> None:
        """Two identities of one person: the older lead absorbs the newer one."""
        survivor.absorb(loser, at, event_id, self.rules)
        loser.merge_into(survivor.id, at, event_id)
        for key in loser.identity_keys:
            index = unit.get(IdentityIndex, identity_index_id(key))
            if index is not None:
                index.repoint(survivor.id, False, at, f"lead {loser.id} merged")
        if STAGE_RANK[loser.stage] > STAGE_RANK[survivor.stage]:
            survivor.change_stage(loser.stage, at, "system:merge",
                                  f"merged with lead {loser.id} at stage {loser.stage}")
        if survivor.owner is None and loser.owner is not None:
            survivor.assign_owner(loser.owner, loser.team, "merge", "merge", at,
                                  "system:merge", f"owner of merged lead {loser.id}")
        if survivor.account_id is None and loser.account_id is not None:
            survivor.set_account(loser.account_id, at)
        self._sync_load(unit, loser, at)
        self._sync_load(unit, survivor, at)

    def _attach_account(self, unit: _Unit, lead: Lead, at: datetime) -> None:
        key = self._account_key(lead)
        if key is None:
            return
        account = unit.get(Account, Account.create_id(key))
        if account is None:
            account = unit.add(Account(account_key=key, name=lead.profile.get("company"),
                                       occurred_at=at))
        lead.set_account(account.id, at)

    def _account_key(self, lead: Lead) -> str | None:
        for key in lead.identity_keys:
            if key.startswith("email:"):
                domain = key.rsplit("@", 1)[-1]
                if domain not in self.rules.free_mail:
                    return f"domain:{domain}"
        company = lead.profile.get("company")
        if company:
            return "company:" + _normalise_company(str(company))
        return None

    def _account_signal(self, unit: _Unit, lead: Lead, at: datetime) -> None:
        if lead.account_id is None:
            return
        account = unit.get(Account, lead.account_id)
        if account is None:
            return
        cfg = self.rules.accounts
        account.engage(lead.id, at)
        people = account.detect_surge(at, cfg.surge_min_people,
                                      timedelta(days=cfg.surge_window_days))
        for person_id in people:
            person = self._live_lead(unit, person_id)
            if person is not lead:
                self._catch_up(unit, person, at)
            person.boost("account-surge", cfg.surge_points, at, f"account:{account.id}",
                         self.rules)
            self._qualify(unit, person, at, None)
            if person is not lead:
                self._settle(unit, person, at)

    def _qualify(self, unit: _Unit, lead: Lead, at: datetime, record_type: str | None) -> None:
        rules = self.rules
        when = lead.horizon
        score = lead.score_at(when, rules.half_life_seconds)
        threshold = rules.scoring.mql_threshold
        if lead.stage in ("new", "recycled") and score >= threshold:
            lead.change_stage("mql", when, "rule:mql-threshold",
                              f"score {score:.1f} reached {threshold:g}")
            if rules.routing.assign_on == "mql" and lead.owner is None and not lead.in_pool:
                self._route(unit, lead, when, "rule:assign-on-mql", "became MQL")
        if record_type is None:
            return
        for auto in rules.lifecycle.auto_sql:
            if (auto.type == record_type and lead.fit >= auto.min_fit
                    and score >= auto.min_score and lead.stage in ("new", "recycled", "mql")):
                lead.change_stage("sql", at, f"rule:{auto.id}",
                                  f"{record_type} with fit {lead.fit:g} >= {auto.min_fit:g}")
                if rules.routing.assign_on != "manual" and lead.owner is None \
                        and not lead.in_pool:
                    self._route(unit, lead, at, f"rule:{auto.id}", "auto-qualified")
                break

    def _disposition(self, unit: _Unit, lead: Lead, rec: InboundRecord) -> None:
        at = rec.occurred_at
        actor = rec.actor or "unknown"
        deal = rec.deal.model_dump(mode="json", exclude_none=True) if rec.deal else None
        lead.record_disposition(rec.event_id, rec.type, at, rec.actor, rec.reason, deal,
                                rec.owner)
        kind = rec.type
        if (kind in ("contacted", "sales_accepted", "converted") and lead.owner is None
                and rec.actor and self.rules.routing.rep(rec.actor) is not None):
            # "First who takes it": a rep working an unowned lead (pooled, or never routed)
            # claims it, so the work is attributed and counted in the rep's load.
            lead.assign_owner(rec.actor, None, "claim", "pool_claim" if lead.in_pool else "claim",
                              at, rec.actor, f"{kind} by {rec.actor}")
            self._sync_load(unit, lead, at)
        if kind == "sales_accepted":
            if lead.stage not in ("sql", "opportunity", "customer"):
                lead.change_stage("sql", at, actor, rec.reason or "accepted by sales",
                                  rec.event_id)
        elif kind in ("disqualified", "recycled", "deal_lost"):
            target = {"disqualified": "disqualified", "recycled": "recycled",
                      "deal_lost": "lost"}[kind]
            lead.change_stage(target, at, actor, rec.reason or "unspecified", rec.event_id)
        elif kind == "converted":
            assert rec.deal is not None  # the contract requires a deal
            links: dict[str, Any] | None = {
                "contact_id": str(lead.id),
                "account_id": str(lead.account_id) if lead.account_id else None,
                "deal_id": rec.deal.id,
                "deal_amount": str(rec.deal.amount) if rec.deal.amount is not None else None,
                "deal_currency": rec.deal.currency,
            }
            lead.change_stage("opportunity", at, actor, rec.reason or "converted",
                              rec.event_id, links)
            if rec.owner:
                lead.set_deal_owner(rec.owner, at)
        elif kind == "deal_won":
            links = {"deal_id": rec.deal.id} if rec.deal else None
            lead.change_stage("customer", at, actor, rec.reason or "deal won", rec.event_id,
                              links)
        elif kind == "owner_assigned":
            owner = cast(str, rec.owner)
            lead.assign_owner(owner, None, "manual", "manual", at, actor,
                              rec.reason or "manual assignment")
        elif kind == "contacted":
            lead.make_first_contact(rec.actor, at)
        self._sync_load(unit, lead, at)

    def _route(self, unit: _Unit, lead: Lead, at: datetime, actor: str, reason: str,
               exclude: Iterable[str] = ()) -> None:
        router = self._router(unit)
        decision = choose_owner(
            self.rules.routing, lead.profile, lead.score_at(at, self.rules.half_life_seconds),
            load=router.load, cursors=router.cursors, availability=router.availability,
            exclude=set(exclude),
        )
        if decision.team is not None and decision.cursor is not None:
            router.advance_cursor(decision.team, decision.cursor, at)
        lead.assign_owner(decision.owner, decision.team, decision.rule, decision.strategy, at,
                          actor, reason)
        self._sync_load(unit, lead, at)

    def _sync_load(self, unit: _Unit, lead: Lead, at: datetime) -> None:
        """Keep the router's per-rep load equal to the leads each rep is working."""
        desired = lead.owner if (lead.merged_into is None and lead.owner
                                 and lead.stage in WORKING_STAGES) else None
        if lead.load_rep == desired:
            return
        router = self._router(unit)
        if lead.load_rep is not None:
            router.release(lead.load_rep, lead.id, at)
        if desired is not None:
            router.take(desired, lead.id, at)
        lead.recount_load(desired, at)

    def _catch_up(self, unit: _Unit, lead: Lead, until: datetime) -> None:
        """Record, at their exact times, the time-driven transitions due by ``until``."""
        rules = self.rules
        for _ in range(_MAX_TRANSITIONS_PER_CATCH_UP):
            due = lead.next_due(rules)
            if due is None or due[0] > until:
                return
            at, kind = due
            if kind == "decay":
                lead.change_stage("recycled", at, "rule:recycle-on-decay", "score decayed")
                self._sync_load(unit, lead, at)
            elif kind == "sla":
                breached = cast(str, lead.owner)
                lead.note_sla_breach(breached, at)
                self._route(
                    unit, lead, at, "rule:first-contact-sla",
                    f"no first contact by {breached} within "
                    f"{rules.routing.first_contact_sla_hours:g}h",
                    exclude=lead.sla_breached_by,
                )
            else:
                lead.go_dormant(at, rules.lifecycle.dormant_after_days)

    def _settle(self, unit: _Unit, lead: Lead, at: datetime,
                clock_position: datetime | None = None) -> None:
        """Make sure the clock will wake this lead for its next due transition."""
        if clock_position is None:
            clock_position = self._clock(unit).position
        if clock_position is not None:
            # A late record can make a transition due before the clock's position: do it now.
            self._catch_up(unit, lead, clock_position)
        due = lead.next_due(self.rules)
        if due is None:
            return
        wake = due[0]
        if lead.wake_at is not None and lead.wake_at <= wake:
            return  # an earlier hint is pending; it will re-check and reschedule
        day = day_of(wake)
        bucket = unit.get(TimerBucket, TimerBucket.create_id(day))
        if bucket is None:
            bucket = unit.add(TimerBucket(day=day))
            self._clock(unit).open_day(day)
        bucket.set(lead.id, wake)
        lead.schedule_wake(wake)

    def _router(self, unit: _Unit) -> Router:
        router = unit.get(Router, Router.create_id())
        return router if router is not None else unit.add(Router())

    def _clock(self, unit: _Unit) -> Clock:
        clock = unit.get(Clock, Clock.create_id())
        return clock if clock is not None else unit.add(Clock())


class NotMergedError(LeadflowError):
    reason = "not_merged"


def _without_merge(events: list[Any], loser_id: UUID) -> list[Any]:
    """A survivor's own events, minus the merge with ``loser_id`` and what it set off.

    Dropped: the Absorbed event, and every automatic decision recorded after it (stage and
    owner changes by rules or the system, SLA breaches, load bookkeeping), because those were
    taken on the merged score. People's decisions (sales dispositions) and the survivor's own
    touchpoints stay; the engine re-derives the automatic ones from the restored state.
    """
    out: list[Any] = []
    merged = False
    for event in events:
        name = type(event).__name__
        if name == "Absorbed" and event.lead_id == loser_id:
            merged = True
            continue
        if merged and (
            name in ("AccountSet", "LoadRecounted", "FirstContactSlaBreached", "WakeScheduled")
            or (name in ("StageChanged", "OwnerAssigned")
                and str(event.__dict__.get("actor") or "").startswith(("rule:", "system:")))
        ):
            continue
        out.append(event)
    return out


_COMPANY_SUFFIXES = ("inc", "llc", "ltd", "gmbh", "ag", "corp", "co", "sa", "plc", "ooo", "oao")


def _normalise_company(name: str) -> str:
    words = "".join(ch.lower() if ch.isalnum() else " " for ch in name).split()
    while words and words[-1] in _COMPANY_SUFFIXES:
        words.pop()
    return " ".join(words)
